/**
 * The quantization half of the engine API (worker/api/contract.ts): the method library, plan
 * sizes, saved plans, and tensor previews run as jobs on the plan quant workers
 * (plan/quant-service.ts), so the engine thread never quantizes anything itself.
 */
import { randomUUID } from 'node:crypto'
import { resolve } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { PLAN_FORMAT, PLAN_VERSION, type Plan, type ResolvedEntry } from '../plan/plan'
import { describeQuantMethods } from '../plan/method-info'
import type { QuantizeTensorResult } from '../plan/quant-protocol'
import { QuantService } from '../plan/quant-service'
import { planSize } from '../plan/size'
import type { LayerCalibration } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import { formatQuantSpec } from '../quant/spec'
import type { ApiParams, PlanSizeInfo, QuantErrorInfo, QuantMethodInfo, QuantPreview, QuantizePreviewResult, SavedPlan } from './contract'
import { EngineError } from './errors'
import type { JobRunner, ModelHandle } from './evaluate-service'
import { resolveForApi } from './plan-variants'
import { MemorySavedPlans, type SavedPlansBackend } from './saved-plans'

export interface QuantApiOptions {
  /** Stand-in or shared service; default: one of `threads` workers, made on first use. */
  quant?: QuantService
  /** Quant worker threads (default 2). */
  threads?: number
  plans?: SavedPlansBackend
  /** Calibration capture cache folder (plan/calibration-cache.ts); undefined: the default, null: memory only. */
  calibrationCacheDir?: string | null
}

/** The model a call is about, opened. */
export interface OpenedModelHandle extends ModelHandle {
  model: OpenedModel
}

const DEFAULT_BINS = 128
const DEFAULT_HEATMAP = 128

export class QuantApi {
  private quant: QuantService | null
  private readonly plans: SavedPlansBackend

  constructor(
    private readonly options: QuantApiOptions,
    private readonly runJob: JobRunner,
  ) {
    this.quant = options.quant ?? null
    this.plans = options.plans ?? new MemorySavedPlans()
  }

  private service(): QuantService {
    this.quant ??= new QuantService({ threads: this.options.threads })
    return this.quant
  }

  listQuantMethods(): QuantMethodInfo[] {
    return describeQuantMethods()
  }

  planSize(handle: OpenedModelHandle, plan: Plan): PlanSizeInfo {
    return planSize(handle.model, resolveForApi(handle.model, plan, 'plan'))
  }

