/**
 * A least-recently-used map bounded by the bytes its values hold (as `sizeOf` estimates them).
 * The entry just stored is never evicted by its own insertion, even when it alone exceeds
 * the bound: the caller asked for it and is about to use it.
 */
export class MemoryLru<V> {
  /** Least recently used first (Map keeps insertion order). */
  private readonly entries = new Map<string, { value: V; bytes: number }>()
  private total = 0

  constructor(
    readonly maxBytes: number,
    private readonly sizeOf: (value: V) => number,
  ) {
    if (!(maxBytes >= 0)) throw new RangeError(`memory cache bound must be >= 0 bytes, got ${maxBytes}`)
  }

  get bytes(): number {
    return this.total
  }

  get size(): number {
    return this.entries.size
  }

  /** The value, marked most recently used. */
  get(key: string): V | undefined {
    const hit = this.entries.get(key)
    if (!hit) return undefined
    this.entries.delete(key)
    this.entries.set(key, hit)
    return hit.value
  }

  set(key: string, value: V): void {
    this.delete(key)
    const bytes = this.sizeOf(value)
    this.entries.set(key, { value, bytes })
    this.total += bytes
    for (const [k, v] of this.entries) {
      if (this.total <= this.maxBytes || k === key) break
      this.entries.delete(k)
      this.total -= v.bytes
    }
  }

  delete(key: string): void {
    const old = this.entries.get(key)
    if (!old) return
    this.entries.delete(key)
    this.total -= old.bytes
  }
}
