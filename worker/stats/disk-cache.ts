import { BoundedCacheDir } from '../io/bounded-cache-dir'
import type { TensorStats } from './stats-types'

/**
 * Statistics kept on disk between runs: one verified entry per (model bytes, tensor, options)
 * in a private folder bounded by size (worker/io/bounded-cache-dir.ts). What is read back is
 * trusted only when its checksum and key match and it has the shape of a TensorStats for
 * the tensor asked for; anything else is a miss and gets recomputed.
 */

/** Environment variable bounding the statistics disk cache, in bytes (suffixes K, M, G: powers of 1024). */
export const STATS_CACHE_BYTES_ENV = 'QUANTSCOPE_STATS_CACHE_BYTES'
export const DEFAULT_STATS_CACHE_BYTES = 1 << 30
/** Bump when TensorStats or any statistic's definition changes: old entries then miss. */
export const STATS_CACHE_VERSION = 3

/** The bound from QUANTSCOPE_STATS_CACHE_BYTES, or undefined when unset; a bad value throws. */
export function statsCacheBytesFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env[STATS_CACHE_BYTES_ENV]?.trim()
  if (!raw) return undefined
  const bytes = parseByteSize(raw)
  if (bytes === null) throw new RangeError(`${STATS_CACHE_BYTES_ENV}=${raw}: expected a number of bytes such as 1073741824, 512M or 2G`)
  return bytes
}

/** '1024', '512K', '512M', '2G', '1.5GiB' → bytes; null when not a size. */
export function parseByteSize(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim())
  if (!m) return null
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't']
  const bytes = Math.floor(Number(m[1]) * scale)
  return Number.isSafeInteger(bytes) ? bytes : null
}

export interface StatsDiskCacheOptions {
  /** Bound in bytes (default DEFAULT_STATS_CACHE_BYTES). */
  maxBytes?: number
  onWarning?(message: string): void
}

export class StatsDiskCache {
  private readonly dir: BoundedCacheDir

  constructor(folder: string, opts: StatsDiskCacheOptions = {}) {
    this.dir = new BoundedCacheDir(folder, {
      kind: 'tensor-stats',
      version: STATS_CACHE_VERSION,
      maxBytes: opts.maxBytes ?? DEFAULT_STATS_CACHE_BYTES,
      onWarning: opts.onWarning,
    })
  }

  get folder(): string {
    return this.dir.dir
  }

  get counters(): BoundedCacheDir['counters'] {
    return this.dir.counters
  }

  /** Why the folder is not used (not private, not creatable), or null. */
  get disabledReason(): string | null {
    return this.dir.disabledReason
  }

  async get(key: string, tensor: string): Promise<TensorStats | null> {
    const payload = await this.dir.get(key)
    if (!payload) return null
    let stats: unknown
    try {
      stats = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8'), reviveNonFinite)
    } catch {
      return null
    }
    return isTensorStats(stats, tensor) ? stats : null
  }

  async set(key: string, stats: TensorStats): Promise<void> {
    await this.dir.set(key, Buffer.from(JSON.stringify(stats, keepNonFinite), 'utf8'))
  }
}

// JSON has no NaN or ±Infinity (it writes null); keep them, tagged so that no string (a
// tensor named "NaN") is ever mistaken for one, and a cached result equals a fresh one.
const NON_FINITE_TAG = '$nonFinite'

function keepNonFinite(_key: string, value: unknown): unknown {
  return typeof value === 'number' && !Number.isFinite(value) ? { [NON_FINITE_TAG]: String(value) } : value
}

function reviveNonFinite(_key: string, value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value
  const tag = (value as Record<string, unknown>)[NON_FINITE_TAG]
  if (tag === undefined || Object.keys(value).length !== 1) return value
  return tag === 'NaN' ? NaN : tag === 'Infinity' ? Infinity : tag === '-Infinity' ? -Infinity : value
}

const isNum = (x: unknown): x is number => typeof x === 'number'
const isNumArray = (x: unknown, length: number): boolean => Array.isArray(x) && x.length === length && x.every(isNum)

/** The shape the views rely on (lengths agree with rows, cols and the heatmap size). */
function isTensorStats(x: unknown, tensor: string): x is TensorStats {
  const s = x as TensorStats
  if (typeof s !== 'object' || s === null || s.tensor !== tensor) return false
  for (const k of ['rows', 'cols', 'count', 'min', 'max', 'mean', 'std', 'absmax', 'kurtosis', 'nan', 'inf', 'zeros'] as const) {
    if (!isNum(s[k])) return false
  }
  const h = s.histogram
  if (typeof h !== 'object' || h === null || !isNum(h.lo) || !isNum(h.hi) || !Array.isArray(h.counts) || !h.counts.every(isNum)) return false
  if (!isNumArray(s.rowAbsmax, s.rows) || !isNumArray(s.colAbsmax, s.cols)) return false
  const m = s.heatmap
  if (typeof m !== 'object' || m === null || !isNum(m.rows) || !isNum(m.cols) || !isNumArray(m.values, m.rows * m.cols)) return false
  return Array.isArray(s.topK) && s.topK.every((t) => typeof t === 'object' && t !== null && isNum(t.index) && isNum(t.row) && isNum(t.col) && isNum(t.value))
}
