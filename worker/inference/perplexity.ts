import type { OpenedModel } from '../formats/contract'
import { InferenceInputError, NonFiniteResultError } from './errors'
import { openKldBase, summarizeKld, type KldOptions, type KldSummary } from './kld'
import type { BackendKind } from './ort-backend'
import { openEvalSession } from './eval-session'
import { windowsPerRun } from './session'
import type { WeightOverrides } from './weights'
import { checkKvSettings, type KvEcho, type KvEvalOptions, type KvGraphOptions } from './kv-quant'
import { actEcho, type ActGraphOptions } from './act-quant'

/**
 * Perplexity by the project's protocol (the reference-model issue): the whole text tokenized
 * without special tokens, split into consecutive non-overlapping windows of `ctx` tokens (the
 * remainder dropped), each window evaluated from an empty cache, the NLL averaged over every
 * predicted token (ctx − 1 per window), ppl = exp(mean). The NLL is computed inside the graph
 * (logsumexp − target logit), so the [ctx, vocab] logits never leave the runtime; an .onnx
 * file runs as it is and its session derives the same from one window's logits at a time
 * (eval-session.ts).
 */
export const DEFAULT_CTX = 256

export interface EvalProgress {
  stage: 'loading' | 'loading-base' | 'evaluating'
  done: number
  total: number
  /** Running perplexity over the windows done so far (stage 'evaluating'). */
  ppl?: number
}

export interface EvalHooks {
  onProgress?(p: EvalProgress): void
  signal?: AbortSignal
}

export interface PerplexityOptions {
  ctx?: number
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  overrides?: WeightOverrides
  /** Also measure KL divergence against the base model on the same windows. */
  kld?: KldOptions | null
  /** Windows evaluated per runtime call (default: windowsPerRun(ctx, vocab)); numbers do not depend on it. */
  windowsPerRun?: number
  /** KV-cache fake quantization (kv-quant.ts); with smooth, the statistics come in it (kv-calibration.ts kvEvalOptions). */
  kv?: KvEvalOptions | null
  /** Fake quantization of every decoder linear's input (act-quant.ts). */
  act?: ActGraphOptions | null
}

export interface PerplexityResult {
  ppl: number
  /** Tokens evaluated: windows × ctx. */
  tokens: number
  windows: number
  ctx: number
  /** Wall time of the whole evaluation (loading included). */
  seconds: number
  /** Mean NLL per predicted token (nats). */
  nll: number
  /** Mean NLL of each window's ctx − 1 predictions, in window order. */
  windowNll: number[]
  /** Predicted tokens: windows × (ctx − 1). */
  predicted: number
  /** Tokens of the whole text. */
  textTokens: number
  backend: BackendKind
  threads: number
  /** Seconds spent running windows (loading excluded), and tokens/s over that time. */
  evalSeconds: number
  tokensPerSecond: number
  kld?: KldSummary
  /** The KV-cache quantization evaluated (absent: full-precision K/V). */
  kv?: KvEcho
  /** The activation quantization evaluated (absent: full precision). */
  act?: Record<string, unknown>
  /** Things the user should know about this result (e.g. ctx beyond the trained positions); may be empty. */
  warnings: string[]
}

/** A warning when ctx runs past the positions the model was trained on, else null. */
export function contextWarning(ctx: number, maxPositionEmbeddings: number | null | undefined): string | null {
  if (!maxPositionEmbeddings || ctx <= maxPositionEmbeddings) return null
  return (
    `ctx ${ctx} is longer than the model's max_position_embeddings (${maxPositionEmbeddings}): ` +
    'positions past it were never trained, so this perplexity says little about the model'
  )
}

/** The windows of the protocol; explains itself when the text is shorter than one window. */
export function planWindows(ids: readonly number[], ctx: number, maxWindows?: number): number[][] {
  if (!Number.isInteger(ctx) || ctx < 2) throw new InferenceInputError(`ctx must be an integer ≥ 2, got ${ctx}`)
  const available = Math.floor(ids.length / ctx)
  if (available === 0) {
    throw new InferenceInputError(
      `the text has ${ids.length} tokens, fewer than one window of ctx = ${ctx} tokens; use a longer text or a smaller context length`,
    )
  }
  const n = maxWindows === undefined ? available : Math.min(available, maxWindows)
  if (n < 1) throw new InferenceInputError(`maxWindows must be ≥ 1, got ${maxWindows}`)
  return Array.from({ length: n }, (_, w) => ids.slice(w * ctx, (w + 1) * ctx))
}

