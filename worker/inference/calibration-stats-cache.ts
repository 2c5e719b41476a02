/**
 * Disk cache of small calibration results that every evaluation with the same settings
 * recomputes otherwise: KV smoothing statistics (kv-calibration.ts) and k-means activation
 * codebooks (plan/act-codebooks.ts). Each is a pass of the full-precision model over up to
 * 32 × 256 calibration tokens (plus k-means fits), seconds on the default model and minutes
 * on a 0.5B one, for a few kilobytes of float32 numbers.
 *
 * Entries live in a private, bounded, verified folder (io/bounded-cache-dir.ts:
 * `<cache root>/<kind>`), keyed like the calibration capture cache (plan/calibration-cache.ts):
 *   (model files' fingerprint, calibration token ids' hash, ctx, windows, backend, spec)
 * A tampered, truncated or foreign entry fails its checksum or identity and is recomputed.
 * Weight overrides (a plan's variant) change the statistics and are not part of the key, so
 * callers with overrides pass no cache unless they name the variant (`variantKey`).
 *
 * Payload: one JSON header line (meta, array names and lengths), then every array's float32
 * bytes in header order, so a hit returns bit-identical values.
 */
import { join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { BoundedCacheDir } from '../io/bounded-cache-dir'
import { filesFingerprint } from '../io/file-fingerprint'
import { tokenIdsKey } from '../io/token-ids-key'
import { packHeaderAndArrays, unpackHeaderAndArrays } from '../io/header-arrays'
import { defaultCacheDir } from '../io/private-dir'

/** What an entry holds: JSON-able facts and named float32 arrays. */
export interface StatsEntry {
  meta: Record<string, unknown>
  arrays: Record<string, Float32Array>
}

/** Where a calibration result is cached: undefined = `<cache root>/<kind>`, null = not at all. */
export type StatsCacheDir = string | null | undefined

export interface StatsKeyParts {
  ids: readonly number[]
  ctx: number
  /** Windows asked for (null: every window of the text). */
  maxWindows: number | null
  backend: string
  /** The settings the result depends on (method parameters), JSON-able. */
  spec: unknown
  /** Names the weight overrides the result was computed with (absent: the stored weights). */
  variantKey?: string
}

const MAX_BYTES = 64 << 20

export function defaultStatsCacheDir(kind: string): string {
  return join(defaultCacheDir(), kind)
}

/** The cache key of one calibration result of `model`'s current files. */
export async function statsKey(model: OpenedModel, parts: StatsKeyParts): Promise<string> {
  return JSON.stringify({
    files: await filesFingerprint(model.files),
    tokens: tokenIdsKey(parts.ids),
    ctx: parts.ctx,
    maxWindows: parts.maxWindows,
    backend: parts.backend,
    spec: sortedJson(parts.spec),
    variant: parts.variantKey ?? null,
  })
}

/** Object keys sorted at every level, so two equal specs give one key whatever their key order. */
function sortedJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortedJson)
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortedJson((v as Record<string, unknown>)[k])]))
  return v
}

export function encodeStats(e: StatsEntry): Uint8Array {
  const names = Object.keys(e.arrays)
  return packHeaderAndArrays({ meta: e.meta, arrays: names.map((n) => [n, e.arrays[n]!.length]) }, names.map((n) => e.arrays[n]!), 4)
}

/** Inverse of encodeStats; throws on a payload that does not add up. */
export function decodeStats(payload: Uint8Array): StatsEntry {
  const r = unpackHeaderAndArrays<{ meta: Record<string, unknown>; arrays: [string, number][] }>(payload, 4, 'stats cache entry')
  const arrays: Record<string, Float32Array> = {}
  for (const [name, n] of r.header.arrays) arrays[name] = r.take(Float32Array, n)
  r.end()
  return { meta: r.header.meta, arrays }
}

const folders = new Map<string, BoundedCacheDir>()

function folder(kind: string, version: number, dir: string): BoundedCacheDir {
  const id = `${kind}\u0000${version}\u0000${dir}`
  let f = folders.get(id)
  if (!f) {
    f = new BoundedCacheDir(dir, { kind, version, maxBytes: MAX_BYTES })
    folders.set(id, f)
  }
  return f
}

/**
 * The entry for `key` from the folder, else `compute()`'s, stored for next time (best effort:
 * an unwritable folder costs the next run time, not this result). `cached` says which.
 */
export async function cachedStats(
  kind: string,
  version: number,
  dir: StatsCacheDir,
  key: () => Promise<string>,
  compute: () => Promise<StatsEntry>,
): Promise<{ entry: StatsEntry; cached: boolean }> {
  if (dir === null) return { entry: await compute(), cached: false }
  const disk = folder(kind, version, dir ?? defaultStatsCacheDir(kind))
  const k = await key()
  const stored = await disk.get(k)
  if (stored) {
    try {
      return { entry: decodeStats(stored), cached: true }
    } catch {
      // Verified bytes that still do not decode (a writer bug): recompute and overwrite.
    }
  }
  const entry = await compute()
  await disk.set(k, encodeStats(entry)).catch(() => {})
  return { entry, cached: false }
}
