/**
 * `sweep MODEL --allocator lsaq|greedy|optimal --budgets 2.5bpw,3bpw,… [--options "SPEC;…"] [--all-tensors]
 *  [--format native|gguf] [--text FILE] [--calib-windows 4] [--eval-text FILE] [--max-windows N] [--ctx N]
 *  [--backend wasm|native] [--threads N] [--kld] [--json]`
 *
 * The trade-off curve of one allocator: a plan per budget (plan/allocate.ts, the same as `plan`),
 * each evaluated on the held-out text (perplexity, and KLD against the model as stored with
 * --kld), beside the uniform plans of each option (every target tensor at that option) as the
 * baseline. ΔKLD and LSAQ importance are measured once on --text (the calibration text by
 * default, never the evaluated one) and ΔKLD comes from the same cache `plan` fills.
 *
 * --json: { allocator, format, points: [{ budget, bytes, bitsPerWeight, ppl, kld? }], uniform:
 * [{ option, bytes, bitsPerWeight, ppl, kld? }], skipped: [{ budget, reason }], … }. Points are
 * sorted by bytes; a budget no plan meets is listed under skipped with the allocator's reason.
 */
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { measureAllocatorInputs, plansOverBudgets, uniformBaselines } from '../api/allocation-sweep'
import { openModel } from '../formats/open-model'
import { DEFAULT_LSAQ_K } from '../importance/layer-importance'
import { DEFAULT_CTX, evaluatePerplexity } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { ALLOCATORS, parseOptionSpecs, type AllocOption, type AllocatorId } from '../plan/allocate'
import { createOverrides } from '../plan/apply'
import { parseBudget, BudgetError, type Budget } from '../plan/budget'
import { DEFAULT_CALIBRATION_TEXT } from '../plan/calibration'
import type { MemoryOptions } from '../plan/memory-model'
import { PlanError, type Plan } from '../plan/plan'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { backendFlag } from './eval'
import { progressLine } from './format'
import { DEFAULT_PLAN_OPTIONS } from './plan'

export const DEFAULT_EVAL_TEXT = fileURLToPath(new URL('../../resources/eval/heldout.txt', import.meta.url))
const DEFAULT_CALIB_WINDOWS = 4

export interface SweepPoint {
  budget: string
  bytes: number
  bitsPerWeight: number
  ppl: number
  kld?: number
  /** Tensors per option spec. */
  counts: Record<string, number>
  predictedKld: number | null
}

export interface UniformPoint {
  option: string
  bytes: number
  bitsPerWeight: number
  ppl: number
  kld?: number
  /** Target tensors the option does not fit, kept as stored. */
  kept: number
}

export interface SweepReport {
  allocator: AllocatorId
  format: MemoryOptions['format']
  points: SweepPoint[]
  uniform: UniformPoint[]
  skipped: { budget: string; reason: string }[]
  /** With --kld: the model as stored, on the same windows. */
  basePpl?: number
  evalText: string
  windows: number
  ctx: number
  seconds: number
}

function budgetsFlag(args: ParsedArgs): Budget[] {
  const raw = args.flags.get('budgets')
  if (typeof raw !== 'string') throw new UsageError('sweep needs --budgets SIZE,SIZE,… (e.g. 2.5bpw,3bpw,3.5bpw,4bpw or 5MB,6MB)')
  const parts = raw.split(',').map((s) => s.trim()).filter((s) => s !== '')
  if (parts.length === 0) throw new UsageError('--budgets lists no budget')
  try {
    return parts.map((p) => parseBudget(p))
  } catch (err) {
    if (err instanceof BudgetError) throw new UsageError(err.message)
    throw err
  }
}

