/**
 * State of the activation and KV views (Evaluate tab): their settings, the three jobs
 * (activationView, kvView, kvSweep) with progress and cancel, and their results. One per
 * workbench (kept in a WeakMap rather than in workbench.ts), reset when another model opens,
 * so settings and results survive switching tabs.
 */
import { markRaw, reactive, watch } from 'vue'
import type { ActivationViewResult, ApiError, EvalRun, EvalTextRef, KvSweepResult, KvViewResult } from '../../../worker/api/contract'
import { asApiError, startJob, type Job } from '../api'
import { variantRef, type RateJobView } from './evaluation'
import { kvCurve } from './run-facts'

export { KV_SCHEMES, kvCurve, type KvPoint } from './run-facts'
import type { RunningJob, Workbench } from './workbench'

export interface ActKvState {
  modelId: string | null
  act: {
    layer: number
    bits: number
    outliers: number
    norm: 'absmax-non-outlier' | 'none'
    /** Calibration windows of 256 tokens (32 = what evaluation fits the codebooks on). */
    windows: number
    result: ActivationViewResult | null
    job: RateJobView | null
    error: ApiError | null
  }
  kv: {
    layer: number
    kvHead: number
    tokens: number
    result: KvViewResult | null
    job: RateJobView | null
    error: ApiError | null
  }
  sweep: {
    /** Windows each sweep evaluation runs on (a few: 12 evaluations). */
    windows: number
    job: RateJobView | null
    error: ApiError | null
    last: { ran: number; existing: number } | null
  }
}

export type ActKv = ReturnType<typeof createActKv>

const instances = new WeakMap<Workbench, ActKv>()

/** The workbench's activation/KV state (created on first use). */
export function actKvFor(wb: Workbench): ActKv {
  let a = instances.get(wb)
  if (!a) {
    const created = createActKv(wb)
    instances.set(wb, created)
    const frac = (j: RateJobView): number | null => (j.total > 0 ? Math.min(1, j.done / j.total) : null)
    wb.addJobSource(() => {
      const s = created.state
      const out: RunningJob[] = []
      if (s.act.job) out.push({ id: 'act-view', label: s.act.job.label, fraction: frac(s.act.job), tab: 'evaluate', cancel: s.act.job.cancel })
      if (s.kv.job) out.push({ id: 'kv-view', label: s.kv.job.label, fraction: frac(s.kv.job), tab: 'evaluate', cancel: s.kv.job.cancel })
      if (s.sweep.job) out.push({ id: 'kv-sweep', label: s.sweep.job.label, fraction: frac(s.sweep.job), tab: 'evaluate', cancel: s.sweep.job.cancel })
      return out
    })
    a = created
  }
  return a
}

/** One point of the perplexity-vs-KV-bits chart. */
export function createActKv(wb: Workbench) {
  const ev = wb.evaluation
  const state = reactive<ActKvState>({
    modelId: null,
    act: { layer: 0, bits: 4, outliers: 4, norm: 'absmax-non-outlier', windows: 8, result: null, job: null, error: null },
    kv: { layer: 0, kvHead: 0, tokens: 128, result: null, job: null, error: null },
    sweep: { windows: 4, job: null, error: null, last: null },
  })
  const jobs: { act: Job<unknown> | null; kv: Job<unknown> | null; sweep: Job<unknown> | null } = { act: null, kv: null, sweep: null }

  watch(
    () => wb.state.model?.modelId ?? null,
    (id) => {
      if (id === state.modelId) return
      for (const j of Object.values(jobs)) j?.cancel()
      Object.assign(jobs, { act: null, kv: null, sweep: null })
      state.modelId = id
      Object.assign(state.act, { result: null, job: null, error: null, layer: 0 })
      Object.assign(state.kv, { result: null, job: null, error: null, layer: 0, kvHead: 0 })
      Object.assign(state.sweep, { job: null, error: null, last: null })
    },
    { immediate: true },
  )

  function runActivationView(): void {
    const modelId = state.modelId
    if (!modelId || jobs.act) return
    const a = state.act
    a.error = null
    const view = ev.rateView(`Activations of layer ${a.layer} on the calibration text`, () => job.cancel())
    const job = startJob(
      wb.client,
      'activationView',
      { modelId, layer: a.layer, bits: a.bits, outliers: a.outliers, norm: a.norm, maxWindows: a.windows, backend: ev.state.backend },
      (done, total, detail) => ev.applyProgress(view, done, total, detail),
    )
    jobs.act = job
    a.job = view
    job.promise
      .then(
        (r) => {
          if (jobs.act === job) a.result = markRaw(r)
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (jobs.act === job && !e.cancelled) a.error = e
        },
      )
      .finally(() => {
        if (jobs.act === job) {
          jobs.act = null
          a.job = null
        }
      })
  }

  function runKvView(): void {
    const modelId = state.modelId
    if (!modelId || jobs.kv) return
    const k = state.kv
    k.error = null
    const view = ev.rateView(`K and V of layer ${k.layer}, kv head ${k.kvHead}`, () => job.cancel())
    const job = startJob(wb.client, 'kvView', { modelId, layer: k.layer, kvHead: k.kvHead, tokens: k.tokens, backend: ev.state.backend }, (done, total, detail) =>
      ev.applyProgress(view, done, total, detail),
    )
    jobs.kv = job
    k.job = view
    job.promise
      .then(
        (r) => {
          if (jobs.kv === job) k.result = markRaw(r)
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (jobs.kv === job && !e.cancelled) k.error = e
        },
      )
      .finally(() => {
        if (jobs.kv === job) {
          jobs.kv = null
          k.job = null
        }
      })
  }

  /** The missing 2/3/4-bit × {naive, past-only, smoothed, both} runs of the Perplexity card's variant and text, on a few windows. */
  function runSweep(): void {
    const modelId = state.modelId
    if (!modelId || jobs.sweep) return
    const sw = state.sweep
    const s = ev.state.settings
    sw.error = null
    let variant
    try {
      variant = variantRef(s.variant, ev.currentPlan())
    } catch (err) {
      sw.error = asApiError(err)
      return
    }
    const text: EvalTextRef = s.text === 'heldout' ? { kind: 'heldout' } : { kind: 'file', path: s.filePath.trim() }
    const view = ev.rateView(`KV sweep of ${ev.variantLabel(s.variant)}: 2/3/4 bits × 4 schemes on ${sw.windows} windows`, () => job.cancel())
    const job = startJob(
      wb.client,
      'kvSweep',
      { modelId, text, ctx: s.ctx, maxWindows: sw.windows, backend: ev.state.backend, variant, bits: [2, 3, 4] },
      // done/total count evaluations (fractions while one runs); a sub-evaluation's loading counts weights
      (done, total, detail) => ev.applyProgress(view, done, total, detail),
    )
    jobs.sweep = job
    sw.job = view
    job.promise
      .then(
        (r: KvSweepResult) => {
          if (state.modelId !== modelId) return
          ev.addRuns(r.runs)
          sw.last = { ran: r.runs.length, existing: r.existing }
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (jobs.sweep === job && !e.cancelled) sw.error = e
        },
      )
      .finally(() => {
        if (jobs.sweep === job) {
          jobs.sweep = null
          sw.job = null
        }
      })
  }

  return { state, runActivationView, runKvView, runSweep }
}
