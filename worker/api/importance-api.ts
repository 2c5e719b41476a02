/**
 * The layer-importance half of the engine API (worker/api/contract.ts): checks a request
 * against the open model before any work (method/spec combinations, the spec itself, the
 * text), runs it on an importance worker thread (importance-thread.ts) as a cancellable job,
 * and turns the worker's numbers into the series the Importance view draws, with Spearman's ρ
 * between every pair of methods.
 */
import { stat } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import { DEFAULT_LSAQ_K } from '../importance/layer-importance'
import { DEFAULT_LOCAL_SPEC } from '../importance/local-proxy'
import { spearman } from '../importance/rank-math'
import { DEFAULT_CTX } from '../inference/perplexity'
import { planFromSpec } from '../plan/plan'
import type { ImportanceMethodId, ImportanceSeries, LayerImportanceParams, LayerImportanceReport } from './contract'
import { EngineError } from './errors'
import type { JobRunner } from './evaluate-service'
import { runImportanceInWorker } from './importance-thread'
import type { ImportanceMethodId as WorkerMethodId, ImportanceWorkerResult } from './importance-protocol'
import type { OpenedModelHandle } from './quant-api'

// The contract's method ids (from the schema) and the worker's must stay the same list.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
const methodIdsMatch: Same<ImportanceMethodId, WorkerMethodId> = true
void methodIdsMatch

export interface ImportanceApiOptions {
  /** The shipped held-out text (the Evaluate tab's). */
  heldoutText: () => string
  /** Runtime threads per job (default: every core). */
  threads?: number
  /** Sensitivity result cache; undefined: `<cache root>/importance`, null: none. */
  cacheDir?: string | null
  /** Stand-in for the worker thread (tests). */
  run?: typeof runImportanceInWorker
}

const LABELS: Record<ImportanceMethodId, { label: string; unit: string }> = {
  lsaq: { label: 'LSAQ', unit: '1 − Jaccard of the logit-lens top-k' },
  cosine: { label: 'cosine', unit: '1 − cos(block input, output)' },
  sensitivity: { label: 'sensitivity', unit: 'ΔKLD (nats/token) with the block quantized' },
  local: { label: 'local', unit: 'relative error of the block’s linear outputs on calibration activations' },
}

export class ImportanceApi {
  constructor(
    private readonly options: ImportanceApiOptions,
    private readonly runJob: JobRunner,
  ) {}

  async layerImportance(handle: OpenedModelHandle, params: LayerImportanceParams): Promise<LayerImportanceReport> {
    const what = `layerImportance of ${handle.summary.name}`
    const methods = params.methods
    const sensitivity = methods.includes('sensitivity')
    if (sensitivity && !params.quant) throw new EngineError('BadRequest', `${what}: measured sensitivity needs 'quant', the method spec each block is quantized with (e.g. rtn:bits=3,group=128)`)
    const local = methods.includes('local')
    if (!sensitivity && !local && params.quant !== undefined) throw new EngineError('BadRequest', `${what}: 'quant' goes with the 'sensitivity' and 'local' methods only`)
    if (!methods.includes('lsaq') && (params.k !== undefined || params.finalNorm !== undefined)) throw new EngineError('BadRequest', `${what}: 'k' and 'finalNorm' go with the 'lsaq' method only`)
    const vocab = handle.summary.config?.vocabSize ?? null
    const k = params.k ?? DEFAULT_LSAQ_K
    if (methods.includes('lsaq') && vocab !== null && k > vocab) throw new EngineError('BadRequest', `${what}: k = ${k} exceeds the vocabulary (${vocab} tokens)`)
    // An unknown method or bad parameter fails here, naming the spec, before a thread starts.
    if (params.quant) planFromSpec(handle.model, params.quant)
    const textFile = params.text.kind === 'file' ? resolve(params.text.path) : this.options.heldoutText()
    const info = await stat(textFile).catch(() => null)
    if (!info?.isFile()) throw new EngineError('NotFound', `${what}: the text file ${textFile} does not exist or is not a file`)

    const run = this.options.run ?? runImportanceInWorker
    const result = await this.runJob(params.jobId, ({ onProgress, signal }) =>
      run(
        {
          modelPath: handle.path,
          textFile,
          methods: [...methods],
          k,
          finalNorm: params.finalNorm ?? true,
          ctx: params.ctx ?? DEFAULT_CTX,
          maxWindows: params.maxWindows,
          quant: params.quant ?? (local ? DEFAULT_LOCAL_SPEC : undefined),
          backend: params.backend,
          threads: this.options.threads,
          cacheDir: this.options.cacheDir,
        },
        // The local proxy's per-tensor stage is 'measuring' with a label (the detail's stages are shared by every job).
        { signal, onProgress: (p) => onProgress(p.done, p.total, p.stage === 'local' ? { stage: 'measuring', label: 'local' } : { stage: p.stage }) },
      ),
    )
    return importanceReport(result, methods, params.text.kind === 'heldout' ? 'held-out text' : basename(textFile))
  }
}

/** The worker's numbers as the view's series, in the order asked for, with ρ for every pair. */
export function importanceReport(r: ImportanceWorkerResult, methods: readonly ImportanceMethodId[], textLabel: string): LayerImportanceReport {
  const values = (m: ImportanceMethodId): (number | null)[] => (m === 'sensitivity' ? r.sensitivity!.deltaKld : m === 'local' ? r.local!.values : m === 'lsaq' ? r.lsaq! : r.cosine!)
  const series: ImportanceSeries[] = methods.map((m) => ({ method: m, ...LABELS[m], values: values(m) }))
  const pairs: LayerImportanceReport['spearman'] = []
  for (let i = 0; i < series.length; i++) {
    for (let j = i + 1; j < series.length; j++) {
      const a: number[] = []
      const b: number[] = []
      series[i]!.values.forEach((x, l) => {
        const y = series[j]!.values[l]
        if (x !== null && y !== null && y !== undefined) {
          a.push(x)
          b.push(y)
        }
      })
      pairs.push({ a: series[i]!.method, b: series[j]!.method, rho: spearman(a, b), n: a.length })
    }
  }
  return {
    layers: r.layers,
    series,
    spearman: pairs,
    k: r.k,
    finalNorm: r.finalNorm,
    sensitivity: r.sensitivity ? { spec: r.sensitivity.spec, basePpl: r.sensitivity.basePpl, deltaPpl: r.sensitivity.deltaPpl, cached: r.sensitivity.cached } : null,
    local: r.local ? { spec: r.local.spec, calibrationTokens: r.local.tokens, cached: r.local.cached } : null,
    textLabel,
    ctx: r.ctx,
    windows: r.windows,
    tokens: r.tokens,
    backend: r.backend,
    seconds: r.seconds,
  }
}
