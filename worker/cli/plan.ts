/**
 * `plan MODEL --budget SIZE --allocator lsaq|greedy|optimal [--options "SPEC;SPEC;…"]
 *  [--all-tensors] [--text FILE] [--max-windows N] [--ctx N] [--format native|gguf]
 *  [--kv-ctx N [--kv-batch N] [--kv-bits N]] [--importance-file FILE] [--cost kld|local] --out plan.json [--json]`
 *
 * Allocates a plan under a budget (worker/plan/allocate.ts) and writes it where `eval --plan`
 * and `export --plan` read it. LSAQ ranks blocks by their logit-lens importance (computed on
 * the text, or read from an `importance --json` file); greedy and optimal minimise the summed
 * per-tensor ΔKLD, measured on the text's first windows and cached (plan/sensitivity.ts), or
 * with `--cost local` the relative local error of each tensor's output on the calibration text
 * (importance/local-proxy.ts: one capture pass, no evaluation per tensor and option — the cost
 * for models too large to measure; --text then names the calibration text).
 */
import { rename, writeFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import { openModel } from '../formats/open-model'
import type { OpenedModel } from '../formats/contract'
import { DEFAULT_CTX } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { readRegularTextFile } from '../io/regular-file'
import { computeLayerImportance, DEFAULT_LSAQ_K } from '../importance/layer-importance'
import { localCosts, localProxyTable } from '../importance/local-proxy'
import { allocate, allocationTargets, ALLOCATORS, parseOptionSpecs, type AllocationResult, type AllocatorId } from '../plan/allocate'
import { parseBudget, BudgetError } from '../plan/budget'
import { DEFAULT_CALIBRATION_TEXT } from '../plan/calibration'
import type { MemoryOptions } from '../plan/memory-model'
import { measureSensitivity } from '../plan/sensitivity'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { progressLine } from './format'
import { runPresetPlan } from './plan-preset'

/** The issue's example set: 4- and 3-bit RTN in groups of 128. */
export const DEFAULT_PLAN_OPTIONS = 'rtn:bits=4,group=128;rtn:bits=3,group=128'
const DEFAULT_SENSITIVITY_WINDOWS = 4

export interface PlanCommandReport extends Omit<AllocationResult, 'plan' | 'budget'> {
  out: string
  budget: string
  format: MemoryOptions['format']
  description: string
  /** LSAQ's per-layer importance, as used. */
  importance?: number[]
  /** greedy/optimal: ΔKLD measurements (total, of them from the cache) and their seconds. */
  sensitivity?: { measured: number; cached: number; seconds: number; windows: number; ctx: number }
  /** greedy/optimal: what the allocator minimised (ΔKLD measured, or the local error proxy). */
  cost?: CostKind
  /** --cost local: figures (of them from the cache), calibration tokens and seconds. */
  local?: { figures: number; cached: number; tokens: number; seconds: number }
}

export type CostKind = 'kld' | 'local'

function costFlag(args: ParsedArgs, allocator: AllocatorId): CostKind {
  const c = args.flags.get('cost') ?? 'kld'
  if (c !== 'kld' && c !== 'local') throw new UsageError(`--cost must be kld (measured ΔKLD per tensor) or local (the local error proxy), got '${String(c)}'`)
  if (c === 'local' && allocator === 'lsaq') throw new UsageError('--cost goes with --allocator greedy or optimal (LSAQ ranks blocks by importance)')
  return c
}

function allocatorFlag(args: ParsedArgs): AllocatorId {
  const a = args.flags.get('allocator')
  if (typeof a !== 'string') throw new UsageError(`plan needs --allocator ${ALLOCATORS.join('|')}`)
  if (!(ALLOCATORS as readonly string[]).includes(a)) throw new UsageError(`--allocator must be one of ${ALLOCATORS.join(', ')}, got '${a}'`)
  return a as AllocatorId
}

function memoryFlags(args: ParsedArgs): MemoryOptions {
  const format = args.flags.get('format') ?? 'native'
  if (format !== 'native' && format !== 'gguf') throw new UsageError(`plan --format sizes tensors as native (the app's storage) or gguf (the GGUF export's data); got '${String(format)}'`)
  if (!args.flags.has('kv-ctx') && (args.flags.has('kv-batch') || args.flags.has('kv-bits'))) throw new UsageError('--kv-batch and --kv-bits go with --kv-ctx')
  const kv = args.flags.has('kv-ctx') ? { ctx: intFlag(args, 'kv-ctx', 0, 0), batch: intFlag(args, 'kv-batch', 1, 1), bits: intFlag(args, 'kv-bits', 16, 1) } : null
  return { format, kv }
}

/** `importance --json` output: { layers: [{ layer, importance }] }, or a plain array. */
async function readImportanceFile(path: string, layers: number): Promise<number[]> {
  let json: unknown
  try {
    json = JSON.parse(await readRegularTextFile(path, 16 << 20))
  } catch (err) {
    throw new Error(`--importance-file ${path}: ${(err as Error).message}`)
  }
  const list = Array.isArray(json) ? json.map((v, layer) => ({ layer, importance: v })) : (json as { layers?: unknown }).layers
  if (!Array.isArray(list)) throw new Error(`--importance-file ${path}: expected { "layers": [ { "layer", "importance" } ] } or an array of numbers`)
  const out = new Array<number>(layers).fill(NaN)
  for (const e of list as { layer?: unknown; importance?: unknown }[]) {
    if (!Number.isInteger(e.layer) || typeof e.importance !== 'number' || !Number.isFinite(e.importance) || (e.layer as number) < 0 || (e.layer as number) >= layers) {
      throw new Error(`--importance-file ${path}: bad entry ${JSON.stringify(e)} (the model has ${layers} layers)`)
    }
    out[e.layer as number] = e.importance
  }
  const missing = out.findIndex((v) => Number.isNaN(v))
  if (missing >= 0) throw new Error(`--importance-file ${path}: no importance for layer ${missing}`)
  return out
}

export async function runPlan(args: ParsedArgs): Promise<number> {
  // `plan MODEL --preset NAME --out plan.json`: llama.cpp's mix as a plan file, no allocation.
  if (args.flags.has('preset')) return runPresetPlan(args)
  const modelPath = args.positionals[0]
  if (!modelPath || args.positionals.length > 1) throw new UsageError('plan takes exactly one MODEL')
  const budgetText = args.flags.get('budget')
  if (typeof budgetText !== 'string') throw new UsageError('plan needs --budget SIZE (bytes, e.g. 12MB, or bits per weight, e.g. 3.5bpw)')
  let budget
  try {
    budget = parseBudget(budgetText)
  } catch (err) {
    if (err instanceof BudgetError) throw new UsageError(err.message)
    throw err
  }
  const allocator = allocatorFlag(args)
  const out = args.flags.get('out')
  if (typeof out !== 'string') throw new UsageError('plan needs --out plan.json')
  const optionsText = args.flags.get('options') ?? DEFAULT_PLAN_OPTIONS
  if (typeof optionsText !== 'string') throw new UsageError('--options needs "SPEC;SPEC;…"')
  const options = parseOptionSpecs(optionsText)
  const memory = memoryFlags(args)
  const allTensors = args.flags.has('all-tensors')
  const ctx = intFlag(args, 'ctx', DEFAULT_CTX, 2)
  const maxWindows = intFlag(args, 'max-windows', DEFAULT_SENSITIVITY_WINDOWS, 1)
  const text = resolve(String(args.flags.get('text') ?? DEFAULT_CALIBRATION_TEXT))
  const importanceFile = args.flags.get('importance-file')
  if (importanceFile !== undefined && allocator !== 'lsaq') throw new UsageError('--importance-file goes with --allocator lsaq')
  const costKind = costFlag(args, allocator)

  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const model = await openModel(modelPath)
  try {
    const layers = model.config?.numLayers
    let importance: number[] | undefined
    let costs: Map<string, Map<string, number>> | undefined
    let sensitivity: PlanCommandReport['sensitivity']
    let local: PlanCommandReport['local']
    const ids = async (): Promise<number[]> => tokensOf({ file: text }, () => openTokenizer(model))
    if (allocator === 'lsaq') {
      if (layers === undefined) throw new UsageError(`${modelPath}: LSAQ needs the model config's layer count`)
      if (typeof importanceFile === 'string') importance = await readImportanceFile(resolve(importanceFile), layers)
      else {
        process.stderr.write(`LSAQ importance (k ${DEFAULT_LSAQ_K}) on ${text}, ${maxWindows} window(s)\n`)
        const r = await computeLayerImportance(model, await ids(), { lsaq: { k: DEFAULT_LSAQ_K }, ctx, maxWindows }, { signal: controller.signal })
        importance = r.lsaq!
      }
    } else if (costKind === 'local' && options.filter((o) => o.kind === 'method').length > 0 && options.length > 1) {
      const table = await localProxyTable(
        model,
        allocationTargets(model, allTensors),
        options,
        { calibration: { text: { file: text } } },
        { signal: controller.signal, onProgress: (p) => progressLine(p.stage === 'measuring' ? 'local error per tensor and option' : p.stage, p.done, p.total) },
      )
      costs = localCosts(table)
      local = { figures: table.cached + table.computed, cached: table.cached, tokens: table.tokens, seconds: table.seconds }
    } else if (options.filter((o) => o.kind === 'method').length > 0 && options.length > 1) {
      const t0 = performance.now()
      let cached = 0
      let measured = 0
      costs = await measureSensitivity(
        { model, tensors: allocationTargets(model, allTensors), options, ids: await ids(), ctx, maxWindows },
        {
          signal: controller.signal,
          onProgress: (p) => {
            measured = p.done
            if (p.cached) cached++
            progressLine('ΔKLD per tensor and option', p.done, p.total)
          },
        },
      )
      sensitivity = { measured, cached, seconds: (performance.now() - t0) / 1000, windows: maxWindows, ctx }
    }
    const result = allocate({ model, allocator, budget, options, memory, allTensors, importance, costs })
    const path = resolve(out)
    await writePlanFile(path, result)
    const report: PlanCommandReport = {
      out: path,
      allocator,
      budget: budget.text,
      format: memory.format,
      description: result.plan.description ?? '',
      capacity: result.capacity,
      bytes: result.bytes,
      bitsPerWeight: result.bitsPerWeight,
      predictedKld: result.predictedKld,
      counts: result.counts,
      ...(result.exact !== undefined ? { exact: result.exact } : {}),
      ...(result.highLayers ? { highLayers: result.highLayers } : {}),
      ...(importance ? { importance } : {}),
      ...(sensitivity ? { sensitivity } : {}),
      ...(allocator !== 'lsaq' ? { cost: costKind } : {}),
      ...(local ? { local } : {}),
    }
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderReport(report, model))
    return 0
  } finally {
    await model.close()
  }
}

