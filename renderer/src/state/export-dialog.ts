/**
 * The Export dialog's state (part of the workbench): the formats on offer, the chosen format
 * and its options, what it represents of the current plan and whether the destination can be
 * written (exportSupport, asked again a moment after every change), the export job with its
 * progress by stage, and the report at the end. The plan is the plan editor's current plan.
 */
import { markRaw, reactive } from 'vue'
import type {
  ApiError,
  ExportFloatType,
  ExportFormatId,
  ExportFormatInfo,
  ExportModelReport,
  ExportSupportInfo,
  JobProgressDetail,
  ModelSummary,
  Plan,
} from '../../../worker/api/contract'
import { asApiError, startJob, type ApiClient, type Job } from '../api'

export interface ExportJobView {
  label: string
  stage: JobProgressDetail['stage'] | null
  tensor: string | null
  done: number
  total: number
  /** Perplexity so far while the export is evaluated. */
  ppl: number | null
  cancelRequested?: boolean
  cancel(): void
}

export interface ExportDialogState {
  open: boolean
  formats: ExportFormatInfo[]
  formatsError: ApiError | null
  format: ExportFormatId | null
  /** '' = the model's own float type. */
  dtype: ExportFloatType | ''
  /** Format option key → value ('' = the format's default). */
  formatOptions: Record<string, string>
  destination: string
  /** The user typed a destination: it no longer follows the default. */
  destinationEdited: boolean
  evaluate: boolean
  /** Held-out windows the evaluation runs (ctx 256). */
  evalWindows: number
  support: ExportSupportInfo | null
  supportPending: boolean
  supportError: ApiError | null
  job: ExportJobView | null
  report: ExportModelReport | null
  error: ApiError | null
  /** Set when a running export was cancelled: what happened to the output. */
  cancelled: string | null
}

export type ExportDialog = ReturnType<typeof createExportDialog>

const STAGE_LABELS: Record<string, string> = {
  calibrating: 'Capturing calibration activations',
  writing: 'Writing',
  finishing: 'Finishing',
  loading: 'Loading the export',
  'loading-base': 'Loading the source model (KLD)',
  evaluating: 'Evaluating the export',
}

export function stageLabel(job: Pick<ExportJobView, 'stage' | 'tensor'>): string {
  const base = job.stage ? (STAGE_LABELS[job.stage] ?? job.stage) : 'Starting the export'
  return job.stage === 'writing' && job.tensor ? `${base} ${job.tensor}` : base
}

