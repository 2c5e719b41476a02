/**
 * The workbench's state and actions: the open model, the selected tensor, the statistics
 * jobs and their progress. Views read `state` and call the actions; only this file (and its
 * Evaluate-tab part, evaluation.ts) talks to the API client. Large results are marked raw:
 * Vue need not track 16k-number arrays.
 */
import { markRaw, reactive, shallowReactive } from 'vue'
import type {
  ApiError,
  GridStatistic,
  LayerGridStats,
  ModelSummary,
  RecentModel,
  OrientedTensorStats,
} from '../../../worker/api/contract'
import { asApiError, startJob, type ApiClient, type ConnectionState, type Job } from '../api'
import { queueChartWork } from '../charts/chart-queue'
import { createEvaluation } from './evaluation'
import { createExportDialog } from './export-dialog'
import { createImportance } from './importance'
import type { JobView } from './job-view'
import { createPlanEditor } from './plan-editor'
import { createQuantCompare } from './quant-compare'
import { parseUrlState, writeUrlState, type Tab, type UrlState } from './url-state'

export type { Tab }

export type { JobView }

/** A running job as the top bar lists it, whichever tab started it. */
export interface RunningJob {
  id: 'tensor' | 'grid' | 'evaluate' | 'generate' | 'compare' | 'plan-error' | 'export' | 'importance' | 'allocate' | 'pareto' | 'act-view' | 'kv-view' | 'kv-sweep'
  label: string
  /** 0..1, or null while the total is unknown. */
  fraction: number | null
  tab: Tab
  cancel(): void
  /** Shows the job where it runs when that is not a tab (the Export dialog). */
  reveal?(): void
}

export interface WorkbenchState {
  mode: 'electron' | 'browser'
  connection: ConnectionState
  model: ModelSummary | null
  /** Path being opened, while it opens. */
  opening: string | null
  openError: ApiError | null
  /** Start-up or drop notices (e.g. the default model is missing). */
  notice: string | null
  recent: RecentModel[]
  tab: Tab
  selected: string | null
  tensorStats: OrientedTensorStats | null
  tensorError: ApiError | null
  tensorJob: JobView | null
  grid: LayerGridStats | null
  gridError: ApiError | null
  gridJob: JobView | null
  gridStatistic: GridStatistic
  /** "… cancelled" after the user cancelled a job, until dismissed or the next job. */
  cancelled: string | null
  /** Start-up finished (default model opened or explained): tests wait for it. */
  ready: boolean
}

export type Workbench = ReturnType<typeof createWorkbench>

