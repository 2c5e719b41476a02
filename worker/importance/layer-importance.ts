import type { OpenedModel } from '../formats/contract'
import { InferenceInputError } from '../inference/errors'
import type { BackendKind } from '../inference/ort-backend'
import { DEFAULT_CTX, planWindows, type EvalHooks } from '../inference/perplexity'
import { DecoderSession, windowsPerRun } from '../inference/session'
import type { WeightOverrides } from '../inference/weights'
import { jaccardSum } from './rank-math'

/**
 * Layer importance from one pass of the evaluation graph over a text (windows as in the
 * perplexity protocol: consecutive ctx-token windows from an empty cache, every position
 * counted):
 *
 * - LSAQ (arXiv 2412.18135): the logit lens of each block's input residual h_l and output
 *   h_{l+1} (final RMSNorm — a toggle — then lm_head), T = top-k token ids per position,
 *   J = |T_in ∩ T_out| / |T_in ∪ T_out|; importance = 1 − mean J.
 * - cosine (ShortGPT): importance = 1 − mean cos(h_l, h_{l+1}).
 *
 * The top-k and the cosines come out of the graph (inference/importance-outputs.ts): per run
 * only [rows, k] ids and [rows] cosines reach JS, where they accumulate in float64, so memory
 * stays bounded by one run's lens projections whatever the text length. Ties in the lens
 * logits go to the lower token id (ONNX TopK), as in the PyTorch reference.
 */
export const DEFAULT_LSAQ_K = 10

export interface LayerImportanceOptions {
  /** LSAQ's logit-lens top-k (default k 10, final norm on); null or absent to skip. */
  lsaq?: { k?: number; finalNorm?: boolean } | null
  /** ShortGPT's cosine importance. */
  cosine?: boolean
  ctx?: number
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  /** A quantized variant's weights (importance of the model as planned). */
  overrides?: WeightOverrides
  /** Windows per runtime call (default: by ctx and vocabulary); the numbers do not depend on it. */
  windowsPerRun?: number
}

export interface LayerImportanceResult {
  /** Per block, 1 − mean Jaccard of the lens top-k sets (with lsaq). */
  lsaq?: number[]
  /** Per block, 1 − mean cosine of input and output (with cosine). */
  cosine?: number[]
  k?: number
  finalNorm?: boolean
  ctx: number
  windows: number
  /** Positions averaged over: windows × ctx. */
  tokens: number
  seconds: number
  backend: BackendKind
}

export async function computeLayerImportance(model: OpenedModel, ids: readonly number[], options: LayerImportanceOptions, hooks: EvalHooks = {}): Promise<LayerImportanceResult> {
  const t0 = performance.now()
  const ctx = options.ctx ?? DEFAULT_CTX
  const lens = options.lsaq ? { k: options.lsaq.k ?? DEFAULT_LSAQ_K, finalNorm: options.lsaq.finalNorm ?? true } : null
  if (!lens && !options.cosine) throw new InferenceInputError('layer importance: ask for lsaq, cosine or both')
  if (lens && !(Number.isInteger(lens.k) && lens.k >= 1)) throw new InferenceInputError(`layer importance: k must be a positive integer, got ${lens.k}`)
  const windows = planWindows(ids, ctx, options.maxWindows)
  const session = await DecoderSession.create(model, {
    backend: options.backend,
    threads: options.threads,
    overrides: options.overrides,
    signal: hooks.signal,
    onLoadProgress: (done, total) => hooks.onProgress?.({ stage: 'loading', done, total }),
    graph: { importance: { lens, cosine: options.cosine ?? false }, maxPositions: ctx },
  })
  try {
    const out = session.info.importance!
    const L = session.spec.layers.length
    if (lens && lens.k > session.vocab) throw new InferenceInputError(`layer importance: k = ${lens.k} exceeds the vocabulary (${session.vocab})`)
    const jSum = new Float64Array(L)
    const cosSum = new Float64Array(L)
    const fetch = [...out.topk, ...out.cos]
    // Up to L + 1 lens projections [rows, vocab] may be alive in one run: bound the rows.
    const perRun = options.windowsPerRun ?? windowsPerRun(ctx, lens ? session.vocab : 0, 2)
    for (let w0 = 0; w0 < windows.length; w0 += perRun) {
      hooks.signal?.throwIfAborted()
      const batch = windows.slice(w0, w0 + perRun)
      const rows = batch.length * ctx
      const outputs = await session.forwardWindows(batch, {}, fetch)
      if (lens) {
        const sets = out.topk.map((name) => outputs[name]!.data as BigInt64Array)
        for (let l = 0; l < L; l++) jSum[l]! += jaccardSum(sets[l]!, sets[l + 1]!, rows, lens.k)
      }
      out.cos.forEach((name, l) => {
        const c = outputs[name]!.data as Float32Array
        let s = 0
        for (let i = 0; i < c.length; i++) s += c[i]!
        cosSum[l]! += s
      })
      hooks.onProgress?.({ stage: 'evaluating', done: w0 + batch.length, total: windows.length })
    }
    const tokens = windows.length * ctx
    const result: LayerImportanceResult = {
      ctx,
      windows: windows.length,
      tokens,
      seconds: (performance.now() - t0) / 1000,
      backend: session.backend,
    }
    if (lens) {
      result.lsaq = Array.from(jSum, (s) => 1 - s / tokens)
      result.k = lens.k
      result.finalNorm = lens.finalNorm
    }
    if (options.cosine) {
      const cos = Array.from(cosSum, (s) => 1 - s / tokens)
      if (cos.some((v) => !Number.isFinite(v))) throw new InferenceInputError('layer importance: a residual of zero length or a non-finite activation made the cosine undefined')
      result.cosine = cos
    }
    return result
  } finally {
    await session.release()
  }
}
