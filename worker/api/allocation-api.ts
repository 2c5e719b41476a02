/**
 * The allocation half of the engine API (contract.ts allocatePlan, paretoSweep): a plan for a
 * budget by one allocator, and a sweep of allocators × budgets beside uniform plans and
 * llama.cpp's presets, each evaluated.
 *
 * Requests are checked before any work (budget text, option specs, allocator/target
 * combinations, the text). The slow parts — LSAQ importance, per-tensor ΔKLD, a sweep's
 * perplexities — run on an allocation worker thread (allocation-thread.ts) as cancellable jobs;
 * the measurements are kept here per (model, allocator kind, options, targets, text, windows,
 * ctx, backend), and ΔKLD is disk-cached besides, so moving the budget slider re-runs only the
 * knapsack on this thread (milliseconds). An infeasible budget fails as 'PlanError' with the
 * allocator's smallest feasible size.
 */
import { stat } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { DEFAULT_CTX } from '../inference/perplexity'
import { allocate, allocationTargets, parseOptionSpecs, type AllocOption, type AllocatorId } from '../plan/allocate'
import { resolvePlanFor } from '../plan/apply'
import { BudgetError, parseBudget, type Budget } from '../plan/budget'
import { DEFAULT_CALIBRATION_TEXT } from '../plan/calibration'
import { LLAMA_CPP_PRESETS, planFromLlamaCppPreset } from '../plan/llama-cpp-presets'
import { memoryModel, type MemoryOptions } from '../plan/memory-model'
import { PlanError, type Plan } from '../plan/plan'
import { planSize } from '../plan/size'
import { plansOverBudgets, uniformBaselines, type AllocatorInputs } from './allocation-sweep'
import type { AllocationWorkerJob, AllocationWorkerResult } from './allocation-protocol'
import { runAllocationInWorker } from './allocation-thread'
import type { AllocatePlanResult, AllocationMemory, ApiParams, JobProgressDetail, ParetoPoint, ParetoSweepResult } from './contract'
import { EngineError } from './errors'
import type { JobRunner } from './evaluate-service'
import { planApiError } from './plan-variants'
import type { OpenedModelHandle } from './quant-api'

export interface AllocationApiOptions {
  /** The shipped held-out text (what a sweep evaluates on). */
  heldoutText: () => string
  /** The text measurements default to (never the held-out one). */
  calibrationText?: string
  threads?: number
  /** ΔKLD result cache; undefined: `<cache root>/sensitivity`, null: none. */
  cacheDir?: string | null
  /** Stand-in for the worker thread (tests). */
  run?: typeof runAllocationInWorker
}

const DEFAULT_WINDOWS = 4
/** Measurement sets kept in memory (each is a few thousand numbers). */
const MAX_CACHED_INPUTS = 16

type AllocationShared = Pick<ApiParams<'allocatePlan'>, 'options' | 'allTensors' | 'layout' | 'text' | 'windows' | 'ctx' | 'backend' | 'modelId' | 'jobId'>

interface Checked {
  options: AllocOption[]
  allTensors: boolean
  layout: 'native' | 'gguf'
  textFile: string
  textLabel: string
  windows: number
  ctx: number
}

export class AllocationApi {
  private readonly inputs = new Map<string, AllocatorInputs>()

  constructor(
    private readonly options: AllocationApiOptions,
    private readonly runJob: JobRunner,
  ) {}