async function writePlanFile(path: string, result: AllocationResult): Promise<void> {
  const tmp = `${path}.partial-${process.pid}`
  await writeFile(tmp, JSON.stringify(result.plan, null, 2) + '\n', { flag: 'wx' })
  await rename(tmp, path)
}

function renderReport(r: PlanCommandReport, model: OpenedModel): string {
  const lines = [
    `plan          ${r.out}`,
    `allocator     ${r.allocator}${r.exact === false ? ' (byte grid rounded: near-optimal)' : ''}`,
    `budget        ${r.budget} (${r.format} sizes)`,
    `size          ${r.bytes.total} bytes: ${r.bytes.planned} planned, ${r.bytes.kept} kept${r.bytes.kvCache ? `, ${r.bytes.kvCache} KV cache` : ''}`,
    `bits/weight   ${r.bitsPerWeight.toFixed(4)} over the planned tensors`,
    ...Object.entries(r.counts).map(([spec, n]) => `  ${String(n).padStart(4)} × ${spec}`),
  ]
  if (r.highLayers) lines.push(`high blocks   ${r.highLayers.join(', ') || 'none'} of ${model.config?.numLayers ?? '?'}`)
  if (r.predictedKld !== null) lines.push(r.cost === 'local' ? `Σ local error ${r.predictedKld.toFixed(6)} (relative, summed over tensors)` : `ΣΔKLD proxy   ${r.predictedKld.toFixed(6)}`)
  return lines.join('\n') + '\n'
}
