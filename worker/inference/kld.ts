import { join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { filesFingerprint } from '../io/file-fingerprint'
import { defaultCacheDir } from '../io/private-dir'
import { resolveDecoder } from './decoder-spec'
import { openEvalSession, type EvalSession } from './eval-session'
import type { BackendKind } from './ort-backend'
import {
  cacheBytes,
  cacheKey,
  LogprobCacheReader,
  LogprobCacheWriter,
  pruneCache,
  type CachedWindow,
} from './logprob-cache'
import type { WeightOverrides } from './weights'
import type { KldBaseMode, KldSummary } from './kld-types'

/**
 * The base (unquantized) side of a KL-divergence evaluation: per window its log-probabilities
 * [ctx, vocab], top-1 tokens and NLL. They come from the disk cache when a complete one exists;
 * otherwise the base model runs window by window, and its output is written to the cache on
 * the way when the cache fits the disk budget. Reading 2 bytes per logit is always cheaper than
 * recomputing it (the lm_head alone costs 2·hidden FLOPs per logit), so the cache is used
 * whenever it may be; 'off' forces recomputation, 'on' ignores the budget.
 */
export type KldCacheMode = 'auto' | 'on' | 'off'

export interface KldOptions {
  /** The reference model; default: the evaluated model without overrides. */
  base?: OpenedModel
  baseOverrides?: WeightOverrides
  cache?: KldCacheMode
  /** Default: the per-user private cache folder's `logprobs/` (io/private-dir.ts). */
  cacheDir?: string
  /** Disk the cache folder may use (default 4 GiB): larger files are not written, least recently used ones are removed. */
  cacheBudgetBytes?: number
}

export type { KldBaseMode, KldSummary }

/** Base data of consecutive windows; `logprobs` is all of theirs, [windows, ctx, vocab]. */
export interface BaseBatch {
  windows: CachedWindow[]
  logprobs: Float32Array
}

export interface KldBaseSource {
  readonly mode: KldBaseMode
  readonly vocab: number
  /** Windows first … first + tokens.length − 1, in order. */
  windows(first: number, tokens: number[][]): Promise<BaseBatch>
  close(): Promise<void>
}

export const DEFAULT_CACHE_BUDGET = 4 * 2 ** 30

export function defaultLogprobCacheDir(): string {
  return join(defaultCacheDir(), 'logprobs')
}

export async function openKldBase(
  baseModel: OpenedModel,
  windows: number[][],
  ctx: number,
  options: KldOptions & { backend?: BackendKind; threads?: number; signal?: AbortSignal; onLoadProgress?(done: number, total: number): void },
): Promise<KldBaseSource> {
  const mode = options.cache ?? 'auto'
  const sessionOptions = {
    backend: options.backend,
    threads: options.threads,
    overrides: options.baseOverrides,
    signal: options.signal,
    onLoadProgress: options.onLoadProgress,
    graph: { nll: true, logprobs: true, argmax: true, maxPositions: ctx },
  }
  // An ONNX file's vocabulary is what its logits say, so its session is opened first.
  const opened: EvalSession | null = baseModel.format === 'onnx' ? await openEvalSession(baseModel, sessionOptions) : null
  const vocab = opened ? opened.vocab : resolveDecoder(baseModel).vocab
  let key: string | null = null
  const dir = options.cacheDir ?? defaultLogprobCacheDir()
  if (mode !== 'off' && !options.baseOverrides) {
    let reader: LogprobCacheReader | null
    try {
      key = cacheKey(await filesFingerprint(baseModel.files), ctx, vocab, windows)
      // A cache folder that is not private (a symlink, another user's) is never read.
      reader = await LogprobCacheReader.open(dir, key, ctx, vocab, windows.length).catch(() => null)
    } catch (err) {
      await opened?.release()
      throw err
    }
    if (reader) {
      await opened?.release()
      return {
        mode: 'cache-read',
        vocab,
        async windows(first, tokens) {
          const per = ctx * vocab
          const logprobs = new Float32Array(tokens.length * per)
          const windows: CachedWindow[] = []
          for (let i = 0; i < tokens.length; i++) windows.push(await reader.read(first + i, logprobs.subarray(i * per, (i + 1) * per)))
          return { windows, logprobs }
        },
        close: () => reader.close(),
      }
    }
  }
  const session = opened ?? (await openEvalSession(baseModel, sessionOptions))
  const budget = options.cacheBudgetBytes ?? DEFAULT_CACHE_BUDGET
  const size = cacheBytes(ctx, vocab, windows.length)
  let writer: LogprobCacheWriter | null = null
  if (key !== null && (mode === 'on' || size <= budget)) {
    try {
      await pruneCache(dir, size, budget)
      writer = await LogprobCacheWriter.create(dir, key, ctx, vocab, windows.length)
    } catch {
      // An unwritable cache folder costs speed on the next run, never this result.
      writer = null
    }
  }
  let next = 0
  return {
    mode: writer ? 'cache-write' : 'recompute',
    vocab,
    async windows(first, tokens) {
      const targets = tokens.map((w) => w.slice(1).concat([0]))
      const out = await session.forwardWindows(tokens, { targets }, ['logprobs', 'argmax', 'nll'])
      const logprobs = out.logprobs!.data as Float32Array
      const argmax = out.argmax!.data as BigInt64Array
      const nll = out.nll!.data as Float32Array
      const per = ctx * vocab
      const windows = tokens.map((_, i) => ({
        logprobs: logprobs.subarray(i * per, (i + 1) * per),
        argmax: Int32Array.from(argmax.subarray(i * ctx, (i + 1) * ctx), (v) => Number(v)),
        nll: nll.subarray(i * ctx, (i + 1) * ctx),
      }))
      for (let i = 0; i < windows.length; i++) {
        if (writer && first + i === next) {
          try {
            await writer.append(windows[i]!)
            next++
          } catch {
            // A full disk costs the cache, never this evaluation: drop the partial file and go on.
            const failed = writer
            writer = null
            await failed.finish().catch(() => {})
          }
        }
      }
      return { windows, logprobs }
    },
    async close() {
      await session.release()
      // The writer keeps the file only when every window reached it, in order.
      await writer?.finish()
    },
  }
}

/** Quantile with linear interpolation between order statistics (numpy's default). */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN
  const pos = (sorted.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.min(sorted.length - 1, lo + 1)
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo)
}

export function summarizeKld(kl: Float64Array, top1Agree: number, baseNllSum: number, modelPpl: number, baseSource: KldBaseMode): KldSummary {
  const n = kl.length
  const sorted = Float64Array.from(kl).sort()
  let sum = 0
  for (let i = 0; i < n; i++) sum += kl[i]!
  const basePpl = Math.exp(baseNllSum / n)
  return {
    mean: sum / n,
    median: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    top1: top1Agree / n,
    basePpl,
    deltaPpl: modelPpl - basePpl,
    baseSource,
  }
}
