/**
 * The tensor inspector's method comparison (part of the workbench): the methods chosen to
 * compare, the row (and column, which picks the group) whose levels are drawn, and the
 * quantizePreview job that quantizes the selected tensor with each of them.
 */
import { markRaw, reactive } from 'vue'
import type { ApiError, QuantizePreviewResult } from '../../../worker/api/contract'
import { asApiError, startJob, type ApiClient, type Job } from '../api'
import type { MethodEntry } from './plan-cells'
import type { JobView } from './job-view'

export interface QuantCompareState {
  /** Methods to compare, in the order the table lists them. */
  choices: MethodEntry[]
  row: number
  col: number
  result: QuantizePreviewResult | null
  /** Index (into result.methods) whose error heatmap and histogram are shown. */
  shown: number
  job: JobView | null
  error: ApiError | null
}

export type QuantCompare = ReturnType<typeof createQuantCompare>

/** What the inspector compares until the user changes it: 4-bit RTN against NF4 (both group 64). */
const DEFAULT_CHOICES: MethodEntry[] = [
  { method: 'rtn', params: { bits: 4, group: 64 } },
  { method: 'nf4', params: { group: 64 } },
]

export function createQuantCompare(client: ApiClient, jobView: (label: string, cancel: () => void) => JobView, onCancelled: (label: string) => void) {
  const state = reactive<QuantCompareState>({
    choices: DEFAULT_CHOICES.map((c) => ({ method: c.method, params: { ...c.params } })),
    row: 0,
    col: 0,
    result: null,
    shown: 0,
    job: null,
    error: null,
  })
  let job: Job<QuantizePreviewResult> | null = null

  function cancel(): void {
    job?.cancel()
    job = null
    state.job = null
  }

  /** Another tensor or model: the last result no longer applies. */
  function reset(): void {
    cancel()
    state.result = null
    state.error = null
    state.row = 0
    state.col = 0
  }

  function add(entry: MethodEntry): void {
    state.choices.push({ method: entry.method, params: { ...(entry.params ?? {}) } })
  }

  function remove(index: number): void {
    state.choices.splice(index, 1)
  }

  function run(modelId: string, tensor: string): void {
    if (job || state.choices.length === 0) return
    state.error = null
    const view = jobView(`Quantizing ${tensor} with ${state.choices.length} methods`, () => j.cancel())
    const j = startJob(
      client,
      'quantizePreview',
      {
        modelId,
        tensor,
        methods: state.choices.map((c) => ({ methodId: c.method, params: c.params ?? {} })),
        row: state.row,
        col: state.col,
        bins: 96,
        heatmapSize: 96,
      },
      (done, total) => Object.assign(view, { done, total }),
    )
    job = j
    state.job = view
    j.promise
      .then(
        (result) => {
          if (job !== j) return
          state.result = markRaw(result)
          if (state.shown >= result.methods.length) state.shown = 0
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (job === j && !e.cancelled) state.error = e
          if (e.cancelled && view.cancelRequested) onCancelled(view.label)
        },
      )
      .finally(() => {
        if (job === j) {
          job = null
          state.job = null
        }
      })
  }

  return { state, add, remove, run, cancel, reset }
}
