/**
 * The allocation panel's state and actions: a budget (bits per weight or MB) on a slider, the
 * allocator and option set, the layout and KV-cache reserve the memory bar shows, and the
 * Pareto sweep. Moving the slider asks the engine for a new plan (allocatePlan) after a short
 * pause; the plan goes into the plan editor, so the layer grid shows it at once. The first call
 * for an option set measures (LSAQ importance or per-tensor ΔKLD: seconds to minutes, with
 * progress and cancel); later budgets reuse the measurements and answer in milliseconds.
 *
 * One instance per workbench (allocationFor), so the settings and the last sweep survive
 * switching tabs.
 */
import { markRaw, reactive } from 'vue'
import type { AllocatePlanResult, AllocatorId, ApiError, JobProgressDetail, ParetoPoint, ParetoSweepResult } from '../../../worker/api/contract'
import { asApiError, startJob, type Job } from '../api'
import type { JobView } from './job-view'
import type { Workbench } from './workbench'

export const ALLOCATORS: { id: AllocatorId; label: string; hint: string }[] = [
  { id: 'lsaq', label: 'LSAQ', hint: 'the n most important blocks (logit-lens Jaccard) at the high option, the rest low; two options only' },
  { id: 'greedy', label: 'greedy', hint: 'upgrade the tensor with the least measured ΔKLD per extra byte first (ExLlamaV3-style)' },
  { id: 'optimal', label: 'optimal', hint: 'multiple-choice knapsack over per-tensor options, minimising the summed measured ΔKLD' },
]

/** Option sets a researcher starts from; 'custom' takes any specs separated by ';'. */
export const OPTION_SETS: { id: string; label: string; specs: string }[] = [
  { id: 'rtn', label: 'rtn4 g128 / rtn3 g128', specs: 'rtn:bits=4,group=128;rtn:bits=3,group=128' },
  { id: 'ggml', label: 'Q6_K … Q2_K', specs: 'ggml:type=Q6_K;ggml:type=Q5_K;ggml:type=Q4_K;ggml:type=Q3_K;ggml:type=Q2_K' },
  { id: 'custom', label: 'custom…', specs: '' },
]

export interface AllocationSettings {
  allocator: AllocatorId
  optionSet: string
  customSpecs: string
  unit: 'bpw' | 'MB'
  /** The slider's value in `unit`. */
  bpw: number
  mb: number
  layout: 'native' | 'gguf'
  allTensors: boolean
  /** Measurement windows of the calibration text. */
  windows: number
  /** KV-cache reserve the memory bar adds (ctx 0: none). */
  kv: { ctx: number; batch: number; bits: number }
  /** The "fits in N GB" line. */
  fitsGb: number
  sweep: { allocators: AllocatorId[]; budgets: string; evalWindows: number }
}

export interface AllocationState {
  modelId: string | null
  settings: AllocationSettings
  job: JobView | null
  result: AllocatePlanResult | null
  error: ApiError | null
  sweepJob: JobView | null
  sweep: ParetoSweepResult | null
  sweepError: ApiError | null
  /** The label of the plan last loaded into the grid from here (a budget or a sweep point). */
  loaded: string | null
}

const DEBOUNCE_MS = 250

const STAGES: Record<string, string> = {
  loading: 'loading weights',
  measuring: 'measuring',
  evaluating: 'evaluating plans',
}

export type Allocation = ReturnType<typeof createAllocation>

const instances = new WeakMap<Workbench, Allocation>()

/** The workbench's allocation state (made on first use). */
export function allocationFor(wb: Workbench): Allocation {
  let a = instances.get(wb)
  if (!a) {
    const created = createAllocation(wb)
    instances.set(wb, created)
    const frac = (j: JobView): number | null => (j.total > 0 ? Math.min(1, j.done / j.total) : null)
    wb.addJobSource(() => {
      const { job, sweepJob } = created.state
      return [
        ...(job ? [{ id: 'allocate' as const, label: job.label, fraction: frac(job), tab: 'grid' as const, cancel: job.cancel }] : []),
        ...(sweepJob ? [{ id: 'pareto' as const, label: sweepJob.label, fraction: frac(sweepJob), tab: 'grid' as const, cancel: sweepJob.cancel }] : []),
      ]
    })
    a = created
  }
  return a
}