export async function evaluatePerplexity(model: OpenedModel, ids: readonly number[], options: PerplexityOptions = {}, hooks: EvalHooks = {}): Promise<PerplexityResult> {
  const t0 = performance.now()
  const ctx = options.ctx ?? DEFAULT_CTX
  const windows = planWindows(ids, ctx, options.maxWindows)
  const { signal, onProgress } = hooks
  const kldOn = options.kld !== undefined && options.kld !== null
  if (options.act && model.format === 'onnx') throw new InferenceInputError(`${model.files[0]}: activation quantization is built into the graph made from the weights; an .onnx file is evaluated only as it is`)
  const { graph: kvGraph, echo: kvEcho } = kvGraphOptions(model, options)
  const session = await openEvalSession(model, {
    backend: options.backend,
    threads: options.threads,
    overrides: options.overrides,
    signal,
    onLoadProgress: (done, total) => onProgress?.({ stage: 'loading', done, total }),
    graph: { nll: true, kl: kldOn, argmax: kldOn, maxPositions: ctx, ...(kvGraph ? { kv: kvGraph } : {}), ...(options.act ? { act: options.act } : {}) },
  })
  let base: Awaited<ReturnType<typeof openKldBase>> | null = null
  try {
    if (kldOn) {
      base = await openKldBase(options.kld!.base ?? model, windows, ctx, {
        ...options.kld!,
        backend: options.backend,
        threads: options.threads,
        signal,
        onLoadProgress: (done, total) => onProgress?.({ stage: 'loading-base', done, total }),
      })
      if (base.vocab !== session.vocab) {
        throw new InferenceInputError(`the base model's vocabulary (${base.vocab}) differs from the evaluated model's (${session.vocab}); KL divergence needs the same tokens`)
      }
    }
    const predicted = windows.length * (ctx - 1)
    const kl = kldOn ? new Float64Array(predicted) : null
    let nllSum = 0
    const windowNll: number[] = []
    let baseNllSum = 0
    let agree = 0
    const tEval = performance.now()
    const perRun = options.windowsPerRun ?? windowsPerRun(ctx, session.vocab, kldOn ? 5 : 2)
    for (let w0 = 0; w0 < windows.length; w0 += perRun) {
      signal?.throwIfAborted()
      const batch = windows.slice(w0, w0 + perRun)
      const targets = batch.map((tokens) => tokens.slice(1).concat([0]))
      const ref = base ? await base.windows(w0, batch) : null
      const outputs = await session.forwardWindows(batch, { targets, refLogprobs: ref?.logprobs }, kldOn ? ['nll', 'kl', 'argmax'] : ['nll'])
      const nll = outputs.nll!.data as Float32Array
      const klw = outputs.kl?.data as Float32Array | undefined
      const top = outputs.argmax?.data as BigInt64Array | undefined
      for (let b = 0; b < batch.length; b++) {
        const w = w0 + b
        let windowSum = 0
        for (let t = 0; t < ctx - 1; t++) {
          const v = nll[b * ctx + t]!
          // One NaN would make the whole perplexity NaN (printed as null): stop at the first one.
          if (!Number.isFinite(v)) throw new NonFiniteResultError('the NLL', `window ${w}, position ${t}`, v)
          windowSum += v
        }
        nllSum += windowSum
        windowNll.push(windowSum / (ctx - 1))
        if (ref && kl && klw && top) {
          const baseWindow = ref.windows[b]!
          for (let t = 0; t < ctx - 1; t++) {
            // KL ≥ 0; a negative value here is rounding noise (float32 sum over the vocabulary,
            // 16-bit cached base log-probs, ~1e-6), not information: clamp it.
            const k = klw[b * ctx + t]!
            const baseNll = baseWindow.nll[t]!
            if (!Number.isFinite(baseNll)) throw new NonFiniteResultError("the base model's NLL", `window ${w}, position ${t}`, baseNll)
            if (!Number.isFinite(k)) throw new NonFiniteResultError('the KL divergence', `window ${w}, position ${t}`, k)
            kl[w * (ctx - 1) + t] = Math.max(0, k)
            if (Number(top[b * ctx + t]) === baseWindow.argmax[t]) agree++
            baseNllSum += baseNll
          }
        }
      }
      const done = w0 + batch.length
      onProgress?.({ stage: 'evaluating', done, total: windows.length, ppl: Math.exp(nllSum / (done * (ctx - 1))) })
    }
    const evalSeconds = (performance.now() - tEval) / 1000
    const meanNll = nllSum / predicted
    const ppl = Math.exp(meanNll)
    const result: PerplexityResult = {
      ppl,
      tokens: windows.length * ctx,
      windows: windows.length,
      ctx,
      seconds: (performance.now() - t0) / 1000,
      nll: meanNll,
      windowNll,
      predicted,
      textTokens: ids.length,
      backend: session.backend,
      threads: session.threads,
      evalSeconds,
      tokensPerSecond: (windows.length * ctx) / evalSeconds,
      warnings: [contextWarning(ctx, model.config?.maxPositionEmbeddings)].filter((w): w is string => w !== null),
    }
    if (kl && base) result.kld = summarizeKld(kl, agree, baseNllSum, ppl, base.mode)
    if (kvEcho) result.kv = kvEcho
    if (options.act) result.act = actEcho(options.act)
    return result
  } finally {
    await base?.close()
    await session.release()
  }
}

/** The graph's kv option and its echo; nulls when off. */
function kvGraphOptions(model: OpenedModel, options: PerplexityOptions): { graph: KvGraphOptions | null; echo: KvEcho | null } {
  const kv = options.kv
  if (!kv) return { graph: null, echo: null }
  checkKvSettings(kv, model.config?.headDim ?? undefined)
  if (model.format === 'onnx') throw new InferenceInputError(`${model.files[0]}: KV-cache quantization is built into the graph made from the weights; an .onnx file is evaluated only as it is`)
  if (kv.smooth && !kv.smoothing) throw new InferenceInputError('KV smoothing needs its calibration statistics (kvEvalOptions calibrates them on the calibration text)')
  const echo: KvEcho = { bits: kv.bits, group: kv.group ?? null, smooth: kv.smooth, pastOnly: kv.pastOnly }
  if (kv.calibration) echo.calibration = kv.calibration
  return { graph: { bits: kv.bits, group: kv.group ?? null, pastOnly: kv.pastOnly, smooth: kv.smooth ? kv.smoothing : null }, echo }
}
