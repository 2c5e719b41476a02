/**
 * KLLM's per-layer-input activation codebooks, fitted on calibration activations of the
 * full-precision model (resources/eval/calibration.txt by default; never the evaluated text):
 * one streaming fitter (quant/activations/codebook-fitter.ts) per decoder linear input, fed one
 * batch of windows at a time from a capture graph that outputs the raw inputs, so no more than
 * one batch of activations is ever held. The codebooks feed the evaluation graph's k-means
 * activation fake-quant (inference/act-quant.ts).
 */
import type { OpenedModel } from '../formats/contract'
import type { CaptureSite } from '../inference/capture-points'
import { planWindows, type EvalHooks } from '../inference/perplexity'
import type { BackendKind } from '../inference/ort-backend'
import { DecoderSession, windowsPerRun } from '../inference/session'
import type { WeightOverrides } from '../inference/weights'
import { ActivationCodebookFitter } from '../quant/activations/codebook-fitter'
import type { KMeansActParams } from '../quant/activations/spec'
import type { ActGraphOptions } from '../inference/act-quant'
import { openTokenizer, tokensOf, type TextSource } from '../inference/text-source'
import { DEFAULT_CALIBRATION_TEXT } from './calibration'
import { cachedStats, statsKey, type StatsCacheDir } from '../inference/calibration-stats-cache'

const LINEAR_INPUTS: CaptureSite[] = ['attn_in', 'o_in', 'mlp_in', 'down_in']
/** Windows of 256 calibration tokens: 8192 tokens × channels values per input is plenty for 2^b 1-D centroids. */
export const DEFAULT_ACT_CALIBRATION_WINDOWS = 32

export interface ActCodebookOptions {
  ctx?: number
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  overrides?: WeightOverrides
  /**
   * Disk cache of the codebooks (inference/calibration-stats-cache.ts): undefined =
   * `<cache root>/act-codebooks`, null = fit every time. With overrides, cached only under a `variantKey`.
   */
  cacheDir?: StatsCacheDir
  variantKey?: string
}

const CACHE_KIND = 'act-codebooks'
const CACHE_VERSION = 1

/**
 * Codebooks of every linear input, from the disk cache when the same model files, calibration
 * tokens, windows, backend and k-means parameters were fitted before (`cached` true).
 */
export async function fitActivationCodebooks(
  model: OpenedModel,
  ids: readonly number[],
  params: KMeansActParams,
  options: ActCodebookOptions = {},
  hooks: EvalHooks = {},
): Promise<{ codebooks: Record<string, Float32Array>; tokens: number; cached: boolean }> {
  const ctx = options.ctx ?? 256
  const maxWindows = options.maxWindows ?? DEFAULT_ACT_CALIBRATION_WINDOWS
  const dir = options.overrides?.size && !options.variantKey ? null : options.cacheDir
  const { entry, cached } = await cachedStats(
    CACHE_KIND,
    CACHE_VERSION,
    dir,
    () => statsKey(model, { ids, ctx, maxWindows, backend: options.backend ?? 'wasm', spec: params, variantKey: options.variantKey }),
    async () => {
      const fitted = await fitCodebooksNow(model, ids, params, ctx, maxWindows, options, hooks)
      return { meta: { tokens: fitted.tokens }, arrays: fitted.codebooks }
    },
  )
  if (typeof entry.meta.tokens !== 'number') throw new Error('activation codebook cache entry: header is incomplete')
  for (const [id, c] of Object.entries(entry.arrays)) {
    if (c.length !== 2 ** params.bits) throw new Error(`activation codebook cache entry: ${id} has ${c.length} centroids, not ${2 ** params.bits}`)
  }
  return { codebooks: entry.arrays, tokens: entry.meta.tokens, cached }
}

async function fitCodebooksNow(
  model: OpenedModel,
  ids: readonly number[],
  params: KMeansActParams,
  ctx: number,
  maxWindows: number,
  options: ActCodebookOptions,
  hooks: EvalHooks,
): Promise<{ codebooks: Record<string, Float32Array>; tokens: number }> {
  const windows = planWindows(ids, ctx, maxWindows)
  const session = await DecoderSession.create(model, {
    backend: options.backend,
    threads: options.threads,
    overrides: options.overrides,
    signal: hooks.signal,
    onLoadProgress: (done, total) => hooks.onProgress?.({ stage: 'loading', done, total }),
    graph: { capture: { sites: LINEAR_INPUTS, raw: true }, maxPositions: ctx },
  })
  try {
    const points = session.info.capturePoints
    const fitters = points.map((p) => new ActivationCodebookFitter(params, p.id))
    const perRun = windowsPerRun(ctx, 0)
    for (let w0 = 0; w0 < windows.length; w0 += perRun) {
      hooks.signal?.throwIfAborted()
      const batch = windows.slice(w0, w0 + perRun)
      const out = await session.forwardWindows(batch, {}, points.map((p) => p.outputs.raw!))
      points.forEach((p, i) => fitters[i]!.add(out[p.outputs.raw!]!.data as Float32Array, batch.length * ctx, p.channels, { signal: hooks.signal }))
      hooks.onProgress?.({ stage: 'evaluating', done: w0 + batch.length, total: windows.length })
    }
    const codebooks: Record<string, Float32Array> = {}
    points.forEach((p, i) => (codebooks[p.id] = fitters[i]!.fit().centroids))
    return { codebooks, tokens: windows.length * ctx }
  } finally {
    await session.release()
  }
}

/** The evaluation graph's k-means activation option, codebooks fitted on the calibration text (default resources/eval/calibration.txt). */
export async function kmeansActOptions(
  model: OpenedModel,
  params: KMeansActParams,
  options: ActCodebookOptions & { text?: TextSource; tokenizer?: string } = {},
  hooks: EvalHooks = {},
): Promise<ActGraphOptions & { calibrationTokens: number }> {
  const ids = await tokensOf(options.text ?? { file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model, options.tokenizer))
  const { codebooks, tokens } = await fitActivationCodebooks(model, ids, params, options, hooks)
  return { kind: 'kmeans', bits: params.bits, outliers: params.outliers, norm: params.norm, codebooks, calibrationTokens: tokens }
}
