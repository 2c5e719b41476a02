/**
 * Calibration captures, kept: one capture of the full-precision model over a text is minutes
 * of work on a real model, and every preview, plan evaluation and `quantize` run of the same
 * model and text needs exactly the same numbers. A capture is cached per
 *   (model files' fingerprint, token ids' hash, ctx, windows, XᵀX or not, sites, backend)
 * in memory (a few entries per thread) and on disk, in a private, bounded, verified cache
 * folder (io/bounded-cache-dir.ts: `<cache root>/calibration`). A tampered, truncated or
 * foreign entry fails its checksum or identity and is recomputed.
 *
 * Only what the quantizers read is kept: per capture point the token count, mean, mean |x|,
 * mean x² and (on request) Σ xᵀx, all float64, and which point feeds which linear tensor.
 */
import { join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import type { CaptureResult } from '../inference/activation-capture'
import { BoundedCacheDir } from '../io/bounded-cache-dir'
import { filesFingerprint } from '../io/file-fingerprint'
import { tokenIdsKey } from '../io/token-ids-key'
import { packHeaderAndArrays, unpackHeaderAndArrays } from '../io/header-arrays'
import { defaultCacheDir } from '../io/private-dir'

/** What a calibration capture keeps of a CaptureResult. */
export interface CachedCapture {
  ctx: number
  windows: number
  tokens: number
  /** Linear tensor name → id of the point holding its input. */
  linearInputs: Record<string, string>
  points: CachedPoint[]
}

export interface CachedPoint {
  id: string
  count: number
  mean: Float64Array
  meanAbs: Float64Array
  meanSq: Float64Array
  /** Σ xᵀx, [channels × channels] row-major, when captured. */
  gram: Float64Array | null
}

export interface CaptureKeyParts {
  ids: readonly number[]
  ctx: number
  /** null: every window. */
  maxWindows: number | null
  gram: boolean
  sites: readonly string[]
  backend: string
}

const KIND = 'calibration'
const VERSION = 1
/** Entries kept in memory per cache (the last few captures of this thread)… */
const MEMO_ENTRIES = 4
/** …holding at most this many bytes: a 0.5B model's XᵀX of every linear input is gigabytes. */
const MEMO_BYTES = 1 << 30
export const DEFAULT_CALIBRATION_CACHE_BYTES = 4 * 2 ** 30

export function defaultCalibrationCacheDir(): string {
  return join(defaultCacheDir(), 'calibration')
}

/** The cache key of one capture of `model`'s current files. */
export async function captureKey(model: OpenedModel, parts: CaptureKeyParts): Promise<string> {
  return JSON.stringify({
    files: await filesFingerprint(model.files),
    tokens: tokenIdsKey(parts.ids),
    ctx: parts.ctx,
    maxWindows: parts.maxWindows,
    gram: parts.gram,
    sites: [...parts.sites].sort(),
    backend: parts.backend,
  })
}

/** The part of a capture the quantizers use, in float64. */
export function reduceCapture(c: CaptureResult): CachedCapture {
  return {
    ctx: c.ctx,
    windows: c.windows,
    tokens: c.tokens,
    linearInputs: { ...c.linearInputs },
    points: c.points
      .filter((p) => Object.values(c.linearInputs).includes(p.id))
      .map((p) => ({
        id: p.id,
        count: p.stats.count,
        mean: Float64Array.from(p.stats.mean),
        meanAbs: Float64Array.from(p.stats.meanAbs),
        meanSq: Float64Array.from(p.stats.meanSq),
        gram: c.grams?.[p.id] ?? null,
      })),
  }
}

/** Payload: a JSON header line, then every array's float64 bytes in header order. */
export function encodeCapture(c: CachedCapture): Uint8Array {
  const header = {
    ctx: c.ctx,
    windows: c.windows,
    tokens: c.tokens,
    linearInputs: c.linearInputs,
    points: c.points.map((p) => ({ id: p.id, count: p.count, channels: p.mean.length, gram: p.gram !== null })),
  }
  // Float64 data starts on an 8-byte boundary.
  return packHeaderAndArrays(header, c.points.flatMap((p) => [p.mean, p.meanAbs, p.meanSq, ...(p.gram ? [p.gram] : [])]), 8)
}

/** Inverse of encodeCapture; throws on a payload that does not add up. */
export function decodeCapture(payload: Uint8Array): CachedCapture {
  const r = unpackHeaderAndArrays<Omit<CachedCapture, 'points'> & { points: { id: string; count: number; channels: number; gram: boolean }[] }>(payload, 8, 'calibration cache entry')
  const header = r.header
  const points = header.points.map((p) => ({
    id: p.id,
    count: p.count,
    mean: r.take(Float64Array, p.channels),
    meanAbs: r.take(Float64Array, p.channels),
    meanSq: r.take(Float64Array, p.channels),
    gram: p.gram ? r.take(Float64Array, p.channels * p.channels) : null,
  }))
  r.end()
  return { ctx: header.ctx, windows: header.windows, tokens: header.tokens, linearInputs: header.linearInputs, points }
}

export interface CalibrationCacheCounters {
  /** Served from this thread's memory. */
  memoHits: number
  /** Served from the disk cache. */
  diskHits: number
  /** Computed (nothing cached, or the entry was not trusted). */
  captures: number
}

/**
 * A capture cache: memory first, then the disk folder (when given), then `compute`. Two
 * callers asking for the same key at once share one computation.
 */
export class CalibrationCache {
  readonly counters: CalibrationCacheCounters = { memoHits: 0, diskHits: 0, captures: 0 }
  readonly disk: BoundedCacheDir | null
  private readonly memo = new Map<string, Promise<CachedCapture>>()
  /** Bytes of the settled captures in `memo`. */
  private readonly memoSizes = new Map<string, number>()

  constructor(
    dir: string | null,
    maxBytes = DEFAULT_CALIBRATION_CACHE_BYTES,
    private readonly memoBytes = MEMO_BYTES,
  ) {
    this.disk = dir ? new BoundedCacheDir(dir, { kind: KIND, version: VERSION, maxBytes }) : null
  }

  async get(key: string, compute: () => Promise<CachedCapture>): Promise<CachedCapture> {
    const hit = this.memo.get(key)
    if (hit) {
      this.memo.delete(key)
      this.memo.set(key, hit) // most recently used last
      this.counters.memoHits++
      return hit
    }
    const pending = this.load(key, compute)
    this.memo.set(key, pending)
    pending.then(
      (capture) => {
        if (this.memo.get(key) !== pending) return
        this.memoSizes.set(key, captureBytes(capture))
        this.trim()
      },
      () => {
        // A failed or cancelled capture is not remembered.
        if (this.memo.get(key) === pending) this.memo.delete(key)
      },
    )
    this.trim()
    return pending
  }

  /** Forgets what this thread holds in memory (the disk folder stays). */
  clearMemory(): void {
    this.memo.clear()
    this.memoSizes.clear()
  }

  /** Oldest first, down to the entry and byte bounds (a capture alone beyond the bytes is not kept). */
  private trim(): void {
    let bytes = 0
    for (const n of this.memoSizes.values()) bytes += n
    for (const key of this.memo.keys()) {
      if (this.memo.size <= MEMO_ENTRIES && bytes <= this.memoBytes) break
      bytes -= this.memoSizes.get(key) ?? 0
      this.memo.delete(key)
      this.memoSizes.delete(key)
    }
  }

  private async load(key: string, compute: () => Promise<CachedCapture>): Promise<CachedCapture> {
    const stored = await this.disk?.get(key)
    if (stored) {
      try {
        const capture = decodeCapture(stored)
        this.counters.diskHits++
        return capture
      } catch {
        // Verified bytes that still do not decode (a writer bug): recompute and overwrite.
      }
    }
    this.counters.captures++
    const capture = await compute()
    // Writing is best effort: a full or unwritable disk costs the next run time, not this result.
    await this.disk?.set(key, encodeCapture(capture)).catch(() => {})
    return capture
  }
}

function captureBytes(c: CachedCapture): number {
  return c.points.reduce((s, p) => s + p.mean.byteLength * 3 + (p.gram?.byteLength ?? 0), 0)
}

const caches = new Map<string, CalibrationCache>()

/** This thread's cache for a folder (null: memory only), made on first use. */
export function calibrationCacheFor(dir: string | null): CalibrationCache {
  const key = dir ?? ''
  let cache = caches.get(key)
  if (!cache) {
    cache = new CalibrationCache(dir)
    caches.set(key, cache)
  }
  return cache
}
