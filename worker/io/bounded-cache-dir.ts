import { createHash } from 'node:crypto'
import { lstat, readdir, rm, utimes } from 'node:fs/promises'
import { join } from 'node:path'
import { ensurePrivateDir } from './private-dir'
import { readVerifiedFile, writeVerifiedFile, type EntryIdentity } from './verified-file'

/**
 * A folder of verified cache entries (verified-file.ts) in a private folder (private-dir.ts),
 * bounded in bytes: when the entries exceed `maxBytes`, the least recently used go first.
 * Recency is the file's mtime, refreshed on every hit, so it survives restarts and is shared
 * by processes using the same folder.
 *
 * Only files named like our entries (`<sha256 of key>.qsc`) are ever counted or deleted, so
 * pointing the cache at a folder with other files in it never deletes them.
 */

export interface BoundedCacheDirOptions {
  /** Entry kind and payload version, checked on every read (see EntryIdentity). */
  kind: string
  version: number
  /** Total bytes of entries kept; the least recently used beyond it are deleted. */
  maxBytes: number
  /** Told once when the folder cannot be used (the cache then does nothing). */
  onWarning?(message: string): void
}

const LOW_WATER = 0.9
const ENTRY_NAME = /^[0-9a-f]{64}\.qsc$/

interface Entry {
  bytes: number
}

export class BoundedCacheDir {
  readonly dir: string
  private readonly opts: BoundedCacheDirOptions
  /** Our entries, least recently used first (Map keeps insertion order). */
  private readonly index = new Map<string, Entry>()
  private total = 0
  private ready: Promise<boolean> | null = null
  private evicting: Promise<void> | null = null
  /** Why the folder is not used, when it is not. */
  disabledReason: string | null = null
  /** Entries found but not trusted (and deleted), since construction. */
  readonly counters = { hits: 0, misses: 0, rejected: 0, written: 0, evicted: 0 }

  constructor(dir: string, opts: BoundedCacheDirOptions) {
    if (!(Number.isSafeInteger(opts.maxBytes) && opts.maxBytes >= 0)) throw new RangeError(`cache size bound must be a non-negative integer number of bytes, got ${opts.maxBytes}`)
    this.dir = dir
    this.opts = opts
  }

  get totalBytes(): number {
    return this.total
  }

  /** The payload stored for `key`, or null (absent, or present but not trustworthy). */
  async get(key: string): Promise<Uint8Array | null> {
    if (!(await this.open())) return null
    const name = entryName(key)
    const path = join(this.dir, name)
    const read = await readVerifiedFile(path, this.identity(key), Math.max(this.opts.maxBytes, 1 << 20))
    if (read.status === 'ok') {
      this.counters.hits++
      this.touch(name, read.payload.length)
      const now = new Date()
      // Recency for other processes and the next start; a failure only ages the entry.
      await utimes(path, now, now).catch(() => {})
      return read.payload
    }
    this.counters.misses++
    if (read.status === 'invalid') {
      this.counters.rejected++
      await rm(path, { force: true }).catch(() => {})
    }
    this.forget(name)
    return null
  }

  /** Stores `payload` under `key` (atomically), then evicts down to the bound. */
  async set(key: string, payload: Uint8Array): Promise<void> {
    if (!(await this.open())) return
    const name = entryName(key)
    const bytes = await writeVerifiedFile(join(this.dir, name), this.identity(key), payload)
    this.counters.written++
    this.touch(name, bytes)
    if (this.total > this.opts.maxBytes) await this.evict()
  }

  private identity(key: string): EntryIdentity {
    return { kind: this.opts.kind, version: this.opts.version, key }
  }

  private touch(name: string, bytes: number): void {
    this.forget(name)
    this.index.set(name, { bytes })
    this.total += bytes
  }

  private forget(name: string): void {
    const old = this.index.get(name)
    if (!old) return
    this.index.delete(name)
    this.total -= old.bytes
  }

  /** Makes the folder private and learns what is in it, once. False: the cache is off. */
  private open(): Promise<boolean> {
    this.ready ??= (async () => {
      try {
        await ensurePrivateDir(this.dir)
        await this.scan()
        return true
      } catch (err) {
        this.disabledReason = (err as Error).message
        this.opts.onWarning?.(`${this.opts.kind} cache disabled: ${this.disabledReason}`)
        return false
      }
    })()
    return this.ready
  }

  /** Rebuilds the index from the folder, oldest mtime first (other processes write here too). */
  private async scan(): Promise<void> {
    const names = (await readdir(this.dir)).filter((n) => ENTRY_NAME.test(n))
    const found: { name: string; bytes: number; mtime: number }[] = []
    for (const name of names) {
      const info = await lstat(join(this.dir, name)).catch(() => null)
      if (info?.isFile()) found.push({ name, bytes: info.size, mtime: info.mtimeMs })
    }
    // Equal mtimes (coarse clocks) keep the order this process saw them used in.
    const seen = new Map([...this.index.keys()].map((n, i) => [n, i]))
    found.sort((a, b) => a.mtime - b.mtime || (seen.get(a.name) ?? -1) - (seen.get(b.name) ?? -1))
    this.index.clear()
    this.total = 0
    for (const f of found) this.touch(f.name, f.bytes)
  }

  private evict(): Promise<void> {
    this.evicting ??= (async () => {
      try {
        // Others may have written or evicted meanwhile: count what is really there. Going
        // down to 90% of the bound means the next few writes do not rescan the folder.
        await this.scan()
        const target = Math.floor(this.opts.maxBytes * LOW_WATER)
        for (const [name] of this.index) {
          if (this.total <= target) break
          await rm(join(this.dir, name), { force: true })
          this.forget(name)
          this.counters.evicted++
        }
      } finally {
        this.evicting = null
      }
    })()
    return this.evicting
  }
}

function entryName(key: string): string {
  return `${createHash('sha256').update(key).digest('hex')}.qsc`
}