export async function runSweep(args: ParsedArgs): Promise<number> {
  const modelPath = args.positionals[0]
  if (!modelPath || args.positionals.length > 1) throw new UsageError('sweep takes exactly one MODEL')
  const allocatorText = args.flags.get('allocator')
  if (typeof allocatorText !== 'string' || !(ALLOCATORS as readonly string[]).includes(allocatorText)) throw new UsageError(`sweep needs --allocator ${ALLOCATORS.join('|')}`)
  const allocator = allocatorText as AllocatorId
  const budgets = budgetsFlag(args)
  const optionsText = args.flags.get('options') ?? DEFAULT_PLAN_OPTIONS
  if (typeof optionsText !== 'string') throw new UsageError('--options needs "SPEC;SPEC;…"')
  let options: AllocOption[]
  try {
    options = parseOptionSpecs(optionsText)
  } catch (err) {
    if (err instanceof PlanError) throw new UsageError(err.message)
    throw err
  }
  const format = args.flags.get('format') ?? 'native'
  if (format !== 'native' && format !== 'gguf') throw new UsageError(`sweep --format sizes tensors as native or gguf; got '${String(format)}'`)
  const memory: MemoryOptions = { format, kv: null }
  const allTensors = args.flags.has('all-tensors')
  if (allocator === 'lsaq' && allTensors) throw new UsageError('--all-tensors needs the greedy or optimal allocator (LSAQ allocates per decoder block)')
  const ctx = intFlag(args, 'ctx', DEFAULT_CTX, 2)
  const calibWindows = intFlag(args, 'calib-windows', DEFAULT_CALIB_WINDOWS, 1)
  const maxWindows = args.flags.has('max-windows') ? intFlag(args, 'max-windows', 1, 1) : undefined
  const backend = backendFlag(args)
  const threads = args.flags.has('threads') ? intFlag(args, 'threads', 1, 1) : undefined
  const calibText = resolve(String(args.flags.get('text') ?? DEFAULT_CALIBRATION_TEXT))
  const evalText = resolve(String(args.flags.get('eval-text') ?? DEFAULT_EVAL_TEXT))
  if (calibText === evalText) process.stderr.write(`warning: --text and --eval-text are the same file (${evalText}): the allocation is measured on the text it is evaluated on\n`)
  const kldOn = args.flags.has('kld')

  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const signal = controller.signal
  const t0 = performance.now()
  const model = await openModel(modelPath)
  try {
    const tokenizer = () => openTokenizer(model)
    const calibIds = await tokensOf({ file: calibText }, tokenizer)
    const evalIds = await tokensOf({ file: evalText }, tokenizer)
    if (allocator === 'lsaq') process.stderr.write(`LSAQ importance (k ${DEFAULT_LSAQ_K}) on ${calibText}, ${calibWindows} window(s)\n`)
    const inputs = await measureAllocatorInputs(
      { model, allocator, options, allTensors, ids: calibIds, ctx, windows: calibWindows, backend, threads },
      { signal, onSensitivity: (p) => progressLine('ΔKLD per tensor and option', p.done, p.total) },
    )
    // The first KLD evaluation writes the base log-probs to their cache (16-bit) and later ones
    // read them back: evaluate the model as stored first, so every point sees the same base.
    let basePpl: number | undefined
    if (kldOn) basePpl = (await evaluatePerplexity(model, evalIds, { ctx, maxWindows, backend, threads, kld: {} }, { signal, onProgress: (p) => (p.stage === 'evaluating' ? progressLine('base model: windows', p.done, p.total) : undefined) })).ppl
    const evaluate = async (plan: Plan, label: string): Promise<{ ppl: number; kld?: number; windows: number }> => {
      const overrides = await createOverrides(model, { plan, source: label })
      const r = await evaluatePerplexity(
        model,
        evalIds,
        { ctx, maxWindows, backend, threads, overrides, kld: kldOn ? {} : null },
        { signal, onProgress: (p) => (p.stage === 'evaluating' ? progressLine(`${label}: windows`, p.done, p.total) : undefined) },
      )
      return { ppl: r.ppl, ...(r.kld ? { kld: r.kld.mean } : {}), windows: r.windows }
    }
    const points: SweepPoint[] = []
    let windows = 0
    const { plans, skipped } = plansOverBudgets(model, { allocator, budgets, options, memory, allTensors, inputs })
    for (const { budget, result } of plans) {
      const e = await evaluate(result.plan, `${allocator} ${budget.text}`)
      windows = e.windows
      points.push({ budget: budget.text, bytes: result.bytes.total, bitsPerWeight: result.bitsPerWeight, ppl: e.ppl, ...(e.kld !== undefined ? { kld: e.kld } : {}), counts: result.counts, predictedKld: result.predictedKld })
    }
    points.sort((a, b) => a.bytes - b.bytes)
    const uniform: UniformPoint[] = []
    for (const u of uniformBaselines(model, { options, memory, allTensors })) {
      const e = await evaluate(u.plan, `uniform ${u.option}`)
      windows = e.windows
      uniform.push({ option: u.option, bytes: u.bytes, bitsPerWeight: u.bitsPerWeight, ppl: e.ppl, ...(e.kld !== undefined ? { kld: e.kld } : {}), kept: u.kept })
    }
    uniform.sort((a, b) => a.bytes - b.bytes)
    const report: SweepReport = { allocator, format, points, uniform, skipped, ...(basePpl !== undefined ? { basePpl } : {}), evalText, windows, ctx, seconds: (performance.now() - t0) / 1000 }
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderSweep(report))
    return 0
  } finally {
    await model.close()
  }
}

function renderSweep(r: SweepReport): string {
  const kld = r.points.some((p) => p.kld !== undefined) || r.uniform.some((u) => u.kld !== undefined)
  const row = (name: string, bytes: number, bpw: number, ppl: number, k?: number) =>
    `${name.padEnd(40)} ${String(bytes).padStart(12)} ${bpw.toFixed(3).padStart(7)} ${ppl.toFixed(4).padStart(10)}${kld ? ` ${k === undefined ? '–' : k.toFixed(5)}`.padStart(10) : ''}`
  const lines = [
    `${r.allocator} sweep, ${r.format} sizes; ppl on ${r.evalText}, ${r.windows} window(s) × ${r.ctx}${r.basePpl !== undefined ? ` (model as stored: ${r.basePpl.toFixed(4)})` : ''}`,
    `${'plan'.padEnd(40)} ${'bytes'.padStart(12)} ${'bpw'.padStart(7)} ${'ppl'.padStart(10)}${kld ? 'KLD'.padStart(10) : ''}`,
    ...r.points.map((p) => row(`${r.allocator} ${p.budget}`, p.bytes, p.bitsPerWeight, p.ppl, p.kld)),
    ...r.uniform.map((u) => row(`uniform ${u.option}${u.kept ? ` (${u.kept} kept)` : ''}`, u.bytes, u.bitsPerWeight, u.ppl, u.kld)),
    ...r.skipped.map((s) => `skipped ${s.budget}: ${s.reason}`),
  ]
  return lines.join('\n') + '\n'
}