export function createWorkbench(client: ApiClient) {
  const state = reactive<WorkbenchState>({
    mode: client.mode,
    connection: client.mode === 'electron' ? 'open' : 'connecting',
    model: null,
    opening: null,
    openError: null,
    notice: null,
    recent: [],
    tab: 'overview',
    selected: null,
    tensorStats: null,
    tensorError: null,
    tensorJob: null,
    grid: null,
    gridError: null,
    gridJob: null,
    gridStatistic: 'absmax',
    cancelled: null,
    ready: false,
  })
  const onCancelled = (label: string): void => {
    state.cancelled = `${label}: cancelled`
  }
  const plan = createPlanEditor(client, (label, cancel) => jobView(label, cancel), onCancelled)
  const compare = createQuantCompare(client, (label, cancel) => jobView(label, cancel), onCancelled)
  const evaluation = createEvaluation(client, onCancelled, () => {
    const p = plan.currentPlan()
    return p && plan.plannedCount() > 0 ? { plan: p, name: plan.state.name.trim() || 'untitled plan', bytes: plan.state.size?.bytes ?? null, bitsPerWeight: plan.state.size?.bitsPerWeight ?? null } : null
  })
  const importance = createImportance(client, (label, cancel) => jobView(label, cancel), onCancelled)
  const exporter = createExportDialog(client, () => ({ plan: plan.currentPlan(), name: plan.state.name.trim() }))
  /** True while the view is being set from the URL (Back, reload): no new history entries then. */
  let restoring = false
  const statsCache = new Map<string, OrientedTensorStats>()
  let tensorJob: Job<OrientedTensorStats> | null = null
  let gridJob: Job<LayerGridStats> | null = null

  /** A progress view for a job that is about to start; `cancel` reaches it once it has. */
  function jobView(label: string, cancel: () => void): JobView {
    state.cancelled = null
    const view: JobView = reactive({
      label,
      done: 0,
      total: 0,
      cancel: () => {
        view.cancelRequested = true
        cancel()
      },
    })
    return view
  }

  /** The address bar follows the view: model, tab, tensor (url-state.ts). */
  function syncUrl(push: boolean): void {
    if (restoring) return
    writeUrlState({ model: state.model?.path ?? null, tab: state.model ? state.tab : null, tensor: state.selected }, push)
  }

  /** Shows what a URL names: opens its model if another is open, then its tensor and tab. */
  async function applyUrl(u: UrlState): Promise<void> {
    restoring = true
    try {
      if (u.model && u.model !== state.model?.path) await openModel(u.model)
      const model = state.model
      if (!model) return
      if (u.tensor && model.tensors.some((t) => t.name === u.tensor)) selectTensor(u.tensor)
      else state.selected = null
      showTab(u.tab ?? 'overview')
    } finally {
      restoring = false
    }
    syncUrl(false)
  }

  /** Jobs of panels created on demand (allocation, activation/KV views), listed after the rest. */
  const jobSources = shallowReactive<(() => RunningJob[])[]>([])
  function addJobSource(source: () => RunningJob[]): void {
    jobSources.push(source)
  }

  /** Every job in flight, for the top bar's indicator. */
  function runningJobs(): RunningJob[] {
    const out: RunningJob[] = []
    const frac = (done: number, total: number): number | null => (total > 0 ? Math.min(1, done / total) : null)
    if (state.tensorJob) out.push({ id: 'tensor', label: state.tensorJob.label, fraction: frac(state.tensorJob.done, state.tensorJob.total), tab: 'tensor', cancel: state.tensorJob.cancel })
    if (state.gridJob) out.push({ id: 'grid', label: state.gridJob.label, fraction: frac(state.gridJob.done, state.gridJob.total), tab: 'grid', cancel: state.gridJob.cancel })
    if (compare.state.job) out.push({ id: 'compare', label: compare.state.job.label, fraction: frac(compare.state.job.done, compare.state.job.total), tab: 'tensor', cancel: compare.state.job.cancel })
    if (plan.state.errorJob) out.push({ id: 'plan-error', label: plan.state.errorJob.label, fraction: frac(plan.state.errorJob.done, plan.state.errorJob.total), tab: 'grid', cancel: plan.state.errorJob.cancel })
    const e = evaluation.state
    if (e.evalJob) out.push({ id: 'evaluate', label: e.evalJob.label, fraction: frac(e.evalJob.done, e.evalJob.total), tab: 'evaluate', cancel: e.evalJob.cancel })
    if (e.genJob) out.push({ id: 'generate', label: e.genJob.label, fraction: frac(e.genJob.done, e.genJob.total), tab: 'evaluate', cancel: e.genJob.cancel })
    const imp = importance.state.job
    if (imp) out.push({ id: 'importance', label: imp.label, fraction: frac(imp.done, imp.total), tab: 'importance', cancel: imp.cancel })
    const x = exporter.state.job
    if (x) out.push({ id: 'export', label: x.label, fraction: frac(x.done, x.total), tab: 'grid', cancel: x.cancel, reveal: () => void exporter.show() })
    for (const source of jobSources) out.push(...source())
    return out
  }

  async function refreshRecent(): Promise<void> {
    try {
      state.recent = await client.call('listRecent', {})
    } catch {
      /* the list is a convenience */
    }
  }

  function cancelJobs(): void {
    tensorJob?.cancel()
    gridJob?.cancel()
    tensorJob = null
    gridJob = null
    state.tensorJob = null
    state.gridJob = null
  }

  async function openModel(path: string): Promise<void> {
    const trimmed = path.trim()
    if (!trimmed) return
    state.opening = trimmed
    state.openError = null
    try {
      const summary = await client.call('openModel', { path: trimmed })
      const previous = state.model
      cancelJobs()
      statsCache.clear()
      state.model = markRaw(summary)
      state.notice = null
      state.selected = null
      state.tensorStats = null
      state.tensorError = null
      state.grid = null
      state.gridError = null
      state.tab = 'overview'
      evaluation.setModel(summary)
      plan.setModel(summary)
      exporter.setModel(summary)
      importance.setModel(summary)
      compare.reset()
      if (previous) void client.call('closeModel', { modelId: previous.modelId }).catch(() => {})
      void refreshRecent()
      syncUrl(true)
    } catch (err) {
      state.openError = asApiError(err)
    } finally {
      state.opening = null
    }
  }

  function selectTensor(name: string): void {
    const model = state.model
    if (!model) return
    if (state.selected !== name) compare.reset()
    state.selected = name
    state.tab = 'tensor'
    syncUrl(true)
    if (state.tensorStats?.tensor === name && state.tensorJob === null) return
    tensorJob?.cancel()
    tensorJob = null
    state.tensorJob = null
    state.tensorError = null
    const key = `${model.modelId}\u0000${name}`
    const cached = statsCache.get(key)
    if (cached) {
      state.tensorStats = cached
      return
    }
    state.tensorStats = null
    const info = model.tensors.find((t) => t.name === name)
    if (info && !info.decodable) {
      state.tensorError = { name: 'Unsupported', message: `Stored type ${info.dtype} cannot be decoded by this build, so it has no statistics.` }
      return
    }
    const view = jobView(`Computing statistics of ${name}`, () => job.cancel())
    const job = startJob(client, 'tensorStats', { modelId: model.modelId, tensor: name }, (done, total) => {
      Object.assign(view, { done, total })
    })
    tensorJob = job
    state.tensorJob = view
    job.promise.then(
      (stats) => {
        statsCache.set(key, markRaw(stats))
        // Shown in a task of its own: the views' work (outlier threshold over up to 152k
        // channels, envelopes, heatmap image) must not add to the task that parsed the message.
        if (tensorJob === job) queueChartWork(() => (state.tensorStats = markRaw(stats)))
      },
      (err: unknown) => {
        const e = asApiError(err)
        if (tensorJob === job && !e.cancelled) state.tensorError = e
        if (e.cancelled && view.cancelRequested) state.cancelled = `${view.label}: cancelled`
      },
    ).finally(() => {
      if (tensorJob === job) {
        tensorJob = null
        state.tensorJob = null
      }
    })
  }

  function computeGrid(): void {
    const model = state.model
    if (!model || gridJob) return
    state.gridError = null
    const view = jobView(`Computing statistics of ${model.blocks.length} blocks`, () => job.cancel())
    const job = startJob(client, 'layerGridStats', { modelId: model.modelId }, (done, total) => {
      Object.assign(view, { done, total })
    })
    gridJob = job
    state.gridJob = view
    job.promise.then(
      (grid) => {
        if (gridJob === job) state.grid = markRaw(grid)
      },
      (err: unknown) => {
        const e = asApiError(err)
        if (gridJob === job && !e.cancelled) state.gridError = e
        if (e.cancelled && view.cancelRequested) state.cancelled = `${view.label}: cancelled`
      },
    ).finally(() => {
      if (gridJob === job) {
        gridJob = null
        state.gridJob = null
      }
    })
  }

  /** Selects every linear weight of one block in the layer grid and shows the grid (Importance view's bars). */
  function selectBlock(block: number): void {
    const model = state.model
    const info = model?.blocks.find((b) => b.index === block)
    if (!model || !info) return
    plan.state.selection = model.linearRoles.map((role) => info.linears[role]).filter((t): t is string => t !== undefined)
    showTab('grid')
  }

  function showTab(tab: Tab): void {
    state.tab = tab
    syncUrl(true)
    if (tab === 'grid' && !state.grid && !state.gridJob && !state.gridError) computeGrid()
    if (tab === 'grid' || tab === 'tensor' || tab === 'evaluate' || tab === 'importance') void plan.load()
    if (tab === 'evaluate') void evaluation.load()
  }

  function reportDropWithoutPath(): void {
    state.notice = 'Browsers do not reveal the path of a dropped file. Type the model path in the box above, or pick a recent model.'
  }

  async function init(): Promise<void> {
    client.onConnection?.((c) => (state.connection = c))
    client.onEvent((event) => {
      if (event.type === 'open-model-request') void openModel(event.path)
    })
    void refreshRecent()
    window.addEventListener('popstate', () => void applyUrl(parseUrlState(window.location.hash)))
    try {
      // A reload (or a shared link) names its model: open that one instead of the default.
      const fromUrl = parseUrlState(window.location.hash)
      if (fromUrl.model) {
        await applyUrl(fromUrl)
      } else {
        const start = await client.call('defaultModelPath', {})
        if (start.message) state.notice = start.message
        restoring = true
        try {
          if (start.path) await openModel(start.path)
        } finally {
          restoring = false
        }
        syncUrl(false)
      }
    } catch (err) {
      state.openError = asApiError(err)
    } finally {
      state.ready = true
    }
  }

  return { state, client, evaluation, plan, compare, exporter, importance, init, openModel, selectTensor, selectBlock, computeGrid, showTab, reportDropWithoutPath, refreshRecent, runningJobs, addJobSource, jobView }
}
