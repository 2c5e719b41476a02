/**
 * The Importance tab's state and actions: settings (text, methods, k, final norm, windows, the
 * method spec sensitivity and the local proxy quantize each block with), the layerImportance job with progress and
 * cancel, its report, and the bar order. The spec comes from the plan editor's method list and
 * params form, so any method of the library can be measured.
 */
import { markRaw, reactive } from 'vue'
import type { ApiError, ImportanceMethodId, JobProgressDetail, LayerImportanceReport, ModelSummary, QuantMethodInfo } from '../../../worker/api/contract'
import { asApiError, startJob, type ApiClient, type Job } from '../api'
import type { JobView } from './job-view'
import { defaultParams, entrySpec, type QuantParams } from './plan-cells'

export const IMPORTANCE_METHODS: { id: ImportanceMethodId; label: string; hint: string }[] = [
  { id: 'lsaq', label: 'LSAQ', hint: '1 − Jaccard of the logit-lens top-k token sets of block input and output (arXiv 2412.18135)' },
  { id: 'cosine', label: 'cosine', hint: '1 − cos of block input and output residuals (ShortGPT)' },
  { id: 'sensitivity', label: 'sensitivity', hint: 'ΔKLD against the base with only this block quantized by the chosen method (one evaluation per block, cached)' },
  {
    id: 'local',
    label: 'local',
    hint: "Local error proxy: relative error of the block's linear outputs on calibration activations (resources/eval/calibration.txt) with its weights quantized by the chosen method; no forward pass per block",
  },
]

export interface ImportanceSettings {
  text: 'heldout' | 'file'
  filePath: string
  methods: ImportanceMethodId[]
  k: number
  finalNorm: boolean
  ctx: number
  /** null: every window of the text. */
  maxWindows: number | null
  /** Sensitivity and local: the method each block is quantized with, and its params. */
  quant: { method: string; params: QuantParams }
}

export interface ImportanceState {
  modelId: string | null
  settings: ImportanceSettings
  job: JobView | null
  report: LayerImportanceReport | null
  error: ApiError | null
  /** Bars in block order ('layer') or by one method's importance, largest first. */
  sortBy: 'layer' | ImportanceMethodId
}

export type ImportanceTab = ReturnType<typeof createImportance>

const STAGE_LABELS: Record<string, string> = {
  loading: 'Loading weights',
  evaluating: 'Lens and cosines over windows',
  measuring: 'Sensitivity: blocks measured',
  calibrating: 'Local proxy: calibration windows',
  local: 'Local proxy: tensors measured',
}

export function createImportance(client: ApiClient, jobView: (label: string, cancel: () => void) => JobView, onCancelled: (label: string) => void) {
  const state = reactive<ImportanceState>({
    modelId: null,
    settings: { text: 'heldout', filePath: '', methods: ['lsaq', 'cosine'], k: 10, finalNorm: true, ctx: 256, maxWindows: 8, quant: { method: 'rtn', params: { bits: 3, group: 128 } } },
    job: null,
    report: null,
    error: null,
    sortBy: 'layer',
  })
  let job: Job<LayerImportanceReport> | null = null

  function setModel(m: ModelSummary | null): void {
    cancel()
    Object.assign(state, { modelId: m?.modelId ?? null, report: null, error: null, sortBy: 'layer' })
  }

  /** The spec sensitivity uses, as the CLI writes it (rtn:bits=3,group=128). */
  function quantSpec(): string {
    return entrySpec({ method: state.settings.quant.method, params: state.settings.quant.params })
  }

  function chooseQuantMethod(info: QuantMethodInfo): void {
    state.settings.quant = { method: info.id, params: defaultParams(info) }
  }

  /** Why the settings cannot run, or null. */
  function problem(): string | null {
    const s = state.settings
    if (s.methods.length === 0) return 'Pick at least one method.'
    if (!Number.isInteger(s.k) || s.k < 1) return 'k must be a whole number ≥ 1.'
    if (!Number.isInteger(s.ctx) || s.ctx < 2) return 'The context must be a whole number of tokens, at least 2.'
    if (s.maxWindows !== null && (!Number.isInteger(s.maxWindows) || s.maxWindows < 1)) return 'Windows must be a whole number ≥ 1, or empty for all.'
    if (s.text === 'file' && !s.filePath.trim()) return 'Enter the path of a text file.'
    return null
  }

  function run(): void {
    const modelId = state.modelId
    if (!modelId || job || problem()) return
    const s = state.settings
    // The request follows the order of IMPORTANCE_METHODS, whatever order they were ticked in.
    const methods = IMPORTANCE_METHODS.map((m) => m.id).filter((id) => s.methods.includes(id))
    const lens = methods.includes('lsaq')
    state.error = null
    const view = jobView('Layer importance', () => started.cancel())
    const started = startJob(
      client,
      'layerImportance',
      {
        modelId,
        text: s.text === 'heldout' ? { kind: 'heldout' } : { kind: 'file', path: s.filePath.trim() },
        methods,
        ...(lens ? { k: s.k, finalNorm: s.finalNorm } : {}),
        ctx: s.ctx,
        ...(s.maxWindows !== null ? { maxWindows: s.maxWindows } : {}),
        ...(methods.includes('sensitivity') || methods.includes('local') ? { quant: quantSpec() } : {}),
      },
      (done: number, total: number, detail?: JobProgressDetail) => {
        const stage = detail?.label === 'local' ? 'local' : (detail?.stage ?? '')
        Object.assign(view, { done, total, label: `Layer importance: ${STAGE_LABELS[stage] ?? 'starting'}` })
      },
    )
    job = started
    state.job = view
    started.promise.then(
      (report) => {
        if (job === started) {
          state.report = markRaw(report)
          if (state.sortBy !== 'layer' && !report.series.some((x) => x.method === state.sortBy)) state.sortBy = 'layer'
        }
      },
      (err: unknown) => {
        const e = asApiError(err)
        if (job === started && !e.cancelled) state.error = e
        if (e.cancelled && view.cancelRequested) onCancelled('Layer importance')
      },
    ).finally(() => {
      if (job === started) {
        job = null
        state.job = null
      }
    })
  }

  function cancel(): void {
    job?.cancel()
    job = null
    state.job = null
  }

  return { state, run, cancel, problem, quantSpec, chooseQuantMethod, setModel }
}