export function createExportDialog(client: ApiClient, plan: () => { plan: Plan | null; name: string }) {
  const state = reactive<ExportDialogState>({
    open: false,
    formats: [],
    formatsError: null,
    format: null,
    dtype: '',
    formatOptions: {},
    destination: '',
    destinationEdited: false,
    evaluate: true,
    evalWindows: 8,
    support: null,
    supportPending: false,
    supportError: null,
    job: null,
    report: null,
    error: null,
    cancelled: null,
  })
  let model: ModelSummary | null = null
  let formatsFor: string | null = null
  let supportTimer: ReturnType<typeof setTimeout> | null = null
  let supportSeq = 0
  let job: Job<ExportModelReport> | null = null

  function setModel(m: ModelSummary | null): void {
    model = m
    formatsFor = null
    Object.assign(state, { open: false, formats: [], format: null, support: null, report: null, error: null, cancelled: null, destination: '', destinationEdited: false })
  }

  async function show(): Promise<void> {
    state.open = true
    state.report = null
    state.error = null
    state.cancelled = null
    if (model && formatsFor !== model.modelId) {
      const modelId = model.modelId
      try {
        const formats = await client.call('exportFormats', { modelId })
        if (model?.modelId !== modelId) return
        formatsFor = modelId
        state.formats = formats
        state.formatsError = null
        const usable = formats.find((f) => f.built && !f.unavailable)
        if (!state.format || !formats.some((f) => f.id === state.format && f.built)) state.format = usable?.id ?? null
      } catch (err) {
        state.formatsError = asApiError(err)
      }
    }
    requestSupport()
  }

  function close(): void {
    state.open = false
  }

  function chooseFormat(id: ExportFormatId): void {
    const info = state.formats.find((f) => f.id === id)
    if (!info?.built || info.unavailable) return
    state.format = id
    state.formatOptions = {}
    if (!state.destinationEdited) state.destination = ''
    requestSupport()
  }

  function formatInfo(): ExportFormatInfo | null {
    return state.formats.find((f) => f.id === state.format) ?? null
  }

  function setDestination(path: string): void {
    state.destination = path
    state.destinationEdited = path.trim() !== ''
    requestSupport()
  }

  function exportOptions(): { dtype?: ExportFloatType; formatOptions?: Record<string, string> } {
    const formatOptions = Object.fromEntries(Object.entries(state.formatOptions).filter(([, v]) => v !== ''))
    return { ...(state.dtype ? { dtype: state.dtype } : {}), ...(Object.keys(formatOptions).length ? { formatOptions } : {}) }
  }

  /** exportSupport for the current choices, a moment after the last change (typing a path). */
  function requestSupport(): void {
    state.supportPending = true
    if (supportTimer) clearTimeout(supportTimer)
    supportTimer = setTimeout(() => void fetchSupport(), 200)
  }

  async function fetchSupport(): Promise<void> {
    const seq = ++supportSeq
    const p = plan()
    if (!model || !state.format || !p.plan) {
      state.supportPending = false
      return
    }
    const out = state.destination.trim()
    try {
      const support = await client.call('exportSupport', {
        modelId: model.modelId,
        plan: p.plan,
        ...(p.name ? { planName: p.name } : {}),
        format: state.format,
        ...exportOptions(),
        ...(out ? { out } : {}),
      })
      if (seq !== supportSeq) return
      state.support = markRaw(support)
      state.supportError = null
      if (!state.destinationEdited && support.defaultDestination !== out) {
        // The default follows the model, plan and format; checked once more so the field shows it can be written.
        state.destination = support.defaultDestination
        requestSupport()
      }
    } catch (err) {
      if (seq === supportSeq) state.supportError = asApiError(err)
    } finally {
      if (seq === supportSeq) state.supportPending = false
    }
  }

  function canExport(): boolean {
    const s = state.support
    return !!model && !!state.format && !state.job && !state.supportPending && !!s && s.refusal === null && s.destination?.problem === null && state.destination.trim() !== ''
  }

  function start(): void {
    const p = plan()
    if (!model || !state.format || !p.plan || state.job) return
    state.report = null
    state.error = null
    state.cancelled = null
    const out = state.destination.trim()
    const view: ExportJobView = reactive({
      label: `Exporting to ${out}`,
      stage: null,
      tensor: null,
      done: 0,
      total: 0,
      ppl: null,
      cancel: () => {
        view.cancelRequested = true
        current.cancel()
      },
    })
    const current = startJob(
      client,
      'exportModel',
      {
        modelId: model.modelId,
        plan: p.plan,
        ...(p.name ? { planName: p.name } : {}),
        format: state.format,
        out,
        ...exportOptions(),
        ...(state.evaluate ? { evaluate: { ctx: 256, maxWindows: state.evalWindows, backend: 'wasm' as const } } : {}),
      },
      (done, total, detail) => {
        Object.assign(view, { done, total, stage: detail?.stage ?? view.stage, tensor: detail?.tensor ?? null })
        if (detail?.ppl !== undefined) view.ppl = detail.ppl
      },
    )
    job = current
    state.job = view
    const evaluating = (): boolean => view.stage === 'loading' || view.stage === 'loading-base' || view.stage === 'evaluating'
    current.promise.then(
      (report) => {
        if (job === current) state.report = markRaw(report)
      },
      (err: unknown) => {
        const e = asApiError(err)
        if (job !== current) return
        if (e.cancelled) {
          state.cancelled = evaluating()
            ? `Cancelled while evaluating: the export at ${out} was written (its report beside it has no evaluation).`
            : 'Export cancelled: the partial output was removed, nothing was written.'
        } else state.error = e
      },
    ).finally(() => {
      if (job === current) {
        job = null
        state.job = null
        // The destination is taken now: offer a fresh default for the next export.
        if (!state.destinationEdited) state.destination = ''
        requestSupport()
      }
    })
  }

  return { state, setModel, show, close, chooseFormat, formatInfo, setDestination, requestSupport, canExport, start }
}