  async allocatePlan(handle: OpenedModelHandle, params: ApiParams<'allocatePlan'>): Promise<AllocatePlanResult> {
    const what = `allocatePlan of ${handle.summary.name}`
    const budget = budgetOf(what, params.budget)
    const c = await this.check(what, handle, params, [params.allocator])
    const kv = params.kv ? { ctx: params.kv.ctx, batch: params.kv.batch ?? 1, bits: params.kv.bits ?? 16 } : null
    const memory: MemoryOptions = { format: c.layout, kv }
    return this.runJob(params.jobId, async ({ onProgress, signal }) => {
      const t0 = performance.now()
      const { inputs, fromCache, measured } = await this.measured(handle, params, c, [params.allocator], onProgress, signal)
      const result = withPlanErrors(() => allocate({ model: handle.model, allocator: params.allocator, budget, options: c.options, memory, allTensors: c.allTensors, ...inputs.get(kindOf(params.allocator)) }))
      const multi = c.options.filter((o) => o.kind === 'method').length > 0 && c.options.length > 1
      return {
        plan: result.plan,
        allocator: params.allocator,
        budget: budget.text,
        counts: result.counts,
        bitsPerWeight: result.bitsPerWeight,
        predictedKld: result.predictedKld,
        ...(result.highLayers ? { highLayers: result.highLayers } : {}),
        memory: allocationMemory(handle.model, result.plan, memory),
        measurement: { kind: params.allocator === 'lsaq' ? 'lsaq' : multi ? 'sensitivity' : 'none', fromCache, measured, seconds: (performance.now() - t0) / 1000 },
      }
    })
  }

  async paretoSweep(handle: OpenedModelHandle, params: ApiParams<'paretoSweep'>): Promise<ParetoSweepResult> {
    const what = `paretoSweep of ${handle.summary.name}`
    const budgets = params.budgets.map((b) => budgetOf(what, b))
    const c = await this.check(what, handle, params, params.allocators)
    const memory: MemoryOptions = { format: c.layout, kv: null }
    const model = handle.model
    const heldout = this.options.heldoutText()
    return this.runJob(params.jobId, async ({ onProgress, signal }) => {
      const t0 = performance.now()
      const { inputs } = await this.measured(handle, params, c, params.allocators, onProgress, signal)
      const candidates: Omit<ParetoPoint, 'ppl'>[] = []
      const skipped: ParetoSweepResult['skipped'] = []
      for (const allocator of params.allocators) {
        const r = withPlanErrors(() => plansOverBudgets(model, { allocator, budgets, options: c.options, memory, allTensors: c.allTensors, inputs: inputs.get(kindOf(allocator)) ?? {} }))
        for (const { budget, result } of r.plans) candidates.push({ label: `${allocator} ${budget.text}`, kind: allocator, budget: budget.text, bytes: result.bytes.total, bpw: result.bitsPerWeight, plan: result.plan })
        for (const s of r.skipped) skipped.push({ label: `${allocator} ${s.budget}`, reason: s.reason })
      }
      if (params.uniform ?? true) {
        for (const u of uniformBaselines(model, { options: c.options, memory, allTensors: c.allTensors })) candidates.push({ label: `uniform ${u.option}`, kind: 'uniform', bytes: u.bytes, bpw: u.bitsPerWeight, plan: u.plan })
      }
      const ggmlOnly = c.options.every((o) => o.kind === 'keep' || o.methodId === 'ggml')
      if ((params.presets ?? true) && ggmlOnly && candidates.length > 0) candidates.push(...presetsInRange(model, candidates, memory))
      const job = this.job(handle, params, c, [])
      job.evaluate = { textFile: heldout, windows: params.evalWindows, plans: candidates.map((p) => ({ label: p.label, plan: p.plan })) }
      const r = await this.worker(job, onProgress, signal)
      const points: ParetoPoint[] = candidates.map((p, i) => ({ ...p, ppl: r.evaluations[i]!.ppl }))
      points.sort((a, b) => a.bytes - b.bytes)
      return { points, skipped, layout: c.layout, textLabel: 'held-out text', ctx: c.ctx, windows: r.evaluations[0]?.windows ?? 0, seconds: (performance.now() - t0) / 1000 }
    })
  }

