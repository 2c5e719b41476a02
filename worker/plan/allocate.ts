/**
 * Allocation on a model: a budget and an option set (method specs, `keep` for the stored
 * tensor) become a plan (plan-schema.ts) that `eval --plan` and `export --plan` take.
 *
 * Sizes come from the memory model (memory-model.ts) in the chosen layout: `native` (the app's
 * storage, default) or `gguf` (the GGUF data section). Both are additive per tensor, which the
 * knapsack needs; the HF folders' JSON headers are not, so they are not offered here. A byte
 * budget bounds the whole modelled size — planned tensors, every kept tensor (embeddings,
 * lm_head, norms) and the KV-cache reserve; a bits-per-weight budget bounds the planned tensors
 * alone (budget.ts). The result is re-measured by memoryModel on the resolved plan before it is
 * returned, so a plan that does not fit its budget is never handed out.
 */
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { classifyTensor } from '../model/logical-model'
import { QuantParamError } from '../quant/contract'
import { formatQuantSpec, parseQuantSpec } from '../quant/spec'
import { orientedShape, resolvePlanFor } from './apply'
import { InfeasibleError, solveGreedy, solveLsaq, solveOptimal, type AllocItem, type AllocSolution } from './allocators'
import { type Budget } from './budget'
import { memoryModel, plannedTensorBytes, keptTensorBytes, type MemoryOptions } from './memory-model'
import { decoderLinearWeights, modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, PlanError, type Plan, type PlanEntry, type ResolvedEntry } from './plan'

export type AllocatorId = 'lsaq' | 'greedy' | 'optimal'
export const ALLOCATORS: readonly AllocatorId[] = Object.freeze(['lsaq', 'greedy', 'optimal'])

/** One option of the set: a method with parsed params, or keeping the tensor as stored. */
export type AllocOption = { kind: 'keep'; spec: 'keep' } | { kind: 'method'; spec: string; methodId: string; params: Record<string, unknown> }

/** `rtn:bits=4,group=128;rtn:bits=3,group=128` or `ggml:type=Q6_K;ggml:type=Q4_K;keep`; errors name the spec. */
export function parseOptionSpecs(text: string): AllocOption[] {
  const parts = text.split(';').map((s) => s.trim()).filter((s) => s !== '')
  if (parts.length === 0) throw new PlanError('options', null, 'no option given (write specs separated by ";", e.g. "rtn:bits=4,group=128;rtn:bits=3,group=128")')
  const out: AllocOption[] = []
  for (const p of parts) {
    if (p === 'keep') {
      out.push({ kind: 'keep', spec: 'keep' })
      continue
    }
    try {
      const { method, params } = parseQuantSpec(p)
      out.push({ kind: 'method', spec: formatQuantSpec(method.id, params), methodId: method.id, params })
    } catch (err) {
      if (err instanceof QuantParamError) throw new PlanError('options', null, err.message)
      throw err
    }
  }
  const seen = new Set<string>()
  for (const o of out) {
    if (seen.has(o.spec)) throw new PlanError('options', null, `option '${o.spec}' given twice`)
    seen.add(o.spec)
  }
  if (out.length > 255) throw new PlanError('options', null, `at most 255 options, got ${out.length}`)
  return out
}

/** The tensors an allocation plans: the decoder linears, and with allTensors also embeddings and lm_head. */
export function allocationTargets(model: OpenedModel, allTensors: boolean): TensorEntry[] {
  const targets = decoderLinearWeights(model)
  if (allTensors) {
    for (const t of model.tensors) {
      if (t.derivedFrom || t.shape.length !== 2 || !t.decodable) continue
      const role = classifyTensor(t.alias ?? t.name).role
      if (role === 'embed' || role === 'lm_head') targets.push(t)
    }
  }
  if (targets.length === 0) throw new PlanError(model.files[0] ?? 'model', null, 'no tensor to allocate (no decoder linear weights found)')
  const order = new Map(model.tensors.map((t, i) => [t.name, i]))
  return targets.sort((a, b) => order.get(a.name)! - order.get(b.name)!)
}

/** The entry a plan giving `tensor` this option resolves to (shape checks happen in the method's storage()). */
export function optionEntry(model: OpenedModel, tensor: TensorEntry, option: AllocOption & { kind: 'method' }): ResolvedEntry {
  const [rows, cols] = orientedShape(model, tensor)
  return { tensor, methodId: option.methodId, params: option.params, rows, cols }
}

