import { createHash } from 'node:crypto'

/**
 * The part of a cache key that names a token sequence: its length and the SHA-256 of its
 * int32 ids. Every cache keyed by a text's tokens (captures, KV smoothing and codebooks,
 * sensitivity, the local proxy) spells it this way, so one text is one key everywhere.
 */
export function tokenIdsKey(ids: readonly number[]): string {
  const int32 = Int32Array.from(ids)
  return `${int32.length}:${createHash('sha256').update(new Uint8Array(int32.buffer)).digest('hex')}`
}
