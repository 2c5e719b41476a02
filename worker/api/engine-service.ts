/**
 * The engine side of the API contract (worker/api/contract.ts), in Node, shared by both
 * transports: Electron IPC and the browser-mode WebSocket. It holds opened models by id,
 * turns their tensors into the summary the views show, and runs statistics as cancellable
 * jobs on the StatsService's worker threads, so the calling thread never does the heavy
 * work itself. Evaluation and generation live in evaluate-service.ts (inference workers).
 */
import { stat } from 'node:fs/promises'
import { basename, dirname, relative } from 'node:path'
import type {
  ApiEvent,
  ApiFunctions,
  ApiParams,
  ApiResult,
  DefaultModelInfo,
  DtypeShare,
  JobProgressDetail,
  LayerGridCell,
  LinearRole,
  ModelFileInfo,
  ModelSummary,
  RecentModel,
  StatsOptions,
  TensorInfo,
  TensorScalarStats,
  TensorStats,
  OrientedTensorStats,
} from './contract'
import { elementCount, type OpenedModel } from '../formats/contract'
import { ModelFormatError } from '../common/errors'
import { openModel } from '../formats/open-model'
import { classifyTensor, describeModel, LINEAR_ROLES, type LogicalModel } from '../model/logical-model'
import { StatsService } from '../stats/stats-service'
import { orientationPlan, orientStats } from '../stats/orientation'
import { EngineError } from './errors'
import { EvaluateService, MemoryEvalRuns, type EvalRunsBackend, type EvaluateServiceOptions, type InferenceApi, type VariantCatalog } from './evaluate-service'
import { ExportApi } from './export-api'
import { AllocationApi } from './allocation-api'
import { ImportanceApi } from './importance-api'
import { ActKvApi } from './actkv-api'
import { llamaCppPresetNames, llamaCppPresetPlan } from './llama-cpp-preset-api'
import { QuantApi } from './quant-api'
import { modelFingerprint } from '../plan/plan'
import type { SavedPlansBackend } from './saved-plans'

/** The part of StatsService the engine uses (a fake can stand in for tests). */
export interface StatsBackend {
  computeTensorStats(
    modelPath: string,
    tensor: string,
    options?: Partial<StatsOptions>,
    hooks?: { onProgress?(done: number, total: number): void; signal?: AbortSignal },
  ): Promise<TensorStats>
  computeAll(
    modelPath: string,
    tensors: string[],
    options?: Partial<StatsOptions>,
    hooks?: { onProgress?(done: number, total: number): void; signal?: AbortSignal },
  ): Promise<Map<string, TensorStats>>
  close(): Promise<void>
}

/** Where recently opened models are remembered (main/recent-models.ts in the apps). */
export interface RecentModelsBackend {
  list(): Promise<RecentModel[]>
  add(entry: RecentModel): Promise<void>
}

export interface EngineServiceOptions {
  stats?: StatsBackend
  /** Worker threads for a StatsService the engine creates itself. */
  statsThreads?: number
  /** Disk cache for statistics. */
  cacheDir?: string
  recent?: RecentModelsBackend
  /** The model to open at start-up (argument, embedded default, or none). */
  defaultModel?: DefaultModelInfo | (() => Promise<DefaultModelInfo>)
  /** Models kept open at once; the oldest is closed beyond this. */
  maxOpenModels?: number
  /** Where evaluation runs are kept per model (main/runs-store.ts); default: in memory. */
  runs?: EvalRunsBackend
  /** Variants beyond 'base' that evaluation and generation offer. */
  variants?: VariantCatalog
  /** The held-out text file (default resources/eval/heldout.txt). */
  heldoutText?: string
  /** Runtime threads per inference job (default: every core). */
  inferenceThreads?: number
  /** Stand-in for the inference service (tests). */
  inference?: InferenceApi
  /** Where saved plans are kept per model (main/plans-store.ts); default: in memory. */
  plans?: SavedPlansBackend
  /** Plan quant worker threads (default 2). */
  quantThreads?: number
  /** Calibration capture cache folder; undefined: `<cache root>/calibration`, null: memory only. */
  calibrationCacheDir?: string | null
  /** Measured-sensitivity result cache; undefined: `<cache root>/importance`, null: none. */
  importanceCacheDir?: string | null
  /** Per-tensor ΔKLD cache of the allocators; undefined: `<cache root>/sensitivity`, null: none. */
  sensitivityCacheDir?: string | null
}