/** Bytes of a tensor at an option in the layout; null where the option does not apply. */
function optionBytes(model: OpenedModel, tensor: TensorEntry, option: AllocOption, memory: MemoryOptions): number | null {
  if (option.kind === 'keep') return keptTensorBytes(model, tensor, memory)
  try {
    return plannedTensorBytes(model, optionEntry(model, tensor, option), memory)
  } catch (err) {
    if (err instanceof QuantParamError || err instanceof PlanError) return null
    throw err
  }
}

export interface AllocationRequest {
  model: OpenedModel
  allocator: AllocatorId
  budget: Budget
  options: readonly AllocOption[]
  memory: MemoryOptions
  allTensors?: boolean
  /** lsaq: importance per decoder layer (index = layer). */
  importance?: readonly number[]
  /** greedy/optimal: ΔKLD per tensor name and option spec ('keep' may be left out: 0). */
  costs?: ReadonlyMap<string, ReadonlyMap<string, number>>
  /** optimal: DP cells (default 200,000). */
  maxCells?: number
}

export interface AllocationResult {
  plan: Plan
  allocator: AllocatorId
  budget: Budget
  /** The planned-tensor bytes allowed. */
  capacity: number
  /** memoryModel of the plan in the layout (total includes the KV reserve). */
  bytes: { planned: number; kept: number; kvCache: number; total: number }
  /** 8 · planned bytes / planned parameters. */
  bitsPerWeight: number
  /** Summed ΔKLD proxy of the picks (greedy/optimal). */
  predictedKld: number | null
  /** Tensors per option spec. */
  counts: Record<string, number>
  exact?: boolean
  highLayers?: number[]
}

/** The knapsack's items: per target tensor, each option's bytes in the layout and its ΔKLD (null: does not apply). */
export function allocationItems(model: OpenedModel, targets: readonly TensorEntry[], options: readonly AllocOption[], memory: MemoryOptions, costs?: AllocationRequest['costs']): AllocItem[] {
  return targets.map((t) => {
    const choices = options.map((o) => {
      const bytes = optionBytes(model, t, o, memory)
      if (bytes === null) return null
      const cost = o.kind === 'keep' ? (costs?.get(t.name)?.get('keep') ?? 0) : costs ? costs.get(t.name)?.get(o.spec) : 0
      if (cost === undefined) throw new PlanError(t.file, t.name, `no measured ΔKLD for option '${o.spec}'`)
      return { bytes, cost }
    })
    if (choices.every((c) => c === null)) throw new PlanError(t.file, t.name, `none of the options fits [${t.shape.join(', ')}] in the ${memory.format} layout (${options.map((o) => o.spec).join('; ')}); add 'keep' to the options to let it stay as stored`)
    return { name: t.name, layer: classifyTensor(t.alias ?? t.name).layer, choices }
  })
}

function planOf(model: OpenedModel, targets: readonly TensorEntry[], options: readonly AllocOption[], picks: readonly number[], description: string): Plan {
  const tensors: Record<string, PlanEntry> = {}
  targets.forEach((t, i) => {
    const o = options[picks[i]!]!
    tensors[t.name] = o.kind === 'keep' ? 'keep' : { method: o.methodId, params: o.params as Record<string, number | boolean | string> }
  })
  return { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, description, tensors }
}