export function createAllocation(wb: Workbench) {
  const state = reactive<AllocationState>({
    modelId: null,
    settings: {
      allocator: 'optimal',
      optionSet: 'rtn',
      customSpecs: 'rtn:bits=4,group=128;rtn:bits=3,group=128',
      unit: 'bpw',
      bpw: 3.5,
      mb: 0,
      layout: 'native',
      allTensors: false,
      windows: 4,
      kv: { ctx: 0, batch: 1, bits: 16 },
      fitsGb: 8,
      sweep: { allocators: ['lsaq', 'optimal'], budgets: '3.25bpw, 3.5bpw, 3.75bpw', evalWindows: 8 },
    },
    job: null,
    result: null,
    error: null,
    sweepJob: null,
    sweep: null,
    sweepError: null,
    loaded: null,
  })
  let job: Job<AllocatePlanResult> | null = null
  let sweepJob: Job<ParetoSweepResult> | null = null
  let timer: ReturnType<typeof setTimeout> | null = null
  /** A budget moved while a job ran: allocate again when it ends. */
  let again = false

  /** Follows the open model: a new model starts from its own size. */
  function syncModel(): void {
    const m = wb.state.model
    if ((m?.modelId ?? null) === state.modelId) return
    cancel()
    cancelSweep()
    Object.assign(state, { modelId: m?.modelId ?? null, result: null, error: null, sweep: null, sweepError: null, loaded: null })
    if (m) state.settings.mb = Math.round((m.bytes / 1e6) * 0.35 * 100) / 100
  }

  function specs(): string {
    const s = state.settings
    return s.optionSet === 'custom' ? s.customSpecs.trim() : (OPTION_SETS.find((o) => o.id === s.optionSet)?.specs ?? '')
  }

  /** The slider's budget as the engine reads it ('3.5bpw', '12.34MB'). */
  function budgetText(): string {
    const s = state.settings
    return s.unit === 'bpw' ? `${+s.bpw.toFixed(3)}bpw` : `${+s.mb.toFixed(3)}MB`
  }

  /** Why the settings cannot run, or null. */
  function problem(): string | null {
    const s = state.settings
    const list = specs()
    if (!list) return 'Enter option specs separated by ";", e.g. rtn:bits=4,group=128;rtn:bits=3,group=128.'
    if (s.allocator === 'lsaq' && list.split(';').filter((x) => x.trim()).length !== 2) return 'LSAQ takes exactly two options (high and low): pick greedy or optimal for this option set.'
    if (s.allocator === 'lsaq' && s.allTensors) return 'LSAQ allocates per decoder block: embeddings and lm_head need greedy or optimal.'
    if (!(s.windows >= 1 && Number.isInteger(s.windows))) return 'Measurement windows must be a whole number ≥ 1.'
    return null
  }

  function common() {
    const s = state.settings
    return { options: specs(), allTensors: s.allTensors, layout: s.layout, windows: s.windows }
  }

  /** Re-allocate a moment after the last change (slider drags send many). */
  function schedule(): void {
    if (timer) clearTimeout(timer)
    timer = setTimeout(() => {
      timer = null
      allocateNow()
    }, DEBOUNCE_MS)
  }

  function allocateNow(): void {
    const modelId = state.modelId
    if (!modelId || problem()) return
    if (job) {
      again = true
      return
    }
    const s = state.settings
    const budget = budgetText()
    const view = wb.jobView(`Allocating ${budget}`, () => started.cancel())
    const started = startJob(
      wb.client,
      'allocatePlan',
      { modelId, budget, allocator: s.allocator, ...common(), ...(s.kv.ctx > 0 ? { kv: { ...s.kv } } : {}) },
      (done: number, total: number, detail?: JobProgressDetail) => {
        Object.assign(view, { done, total, label: `Allocating ${budget}: ${STAGES[detail?.stage ?? ''] ?? 'starting'}${detail?.label ? ` · ${detail.label}` : ''}` })
      },
    )
    job = started
    // Only a job that measures is worth a progress bar: the knapsack alone answers at once.
    const showTimer = setTimeout(() => {
      if (job === started) state.job = view
    }, 300)
    started.promise
      .then(
        (r) => {
          if (state.modelId !== modelId) return
          state.result = markRaw(r)
          state.error = null
          const name = `${r.allocator} ${r.budget}`
          wb.plan.applyPlan(r.plan, name, null)
          state.loaded = name
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (state.modelId !== modelId) return
          if (e.cancelled) again = false
          else {
            state.error = e
            state.result = null
          }
        },
      )
      .finally(() => {
        clearTimeout(showTimer)
        if (job === started) {
          job = null
          state.job = null
        }
        if (again) {
          again = false
          allocateNow()
        }
      })
  }

  function cancel(): void {
    if (timer) clearTimeout(timer)
    timer = null
    again = false
    job?.cancel()
    job = null
    state.job = null
  }

  function runSweep(): void {
    const modelId = state.modelId
    if (!modelId || sweepJob || problem()) return
    const s = state.settings
    const budgets = s.sweep.budgets
      .split(',')
      .map((b) => b.trim())
      .filter((b) => b !== '')
    if (budgets.length === 0 || s.sweep.allocators.length === 0) return
    const view = wb.jobView('Pareto sweep', () => started.cancel())
    const started = startJob(
      wb.client,
      'paretoSweep',
      { modelId, allocators: [...s.sweep.allocators], budgets, evalWindows: s.sweep.evalWindows, ...common() },
      (done: number, total: number, detail?: JobProgressDetail) => {
        Object.assign(view, { done, total, label: `Pareto sweep: ${STAGES[detail?.stage ?? ''] ?? 'starting'}${detail?.label ? ` · ${detail.label}` : ''}` })
      },
    )
    sweepJob = started
    state.sweepJob = view
    state.sweepError = null
    started.promise
      .then(
        (r) => {
          if (state.modelId === modelId) state.sweep = markRaw(r)
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (state.modelId === modelId && !e.cancelled) state.sweepError = e
        },
      )
      .finally(() => {
        if (sweepJob === started) {
          sweepJob = null
          state.sweepJob = null
        }
      })
  }

  function cancelSweep(): void {
    sweepJob?.cancel()
    sweepJob = null
    state.sweepJob = null
  }

  /** A sweep point's plan into the grid. */
  function loadPoint(p: ParetoPoint): void {
    wb.plan.applyPlan(p.plan, p.label, null)
    state.loaded = p.label
  }

  return { state, syncModel, specs, budgetText, problem, schedule, allocateNow, cancel, runSweep, cancelSweep, loadPoint }
}