interface OpenModelEntry {
  id: string
  path: string
  model: OpenedModel
  logical: LogicalModel
  summary: ModelSummary
}

const PROGRESS_INTERVAL_MS = 80

export class EngineService implements ApiFunctions {
  private readonly models = new Map<string, OpenModelEntry>()
  private readonly jobs = new Map<string, AbortController>()
  private readonly listeners = new Set<(event: ApiEvent) => void>()
  private readonly stats: StatsBackend
  private readonly evaluation: EvaluateService
  private readonly quantization: QuantApi
  private readonly exports: ExportApi
  private readonly importance: ImportanceApi
  private readonly allocation: AllocationApi
  private readonly actkv: ActKvApi
  private nextModel = 1

  constructor(private readonly options: EngineServiceOptions = {}) {
    this.stats = options.stats ?? new StatsService({ threads: options.statsThreads, cacheDir: options.cacheDir })
    const evaluationOptions: EvaluateServiceOptions = {
      // One runs store: the evaluation of an export is kept with the source model's runs.
      runs: options.runs ?? new MemoryEvalRuns(),
      variants: options.variants,
      heldoutText: options.heldoutText,
      threads: options.inferenceThreads,
      inference: options.inference,
      calibrationCacheDir: options.calibrationCacheDir,
    }
    this.evaluation = new EvaluateService(evaluationOptions, (jobId, work) => this.runJob(jobId, work))
    this.exports = new ExportApi({ evaluation: evaluationOptions }, (jobId, work) => this.runJob(jobId, work))
    this.importance = new ImportanceApi(
      { heldoutText: () => this.evaluation.heldoutText, threads: options.inferenceThreads, cacheDir: options.importanceCacheDir },
      (jobId, work) => this.runJob(jobId, work),
    )
    this.actkv = new ActKvApi({ threads: options.inferenceThreads }, (jobId, work) => this.runJob(jobId, work))
    this.allocation = new AllocationApi(
      { heldoutText: () => this.evaluation.heldoutText, threads: options.inferenceThreads, cacheDir: options.sensitivityCacheDir },
      (jobId, work) => this.runJob(jobId, work),
    )
    this.quantization = new QuantApi(
      { plans: options.plans, threads: options.quantThreads, calibrationCacheDir: options.calibrationCacheDir },
      (jobId, work) => this.runJob(jobId, work),
    )
  }