export function allocate(req: AllocationRequest): AllocationResult {
  const { model, budget, options, memory } = req
  if (memory.format !== 'native' && memory.format !== 'gguf') throw new PlanError('allocation', null, `sizes in the ${memory.format} layout are not additive per tensor; allocate in the native or gguf layout`)
  const allTensors = req.allTensors ?? false
  if (req.allocator === 'lsaq' && allTensors) throw new PlanError('allocation', null, 'LSAQ allocates per decoder block; --all-tensors (embeddings, lm_head) needs the greedy or optimal allocator')
  const targets = allocationTargets(model, allTensors)
  const items = allocationItems(model, targets, options, memory, req.allocator === 'lsaq' ? undefined : req.costs)
  const targetNames = new Set(targets.map((t) => t.name))
  const base = memoryModel(model, [], memory)
  const fixed = base.tensors.filter((t) => !targetNames.has(t.name)).reduce((a, t) => a + t.bytes, 0) + base.overhead + base.kvCache
  const params = targets.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0)
  const capacity = budget.kind === 'bytes' ? budget.bytes - fixed : Math.floor((budget.bitsPerWeight * params) / 8)

  let solution: AllocSolution
  try {
    if (req.allocator === 'lsaq') {
      if (options.length !== 2) throw new PlanError('allocation', null, `LSAQ takes exactly two options (high and low), got ${options.length}`)
      if (!req.importance) throw new PlanError('allocation', null, 'LSAQ needs per-layer importance')
      // The high option is the larger one over the planned tensors.
      const sizeAt = (j: number) => items.reduce((a, it) => a + (it.choices[j]?.bytes ?? 0), 0)
      const [high, low] = sizeAt(0) >= sizeAt(1) ? [0, 1] : [1, 0]
      solution = solveLsaq(items, req.importance, high, low, capacity)
    } else {
      if (!req.costs && options.length > 1) throw new PlanError('allocation', null, `the ${req.allocator} allocator needs measured ΔKLD per tensor and option`)
      solution = req.allocator === 'greedy' ? solveGreedy(items, capacity) : solveOptimal(items, capacity, req.maxCells)
    }
  } catch (err) {
    if (err instanceof InfeasibleError) throw infeasible(budget, err.smallest, fixed, params, memory)
    throw err
  }
  const counts: Record<string, number> = {}
  for (const j of solution.picks) counts[options[j]!.spec] = (counts[options[j]!.spec] ?? 0) + 1
  const high = solution.highLayers ? ` (blocks ${solution.highLayers.join(',') || 'none'} high)` : ''
  const description = `${req.allocator} allocation for ${budget.text} (${memory.format} sizes) over ${options.map((o) => o.spec).join('; ')}: ${Object.entries(counts).map(([s, n]) => `${n}× ${s}`).join(', ')}${high}`
  const plan = planOf(model, targets, options, solution.picks, description)
  // Re-measured from the plan itself: the allocation's bookkeeping and the memory model must agree.
  const measured = memoryModel(model, resolvePlanFor(model, plan, 'allocation'), memory)
  const plannedBytes = measured.tensors.filter((t) => targetNames.has(t.name)).reduce((a, t) => a + t.bytes, 0)
  const bound = budget.kind === 'bytes' ? measured.total <= budget.bytes : plannedBytes <= capacity
  if (!bound || plannedBytes !== solution.bytes) throw new Error(`allocation bug: the plan measures ${measured.total} bytes (${plannedBytes} planned), the allocator counted ${solution.bytes} planned bytes for a capacity of ${capacity}`)
  return {
    plan,
    allocator: req.allocator,
    budget,
    capacity,
    bytes: { planned: plannedBytes, kept: measured.total - plannedBytes - measured.kvCache, kvCache: measured.kvCache, total: measured.total },
    bitsPerWeight: (8 * plannedBytes) / params,
    predictedKld: req.allocator === 'lsaq' ? null : solution.cost,
    counts,
    ...(solution.exact !== undefined ? { exact: solution.exact } : {}),
    ...(solution.highLayers ? { highLayers: solution.highLayers } : {}),
  }
}

/** The budget cannot be met: the message gives the smallest feasible size in the budget's terms. */
function infeasible(budget: Budget, smallestPlanned: number, fixed: number, params: number, memory: MemoryOptions): PlanError {
  const smallestTotal = smallestPlanned + fixed
  // Rounded up: a smaller figure printed would look feasible.
  const bpw = Math.ceil(((8 * smallestPlanned) / params) * 1e4) / 1e4
  const what =
    budget.kind === 'bytes'
      ? `the smallest feasible size is ${smallestTotal} bytes (${(smallestTotal / 1e6).toFixed(3)} MB: ${smallestPlanned} planned + ${fixed} kept${memory.kv ? ' and KV cache' : ''}, ${memory.format} layout)`
      : `the smallest feasible is ${bpw} bpw (${smallestPlanned} bytes over ${params} planned weights, ${memory.format} layout)`
  return new PlanError('budget', null, `${budget.text} is infeasible with these options: ${what}`)
}