  /** Every check that needs no work: options, allocator/target combinations, the text. */
  private async check(what: string, handle: OpenedModelHandle, params: AllocationShared, allocators: readonly AllocatorId[]): Promise<Checked> {
    let options: AllocOption[]
    try {
      options = parseOptionSpecs(params.options)
    } catch (err) {
      if (err instanceof PlanError) throw new EngineError('BadRequest', `${what}: ${err.message}`)
      throw err
    }
    const allTensors = params.allTensors ?? false
    if (allTensors && allocators.includes('lsaq')) throw new EngineError('BadRequest', `${what}: LSAQ allocates per decoder block; allTensors (embeddings, lm_head) needs the greedy or optimal allocator`)
    if (allocators.includes('lsaq') && options.length !== 2) throw new EngineError('BadRequest', `${what}: LSAQ takes exactly two options (high and low), got ${options.length}`)
    withPlanErrors(() => allocationTargets(handle.model, allTensors))
    const textFile = params.text?.kind === 'file' ? resolve(params.text.path) : params.text?.kind === 'heldout' ? this.options.heldoutText() : (this.options.calibrationText ?? DEFAULT_CALIBRATION_TEXT)
    const info = await stat(textFile).catch(() => null)
    if (!info?.isFile()) throw new EngineError('NotFound', `${what}: the text file ${textFile} does not exist or is not a file`)
    const textLabel = params.text?.kind === 'file' ? basename(textFile) : params.text?.kind === 'heldout' ? 'held-out text' : 'calibration text'
    return { options, allTensors, layout: params.layout ?? 'native', textFile, textLabel, windows: params.windows ?? DEFAULT_WINDOWS, ctx: params.ctx ?? DEFAULT_CTX }
  }

  private cacheKey(handle: OpenedModelHandle, params: AllocationShared, c: Checked, kind: 'lsaq' | 'optimal'): string {
    // LSAQ importance does not depend on the options; ΔKLD is per option.
    const options = kind === 'lsaq' ? '' : c.options.map((o) => o.spec).join(';')
    return JSON.stringify({ model: handle.path, fingerprint: handle.summary.fingerprint, kind, options, allTensors: c.allTensors, text: c.textFile, windows: c.windows, ctx: c.ctx, backend: params.backend ?? 'wasm' })
  }

  private job(handle: OpenedModelHandle, params: AllocationShared, c: Checked, allocators: readonly AllocatorId[]): AllocationWorkerJob {
    return {
      modelPath: handle.path,
      ctx: c.ctx,
      backend: params.backend,
      threads: this.options.threads,
      measure: { allocators: [...allocators], options: params.options, allTensors: c.allTensors, textFile: c.textFile, windows: c.windows, ...(this.options.cacheDir !== undefined ? { cacheDir: this.options.cacheDir } : {}) },
    }
  }

  private worker(job: AllocationWorkerJob, onProgress: (done: number, total: number, detail?: JobProgressDetail) => void, signal: AbortSignal): Promise<AllocationWorkerResult> {
    const run = this.options.run ?? runAllocationInWorker
    return run(job, { signal, onProgress: (p) => onProgress(p.done, p.total, { stage: p.stage, ...(p.label ? { label: p.label } : {}) }) })
  }

