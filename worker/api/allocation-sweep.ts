/**
 * The parts of an allocation sweep the CLI (`sweep`, cli/sweep.ts) and the API (`paretoSweep`,
 * allocation-api.ts) share: what an allocator needs measured (LSAQ importance or per-tensor
 * ΔKLD), the plans of an allocator over a list of budgets (an infeasible budget is a skipped
 * point, not a failure), and the uniform plans of the options — the baseline every curve is
 * drawn against. Evaluating the plans is the caller's: the CLI on its own thread, the API on a
 * worker thread. Here in api/ rather than plan/ because LSAQ importance lives in a higher layer.
 */
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { computeLayerImportance, DEFAULT_LSAQ_K } from '../importance/layer-importance'
import type { BackendKind } from '../inference/ort-backend'
import { allocate, allocationTargets, optionEntry, type AllocationResult, type AllocOption, type AllocatorId } from '../plan/allocate'
import { resolvePlanFor } from '../plan/apply'
import type { Budget } from '../plan/budget'
import { memoryModel, plannedTensorBytes, type MemoryOptions } from '../plan/memory-model'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, PlanError, type Plan, type PlanEntry } from '../plan/plan'
import { measureSensitivity, type SensitivityProgress, type SensitivityTable } from '../plan/sensitivity'
import { QuantParamError } from '../quant/contract'

/** What an allocator decides by: LSAQ's per-layer importance, or ΔKLD per tensor and option. */
export interface AllocatorInputs {
  importance?: number[]
  costs?: SensitivityTable
}

export interface MeasureRequest {
  model: OpenedModel
  allocator: AllocatorId
  options: readonly AllocOption[]
  allTensors: boolean
  /** Token ids of the measurement text (never the evaluated one). */
  ids: readonly number[]
  ctx: number
  windows: number
  backend?: BackendKind
  threads?: number
  /** ΔKLD result cache; undefined: its default folder, null: none. */
  cacheDir?: string | null
}

export interface MeasureHooks {
  signal?: AbortSignal
  onImportance?(p: { stage: string; done: number; total: number }): void
  onSensitivity?(p: SensitivityProgress): void
}

/** Measures what the allocator needs; a single option (or keep only) needs nothing. */
export async function measureAllocatorInputs(req: MeasureRequest, hooks: MeasureHooks = {}): Promise<AllocatorInputs> {
  const { model, allocator, options, ids, ctx, windows, backend, threads } = req
  if (allocator === 'lsaq') {
    const r = await computeLayerImportance(model, ids, { lsaq: { k: DEFAULT_LSAQ_K }, ctx, maxWindows: windows, backend, threads }, { signal: hooks.signal, onProgress: hooks.onImportance })
    return { importance: r.lsaq! }
  }
  if (options.filter((o) => o.kind === 'method').length > 0 && options.length > 1) {
    const costs = await measureSensitivity(
      { model, tensors: allocationTargets(model, req.allTensors), options, ids, ctx, maxWindows: windows, backend, threads, ...(req.cacheDir !== undefined ? { cacheDir: req.cacheDir } : {}) },
      { signal: hooks.signal, onProgress: hooks.onSensitivity },
    )
    return { costs }
  }
  return {}
}

/** Every target tensor at one option (tensors it does not fit stay as stored). */
export function uniformPlan(model: OpenedModel, targets: readonly TensorEntry[], option: AllocOption & { kind: 'method' }, memory: MemoryOptions): { plan: Plan; kept: number } {
  const tensors: Record<string, PlanEntry> = {}
  let kept = 0
  for (const t of targets) {
    let fits = true
    try {
      plannedTensorBytes(model, optionEntry(model, t, option), memory)
    } catch (err) {
      if (!(err instanceof QuantParamError || err instanceof PlanError)) throw err
      fits = false
    }
    if (fits) tensors[t.name] = { method: option.methodId, params: option.params as Record<string, number | boolean | string> }
    else kept++
  }
  const plan: Plan = { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, description: `uniform ${option.spec}`, tensors }
  return { plan, kept }
}

export interface BudgetPlan {
  budget: Budget
  result: AllocationResult
}

/** The allocator's plan for each budget; budgets no plan meets are listed with the allocator's reason. */
export function plansOverBudgets(
  model: OpenedModel,
  req: { allocator: AllocatorId; budgets: readonly Budget[]; options: readonly AllocOption[]; memory: MemoryOptions; allTensors: boolean; inputs: AllocatorInputs },
): { plans: BudgetPlan[]; skipped: { budget: string; reason: string }[] } {
  const plans: BudgetPlan[] = []
  const skipped: { budget: string; reason: string }[] = []
  for (const budget of req.budgets) {
    try {
      plans.push({ budget, result: allocate({ model, allocator: req.allocator, budget, options: req.options, memory: req.memory, allTensors: req.allTensors, ...req.inputs }) })
    } catch (err) {
      // An infeasible budget is a result of the sweep (the curve starts later), not a failure.
      if (err instanceof PlanError && err.tensor === null && /infeasible/.test(err.message)) {
        skipped.push({ budget: budget.text, reason: err.message })
        continue
      }
      throw err
    }
  }
  return { plans, skipped }
}

export interface UniformBaseline {
  option: string
  plan: Plan
  /** memoryModel total in the layout. */
  bytes: number
  /** Over the allocation's target tensors. */
  bitsPerWeight: number
  /** Target tensors the option does not fit, kept as stored. */
  kept: number
}

/** The uniform plan of every method option, sized like the allocations (same targets, same layout). */
export function uniformBaselines(model: OpenedModel, req: { options: readonly AllocOption[]; memory: MemoryOptions; allTensors: boolean }): UniformBaseline[] {
  const targets = allocationTargets(model, req.allTensors)
  const params = targets.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0)
  const targetNames = new Set(targets.map((t) => t.name))
  const out: UniformBaseline[] = []
  for (const option of req.options) {
    if (option.kind !== 'method') continue
    const { plan, kept } = uniformPlan(model, targets, option, req.memory)
    const m = memoryModel(model, resolvePlanFor(model, plan, `uniform ${option.spec}`), req.memory)
    const planned = m.tensors.filter((t) => targetNames.has(t.name)).reduce((a, t) => a + t.bytes, 0)
    out.push({ option: option.spec, plan, bytes: m.total, bitsPerWeight: (8 * planned) / params, kept })
  }
  return out
}