  onEvent(listener: (event: ApiEvent) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  emit(event: ApiEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event)
      } catch {
        /* a broken listener (closed socket) must not stop the others */
      }
    }
  }

  async openModel({ path }: ApiParams<'openModel'>): Promise<ApiResult<'openModel'>> {
    const model = await openModel(path)
    let summary: ModelSummary
    let logical: LogicalModel
    try {
      logical = describeModel(model)
      const id = `m${this.nextModel++}`
      summary = await summarizeModel(id, path, model, logical)
    } catch (err) {
      await model.close().catch(() => {})
      throw err
    }
    this.models.set(summary.modelId, { id: summary.modelId, path, model, logical, summary })
    await this.closeBeyondLimit()
    await this.options.recent
      ?.add({ path, name: summary.name, format: summary.format, openedAt: Date.now() })
      .catch(() => {
        /* remembering is best effort; opening succeeded */
      })
    return summary
  }

  async closeModel({ modelId }: ApiParams<'closeModel'>): Promise<ApiResult<'closeModel'>> {
    const entry = this.models.get(modelId)
    if (!entry) return { closed: false }
    this.models.delete(modelId)
    await entry.model.close()
    return { closed: true }
  }

  async listRecent(): Promise<ApiResult<'listRecent'>> {
    return (await this.options.recent?.list()) ?? []
  }

  async defaultModelPath(): Promise<ApiResult<'defaultModelPath'>> {
    const d = this.options.defaultModel
    if (!d) return { path: null, source: 'none', message: 'No default model configured.' }
    return typeof d === 'function' ? d() : d
  }

  async tensorStats({ modelId, tensor, options, jobId }: ApiParams<'tensorStats'>): Promise<ApiResult<'tensorStats'>> {
    const entry = this.model(modelId)
    const info = entry.summary.tensors.find((t) => t.name === tensor)
    if (!info) throw new EngineError('NotFound', `model ${entry.summary.name} has no tensor '${tensor}'`)
    if (!info.decodable) {
      throw new ModelFormatError(info.file, tensor, `stored type ${info.dtype} cannot be decoded by this build, so it has no statistics`)
    }
    const stored = await this.runJob(jobId, (hooks) => this.stats.computeTensorStats(entry.path, tensor, options, hooks))
    return this.oriented(entry, tensor, stored)
  }

  /** Statistics in HF orientation ([out, in], HF row order), whatever the format stored. */
  private oriented(entry: OpenModelEntry, tensor: string, stats: TensorStats): OrientedTensorStats {
    const role = entry.summary.tensors.find((t) => t.name === tensor)?.role ?? null
    return orientStats(stats, orientationPlan(entry.model, tensor, role))
  }

  async layerGridStats({ modelId, jobId }: ApiParams<'layerGridStats'>): Promise<ApiResult<'layerGridStats'>> {
    const entry = this.model(modelId)
    const decodable = new Map(entry.summary.tensors.map((t) => [t.name, t]))
    const wanted: { block: number; role: LinearRole; tensor: string }[] = []
    const skipped: { tensor: string; reason: string }[] = []
    for (const block of entry.logical.blocks) {
      for (const role of LINEAR_ROLES) {
        const tensor = block.linears[role]
        if (!tensor) continue
        const info = decodable.get(tensor)
        if (info && !info.decodable) skipped.push({ tensor, reason: `stored type ${info.dtype} cannot be decoded` })
        else wanted.push({ block: block.index, role, tensor })
      }
    }
    const all = await this.runJob(jobId, (hooks) =>
      this.stats.computeAll(
        entry.path,
        wanted.map((w) => w.tensor),
        undefined,
        hooks,
      ),
    )
    const cells: LayerGridCell[] = []
    for (const w of wanted) {
      const s = all.get(w.tensor)
      if (s) cells.push({ ...w, stats: scalarStats(this.oriented(entry, w.tensor, s)) })
      else skipped.push({ tensor: w.tensor, reason: 'no statistics returned' })
    }
    return {
      modelId,
      roles: entry.summary.linearRoles,
      blocks: entry.logical.blocks.map((b) => b.index),
      cells,
      skipped,
    }
  }

  // Evaluation and generation: evaluate-service.ts, on inference worker threads.
  async evaluate(params: ApiParams<'evaluate'>): Promise<ApiResult<'evaluate'>> {
    return this.evaluation.evaluate(this.model(params.modelId), params)
  }
  async generate(params: ApiParams<'generate'>): Promise<ApiResult<'generate'>> {
    return this.evaluation.generate(this.model(params.modelId), params)
  }
  async listBackends(): Promise<ApiResult<'listBackends'>> {
    return this.evaluation.listBackends()
  }
  async listRuns({ modelId }: ApiParams<'listRuns'>): Promise<ApiResult<'listRuns'>> {
    return this.evaluation.listRuns(this.model(modelId))
  }
  async deleteRun({ modelId, runId }: ApiParams<'deleteRun'>): Promise<ApiResult<'deleteRun'>> {
    return { deleted: await this.evaluation.deleteRun(this.model(modelId), runId) }
  }
  async listVariants({ modelId }: ApiParams<'listVariants'>): Promise<ApiResult<'listVariants'>> {
    return this.evaluation.listVariants(this.model(modelId))
  }

  // Quantization: quant-api.ts, on the plan quant worker threads.
  async listQuantMethods(): Promise<ApiResult<'listQuantMethods'>> {
    return this.quantization.listQuantMethods()
  }
  async planSize({ modelId, plan }: ApiParams<'planSize'>): Promise<ApiResult<'planSize'>> {
    return this.quantization.planSize(this.model(modelId), plan)
  }
  async quantizePreview(params: ApiParams<'quantizePreview'>): Promise<ApiResult<'quantizePreview'>> {
    return this.quantization.quantizePreview(this.model(params.modelId), params)
  }
  async listPlans({ modelId }: ApiParams<'listPlans'>): Promise<ApiResult<'listPlans'>> {
    return this.quantization.listPlans(this.model(modelId))
  }
  async savePlan(params: ApiParams<'savePlan'>): Promise<ApiResult<'savePlan'>> {
    return this.quantization.savePlan(this.model(params.modelId), params)
  }
  async deletePlan({ modelId, planId }: ApiParams<'deletePlan'>): Promise<ApiResult<'deletePlan'>> {
    return { deleted: await this.quantization.deletePlan(this.model(modelId), planId) }
  }
  async llamaCppPresets(): Promise<ApiResult<'llamaCppPresets'>> {
    return llamaCppPresetNames()
  }
  async llamaCppPresetPlan({ modelId, preset }: ApiParams<'llamaCppPresetPlan'>): Promise<ApiResult<'llamaCppPresetPlan'>> {
    return llamaCppPresetPlan(this.model(modelId), preset)
  }

  // Export: export-api.ts, on an export worker thread, then the evaluation's inference worker.
  async exportFormats({ modelId }: ApiParams<'exportFormats'>): Promise<ApiResult<'exportFormats'>> {
    return this.exports.formats(this.model(modelId))
  }
  async exportSupport(params: ApiParams<'exportSupport'>): Promise<ApiResult<'exportSupport'>> {
    return this.exports.support(this.model(params.modelId), params)
  }
  async exportModel(params: ApiParams<'exportModel'>): Promise<ApiResult<'exportModel'>> {
    return this.exports.exportModel(this.model(params.modelId), params)
  }

  // Layer importance: importance-api.ts, on an importance worker thread.
  async layerImportance(params: ApiParams<'layerImportance'>): Promise<ApiResult<'layerImportance'>> {
    return this.importance.layerImportance(this.model(params.modelId), params)
  }

  // Activation and KV-cache quantization: actkv-api.ts (views) and evaluate-service.ts (sweep), on worker threads.
  async activationView(params: ApiParams<'activationView'>): Promise<ApiResult<'activationView'>> {
    return this.actkv.activationView(this.model(params.modelId), params)
  }
  async kvView(params: ApiParams<'kvView'>): Promise<ApiResult<'kvView'>> {
    return this.actkv.kvView(this.model(params.modelId), params)
  }
  async kvSweep(params: ApiParams<'kvSweep'>): Promise<ApiResult<'kvSweep'>> {
    return this.evaluation.kvSweep(this.model(params.modelId), params)
  }

  // Allocation: allocation-api.ts, measurements and evaluations on an allocation worker thread.
  async allocatePlan(params: ApiParams<'allocatePlan'>): Promise<ApiResult<'allocatePlan'>> {
    return this.allocation.allocatePlan(this.model(params.modelId), params)
  }
  async paretoSweep(params: ApiParams<'paretoSweep'>): Promise<ApiResult<'paretoSweep'>> {
    return this.allocation.paretoSweep(this.model(params.modelId), params)
  }

  async cancelJob({ jobId }: ApiParams<'cancelJob'>): Promise<ApiResult<'cancelJob'>> {
    const controller = this.jobs.get(jobId)
    if (!controller) return { cancelled: false }
    controller.abort()
    return { cancelled: true }
  }

  /** Cancels running jobs, closes every model and the stats workers. */
  async close(): Promise<void> {
    for (const controller of this.jobs.values()) controller.abort()
    this.jobs.clear()
    for (const entry of this.models.values()) await entry.model.close().catch(() => {})
    this.models.clear()
    await this.stats.close()
    await this.quantization.close()
  }

  private model(modelId: string): OpenModelEntry {
    const entry = this.models.get(modelId)
    if (!entry) throw new EngineError('NotFound', `no open model with id '${modelId}' (it was closed; open it again)`)
    return entry
  }

  private async closeBeyondLimit(): Promise<void> {
    const limit = this.options.maxOpenModels ?? 4
    while (this.models.size > limit) {
      const oldest = this.models.keys().next().value as string
      await this.closeModel({ modelId: oldest })
    }
  }

  /** Runs one job: progress events (throttled), cancel by jobId, a finished event. */
  private async runJob<T>(
    jobId: string,
    work: (hooks: { onProgress(done: number, total: number, detail?: JobProgressDetail): void; signal: AbortSignal }) => Promise<T>,
  ): Promise<T> {
    if (this.jobs.has(jobId)) throw new EngineError('BadRequest', `job '${jobId}' is already running`)
    const controller = new AbortController()
    this.jobs.set(jobId, controller)
    let last = 0
    let lastStage: string | undefined
    const onProgress = (done: number, total: number, detail?: JobProgressDetail): void => {
      const now = Date.now()
      // Throttled, except a stage's last step and the first step of a new stage.
      if (done < total && detail?.stage === lastStage && now - last < PROGRESS_INTERVAL_MS) return
      last = now
      lastStage = detail?.stage
      this.emit(detail ? { type: 'job-progress', jobId, done, total, detail } : { type: 'job-progress', jobId, done, total })
    }
    try {
      const result = await work({ onProgress, signal: controller.signal })
      if (controller.signal.aborted) throw cancelledError()
      this.emit({ type: 'job-finished', jobId, outcome: 'done' })
      return result
    } catch (err) {
      const cancelled = controller.signal.aborted
      this.emit({ type: 'job-finished', jobId, outcome: cancelled ? 'cancelled' : 'failed' })
      throw cancelled ? cancelledError() : err
    } finally {
      this.jobs.delete(jobId)
    }
  }
}