  async quantizePreview(handle: OpenedModelHandle, params: ApiParams<'quantizePreview'>): Promise<QuantizePreviewResult> {
    const { model } = handle
    const tensor = model.tensors.find((t) => t.name === params.tensor)
    if (!tensor) throw new EngineError('NotFound', `model ${handle.summary.name} has no tensor '${params.tensor}'`)
    // Every method and its params checked against the tensor before any work.
    const entries: ResolvedEntry[] = params.methods.map((m, i) => {
      const plan: Plan = {
        format: PLAN_FORMAT,
        version: PLAN_VERSION,
        model: { name: handle.summary.name, fingerprint: '-' },
        tensors: { [params.tensor]: { method: m.methodId, params: m.params ?? {} } },
      }
      const [entry] = resolveForApi(model, plan, `quantizePreview methods[${i}]`, true)
      if (!entry) throw new EngineError('BadRequest', `quantizePreview: methods[${i}] quantizes nothing`)
      return entry
    })
    const { rows, cols } = entries[0]!
    const row = params.row ?? 0
    const col = params.col ?? 0
    if (row >= rows) throw new EngineError('BadRequest', `quantizePreview: 'row' ${row} is outside ${params.tensor}'s ${rows} output channels`)
    if (col >= cols) throw new EngineError('BadRequest', `quantizePreview: 'col' ${col} is outside ${params.tensor}'s ${cols} input channels`)
    const modelPath = resolve(handle.path)
    const quant = this.service()

    return this.runJob(params.jobId, async ({ onProgress, signal }) => {
      let calibration: (LayerCalibration | null)[] = entries.map(() => null)
      let calibrationSeconds = 0
      const needing = entries.filter((e) => needsCalibration(e))
      if (needing.length > 0) {
        const captured = await quant.captureCalibration(
          modelPath,
          entries.map((e) => ({ tensor: e.tensor.name, methodId: e.methodId, params: e.params })),
          { maxWindows: params.calibrationWindows, ...(this.options.calibrationCacheDir !== undefined ? { cacheDir: this.options.calibrationCacheDir } : {}) },
          { signal, onProgress: (done, total) => onProgress(done, total, { stage: 'calibrating' }) },
        )
        calibration = captured.calibration
        calibrationSeconds = captured.seconds
      }
      // Progress: the methods' fractions summed, in thousandths.
      const fractions = entries.map(() => 0)
      const report = () => onProgress(Math.round(fractions.reduce((a, b) => a + b, 0) * 1000), entries.length * 1000, { stage: 'quantizing' })
      const results = await Promise.all(
        entries.map((e, i) =>
          quant.quantizeTensor(
            {
              modelPath,
              tensor: e.tensor.name,
              methodId: e.methodId,
              params: e.params,
              ...(calibration[i] ? { calibration: calibration[i]! } : {}),
              preview: { row, col, bins: params.bins ?? DEFAULT_BINS, heatmapSize: params.heatmapSize ?? DEFAULT_HEATMAP },
            },
            {
              signal,
              onProgress: (done, total) => {
                fractions[i] = total > 0 ? done / total : 1
                report()
              },
            },
          ),
        ),
      )
      return { tensor: params.tensor, rows, cols, methods: results.map(previewOf), calibrationSeconds }
    })
  }

  listPlans(handle: ModelHandle): Promise<SavedPlan[]> {
    return this.plans.list(resolve(handle.path))
  }

  async savePlan(handle: OpenedModelHandle, params: ApiParams<'savePlan'>): Promise<SavedPlan> {
    // A plan that does not fit the model is refused now, not when it is evaluated.
    resolveForApi(handle.model, params.plan, `plan '${params.name}'`)
    const saved: SavedPlan = { id: params.id ?? randomUUID(), name: params.name, modelPath: resolve(handle.path), savedAt: Date.now(), plan: params.plan }
    await this.plans.save(saved)
    return saved
  }

  deletePlan(handle: ModelHandle, planId: string): Promise<boolean> {
    return this.plans.remove(resolve(handle.path), planId)
  }

  async close(): Promise<void> {
    // Only a service made here is closed; a shared one belongs to its owner.
    if (this.quant && this.quant !== this.options.quant) await this.quant.close()
    this.quant = null
  }
}

function needsCalibration(e: ResolvedEntry): boolean {
  return QUANT_METHODS.get(e.methodId)!.needs(e.params) !== 'none'
}

function previewOf(r: QuantizeTensorResult): QuantPreview {
  const m = r.metrics
  const metrics: QuantErrorInfo = {
    mse: m.mse,
    sqnrDb: Number.isFinite(m.sqnrDb) ? m.sqnrDb : null,
    maxAbsError: m.maxAbsError,
    outputErrorPerToken: m.outputErrorPerToken,
    outputMse: m.outputMse,
  }
  const p = r.preview!
  return {
    methodId: r.methodId,
    params: r.params as QuantPreview['params'],
    spec: formatQuantSpec(r.methodId, r.params),
    bytes: r.bytes,
    storage: r.storage,
    bitsPerWeight: (8 * r.bytes) / (r.rows * r.cols),
    metrics,
    seconds: r.seconds,
    levels: p.levels,
    groupWeights: p.groupWeights,
    errorHistogram: p.errorHistogram,
    errorHeatmap: p.errorHeatmap,
  }
}