  /** The allocators' inputs by kind ('lsaq' importance, 'optimal' ΔKLD for greedy and optimal): kept ones, the rest measured on the worker. */
  private async measured(
    handle: OpenedModelHandle,
    params: AllocationShared,
    c: Checked,
    allocators: readonly AllocatorId[],
    onProgress: (done: number, total: number, detail?: JobProgressDetail) => void,
    signal: AbortSignal,
  ): Promise<{ inputs: Map<'lsaq' | 'optimal', AllocatorInputs>; fromCache: boolean; measured: number }> {
    const inputs = new Map<'lsaq' | 'optimal', AllocatorInputs>()
    const missing: ('lsaq' | 'optimal')[] = []
    for (const kind of new Set(allocators.map(kindOf))) {
      const hit = this.inputs.get(this.cacheKey(handle, params, c, kind))
      if (hit) inputs.set(kind, hit)
      else missing.push(kind)
    }
    if (missing.length === 0) return { inputs, fromCache: true, measured: 0 }
    const r = await this.worker(this.job(handle, params, c, missing), onProgress, signal)
    for (const kind of missing) {
      const got: AllocatorInputs = kind === 'lsaq' ? (r.importance ? { importance: r.importance } : {}) : r.costs ? { costs: r.costs } : {}
      inputs.set(kind, got)
      const key = this.cacheKey(handle, params, c, kind)
      this.inputs.set(key, got)
      while (this.inputs.size > MAX_CACHED_INPUTS) this.inputs.delete(this.inputs.keys().next().value as string)
    }
    // LSAQ importance is always computed when missing; ΔKLD may all have come from the disk cache.
    return { inputs, fromCache: !missing.includes('lsaq') && r.measured === 0, measured: r.measured }
  }
}

function kindOf(a: AllocatorId): 'lsaq' | 'optimal' {
  return a === 'lsaq' ? 'lsaq' : 'optimal'
}

function budgetOf(what: string, text: string): Budget {
  try {
    return parseBudget(text)
  } catch (err) {
    if (err instanceof BudgetError) throw new EngineError('BadRequest', `${what}: ${err.message}`)
    throw err
  }
}

function withPlanErrors<T>(f: () => T): T {
  try {
    return f()
  } catch (err) {
    throw err instanceof PlanError ? planApiError(err) : err
  }
}

/**
 * The memory bar's parts for a plan in a layout. The split of planned bytes into codes and
 * scales (+ zeros, tables, outliers) is QuantMethod.storage's; in the gguf layout, where ggml
 * blocks interleave scales with codes, the native split is scaled to the GGUF bytes.
 */
export function allocationMemory(model: OpenedModel, plan: Plan, memory: MemoryOptions): AllocationMemory {
  const entries = resolvePlanFor(model, plan, 'allocation')
  const m = memoryModel(model, entries, memory)
  const s = planSize(model, entries).planned
  const nativeScales = s.storage.scales + s.storage.zeros + s.storage.tables + s.storage.outliers
  const exact = memory.format === 'native'
  const scales = exact ? nativeScales : s.bytes > 0 ? Math.round((m.planned * nativeScales) / s.bytes) : 0
  const kv = memory.kv ? { ctx: memory.kv.ctx, batch: memory.kv.batch ?? 1, bits: memory.kv.bits ?? 16 } : null
  return { layout: memory.format as 'native' | 'gguf', codes: m.planned - scales, scales, kept: m.weights - m.planned, kvCache: m.kvCache, weights: m.weights, total: m.total, splitExact: exact, kv }
}

/** llama.cpp's presets whose size lies within the sweep's range (±15 %), as candidate points. */
function presetsInRange(model: OpenedModel, points: readonly Omit<ParetoPoint, 'ppl'>[], memory: MemoryOptions): Omit<ParetoPoint, 'ppl'>[] {
  const lo = Math.min(...points.map((p) => p.bytes)) * 0.85
  const hi = Math.max(...points.map((p) => p.bytes)) * 1.15
  const out: Omit<ParetoPoint, 'ppl'>[] = []
  for (const preset of LLAMA_CPP_PRESETS) {
    let plan: Plan
    try {
      plan = planFromLlamaCppPreset(model, preset)
    } catch (err) {
      if (err instanceof PlanError) continue
      throw err
    }
    const entries = resolvePlanFor(model, plan, `llama.cpp ${preset}`)
    if (entries.length === 0) continue
    const m = memoryModel(model, entries, memory)
    if (m.weights < lo || m.weights > hi) continue
    const params = entries.reduce((a, e) => a + e.rows * e.cols, 0)
    out.push({ label: `llama.cpp ${preset}`, kind: 'preset', bytes: m.weights, bpw: (8 * m.planned) / params, plan })
  }
  return out
}