function cancelledError(): Error {
  const err = new Error('cancelled')
  err.name = 'AbortError'
  return err
}

export function scalarStats(s: TensorStats): TensorScalarStats {
  const { rows, cols, count, min, max, mean, std, absmax, kurtosis, nan, inf, zeros } = s
  return { rows, cols, count, min, max, mean, std, absmax, kurtosis, nan, inf, zeros }
}

/** Builds the view-facing summary of an opened model (no tensor data is read). */
export async function summarizeModel(
  modelId: string,
  path: string,
  model: OpenedModel,
  logical: LogicalModel,
): Promise<ModelSummary> {
  const isFolder = (await stat(path).catch(() => null))?.isDirectory() ?? false
  const root = isFolder ? path : dirname(path)
  const place = placeTensors(logical)

  const tensors: TensorInfo[] = []
  const byDtype = new Map<string, DtypeShare>()
  const perFile = new Map<string, number>()
  let params = 0
  let bytes = 0
  for (const t of model.tensors) {
    const n = elementCount(t.shape)
    const where = place.get(t.name)
    const cls = where ? null : classifyTensor(t.alias ?? t.name)
    tensors.push({
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      params: n,
      bytes: t.byteLength,
      file: relative(root, t.file) || basename(t.file),
      layer: where?.layer ?? cls?.layer ?? null,
      role: where?.role ?? cls?.role ?? null,
      group: where?.group ?? 'unassigned',
      decodable: t.decodable,
    })
    // Derived (virtual) entries re-describe stored bytes: they do not add to the totals.
    if (t.derivedFrom) continue
    params += n
    bytes += t.byteLength
    const share = byDtype.get(t.dtype) ?? { dtype: t.dtype, tensors: 0, params: 0, bytes: 0 }
    share.tensors++
    share.params += n
    share.bytes += t.byteLength
    byDtype.set(t.dtype, share)
    perFile.set(t.file, (perFile.get(t.file) ?? 0) + 1)
  }

  const files: ModelFileInfo[] = []
  for (const file of model.files) {
    const size = (await stat(file).catch(() => null))?.size ?? 0
    files.push({ path: file, name: relative(root, file) || basename(file), bytes: size, tensors: perFile.get(file) ?? 0 })
  }

  const present = new Set<LinearRole>()
  for (const b of logical.blocks) for (const r of Object.keys(b.linears)) present.add(r as LinearRole)

  return {
    modelId,
    path,
    name: basename(path),
    format: model.format,
    architecture: model.architecture ?? logical.architecture,
    config: model.config,
    params,
    bytes,
    bytesByDtype: [...byDtype.values()].sort((a, b) => b.bytes - a.bytes),
    files,
    tensors,
    linearRoles: LINEAR_ROLES.filter((r) => present.has(r)),
    blocks: logical.blocks.map((b) => ({ index: b.index, linears: { ...b.linears }, norms: { ...b.norms }, others: [...b.others] })),
    embeddings: logical.embeddings,
    lmHead: logical.lmHead,
    tiedEmbeddings: logical.tiedEmbeddings,
    finalNorm: logical.finalNorm,
    unassigned: logical.unassigned,
    tokenizerPath: model.tokenizerPath,
    fingerprint: modelFingerprint(model),
    metadata: displayMetadata(model.metadata),
  }
}

