/**
 * The activation and KV views of the API (contract.ts activationView, kvView): parameters with
 * their defaults, the model's limits checked before any work, then the job on the
 * activation/KV worker thread (actkv-thread.ts) with its progress mapped to job events.
 */
import type { ApiParams, ApiResult, JobProgressDetail } from './contract'
import { EngineError } from './errors'
import type { ActKvProgress } from './actkv-protocol'
import { runActKvInWorker } from './actkv-thread'
import type { JobRunner, ModelHandle } from './evaluate-service'

export interface ActKvApiOptions {
  /** Runtime threads per job (default: every core). */
  threads?: number
}

const detail = (p: ActKvProgress): JobProgressDetail => ({ stage: p.stage })

export class ActKvApi {
  constructor(
    private readonly options: ActKvApiOptions,
    private readonly runJob: JobRunner,
  ) {}

  async activationView(model: ModelHandle, params: ApiParams<'activationView'>): Promise<ApiResult<'activationView'>> {
    const cfg = model.summary.config
    checkLayer(model, params.layer)
    const outliers = params.outliers ?? 4
    const smallest = cfg ? Math.min(cfg.hiddenSize, cfg.numHeads * cfg.headDim) : null
    if (smallest !== null && 2 * outliers >= smallest) {
      throw new EngineError('BadRequest', `activationView: 'outliers' ${outliers} per side leaves nothing of a ${smallest}-value input to quantize`)
    }
    return this.runJob(params.jobId, ({ onProgress, signal }) =>
      runActKvInWorker(
        {
          kind: 'activationView',
          modelPath: model.path,
          layer: params.layer,
          bits: params.bits ?? 4,
          outliers,
          norm: params.norm ?? 'absmax-non-outlier',
          bins: params.bins ?? 96,
          maxWindows: params.maxWindows ?? 32,
          topChannels: params.topChannels ?? 12,
          backend: params.backend,
          threads: this.options.threads,
        },
        { signal, onProgress: (p) => onProgress(p.done, p.total, detail(p)) },
      ),
    )
  }

  async kvView(model: ModelHandle, params: ApiParams<'kvView'>): Promise<ApiResult<'kvView'>> {
    checkLayer(model, params.layer)
    const heads = model.summary.config?.numKvHeads
    if (heads !== undefined && params.kvHead >= heads) {
      throw new EngineError('BadRequest', `kvView: 'kvHead' ${params.kvHead} does not exist (the model has ${heads} kv heads, 0–${heads - 1})`)
    }
    return this.runJob(params.jobId, ({ onProgress, signal }) =>
      runActKvInWorker(
        {
          kind: 'kvView',
          modelPath: model.path,
          layer: params.layer,
          kvHead: params.kvHead,
          tokens: params.tokens ?? 128,
          calibrationWindows: params.calibrationWindows ?? 32,
          backend: params.backend,
          threads: this.options.threads,
        },
        { signal, onProgress: (p) => onProgress(p.done, p.total, detail(p)) },
      ),
    )
  }
}

function checkLayer(model: ModelHandle, layer: number): void {
  const layers = model.summary.config?.numLayers ?? model.summary.blocks.length
  if (layer >= layers) throw new EngineError('BadRequest', `'layer' ${layer} does not exist (${model.summary.name} has ${layers} layers, 0–${layers - 1})`)
}