function placeTensors(logical: LogicalModel): Map<string, { layer: number | null; role: string | null; group: TensorInfo['group'] }> {
  const place = new Map<string, { layer: number | null; role: string | null; group: TensorInfo['group'] }>()
  for (const b of logical.blocks) {
    for (const [role, name] of Object.entries(b.linears)) place.set(name, { layer: b.index, role, group: 'block' })
    for (const [role, name] of Object.entries(b.norms)) place.set(name, { layer: b.index, role, group: 'block' })
    for (const name of b.others) place.set(name, { layer: b.index, role: null, group: 'block' })
  }
  if (logical.embeddings) place.set(logical.embeddings, { layer: null, role: 'embed', group: 'embeddings' })
  if (logical.lmHead) place.set(logical.lmHead, { layer: null, role: 'lm_head', group: 'lm_head' })
  if (logical.finalNorm) place.set(logical.finalNorm, { layer: null, role: 'final_norm', group: 'final_norm' })
  return place
}

/** Format metadata for display: at most 40 entries, long values and arrays shortened. */
function displayMetadata(metadata: Record<string, unknown>): { key: string; value: string }[] {
  const out: { key: string; value: string }[] = []
  for (const [key, value] of Object.entries(metadata)) {
    if (out.length >= 40) break
    let text: string
    if (Array.isArray(value) || ArrayBuffer.isView(value)) text = `[${(value as ArrayLike<unknown>).length} items]`
    else if (typeof value === 'bigint') text = value.toString()
    else if (typeof value === 'object' && value !== null) text = safeJson(value)
    else text = String(value)
    out.push({ key, value: text.length > 160 ? `${text.slice(0, 157)}…` : text })
  }
  return out
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))
  } catch {
    return String(value)
  }
}
