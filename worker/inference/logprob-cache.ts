import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { ensurePrivateDir } from '../io/private-dir'

/**
 * The base model's log-probabilities for KL divergence, cached on disk compactly so a
 * quantizer sweep computes them once. Per predicted position the full distribution is kept
 * (KL needs all of it), as in llama.cpp's --kl-divergence-base: 16-bit codes on a linear
 * scale from the row's max down to max − 24 nats (rarer tokens are clamped there; each has
 * p < 4e-11), i.e. a step ≤ 3.7e-4 nats, plus the exact top-1 token and NLL.
 *
 * File (version 2): 64-byte header (magic, version, ctx, vocab, windows, SHA-256 of the cache
 * key), then per window a record [argmax int32 × ctx][nll f32 × ctx][ctx rows of (min f32,
 * step f32, V × uint16)][SHA-256 of the record] — fixed size, so any window is one read.
 *
 * Nothing read back is trusted unverified: the folder is private (0700, ours, not a symlink),
 * files are opened without following symlinks, the header must carry this key, and every
 * window's checksum must match (version 1 trusted any file of the right size: a tampered one
 * gave a mean KL of 7.84 for a model against itself).
 */
const MAGIC = 0x504c5351 // 'QSLP'
const VERSION = 2
const HEADER_BYTES = 64
const KEY_OFFSET = 32
const DIGEST_BYTES = 32
const RANGE_NATS = 24
const STALE_PARTIAL_MS = 60 * 60 * 1000
// O_NOFOLLOW: a symlink planted under an entry's name is refused, not followed.
const NO_FOLLOW = constants.O_NOFOLLOW ?? 0

export interface CachedWindow {
  logprobs: Float32Array
  argmax: Int32Array
  nll: Float32Array
}

/** Bytes of one window's payload (without its checksum). */
export function windowBytes(ctx: number, vocab: number): number {
  return ctx * 8 + ctx * (8 + 2 * vocab)
}

function recordBytes(ctx: number, vocab: number): number {
  return windowBytes(ctx, vocab) + DIGEST_BYTES
}

export function cacheBytes(ctx: number, vocab: number, windows: number): number {
  return HEADER_BYTES + windows * recordBytes(ctx, vocab)
}

/**
 * Cache key (64 hex digits, also the file name) from what determines the base log-probs: the
 * model's bytes (a fingerprint of its files, io/file-fingerprint.ts), ctx, vocab and the tokens.
 */
export function cacheKey(modelFingerprint: string, ctx: number, vocab: number, windows: readonly ArrayLike<number>[]): string {
  const h = createHash('sha256')
  h.update(`v${VERSION}\u0000${modelFingerprint}\u0000${ctx}\u0000${vocab}\u0000${windows.length}\u0000`)
  for (const w of windows) h.update(new Uint8Array(Int32Array.from(w).buffer))
  return h.digest('hex')
}

function sha256(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest()
}

export function encodeWindow(ctx: number, vocab: number, w: CachedWindow): Uint8Array {
  const bytes = new Uint8Array(windowBytes(ctx, vocab))
  const dv = new DataView(bytes.buffer)
  new Int32Array(bytes.buffer, 0, ctx).set(w.argmax)
  new Float32Array(bytes.buffer, ctx * 4, ctx).set(w.nll)
  const rowBytes = 8 + 2 * vocab
  for (let t = 0; t < ctx; t++) {
    const row = w.logprobs.subarray(t * vocab, (t + 1) * vocab)
    let max = -Infinity
    for (let i = 0; i < vocab; i++) if (row[i]! > max) max = row[i]!
    let min = Infinity
    for (let i = 0; i < vocab; i++) if (row[i]! < min) min = row[i]!
    min = Math.max(min, max - RANGE_NATS)
    const step = max > min ? (max - min) / 65535 : 1
    const base = ctx * 8 + t * rowBytes
    dv.setFloat32(base, min, true)
    dv.setFloat32(base + 4, step, true)
    // Decode uses the float32-rounded min/step, so encode against those too.
    const minF = dv.getFloat32(base, true)
    const stepF = dv.getFloat32(base + 4, true)
    const codes = new Uint16Array(bytes.buffer, base + 8, vocab)
    for (let i = 0; i < vocab; i++) {
      const q = Math.round((row[i]! - minF) / stepF)
      codes[i] = q < 0 ? 0 : q > 65535 ? 65535 : q
    }
  }
  return bytes
}

/** `into`: where to write the [ctx, vocab] log-probs (e.g. a slice of a batch buffer). */
export function decodeWindow(ctx: number, vocab: number, bytes: Uint8Array, into?: Float32Array): CachedWindow {
  const buf = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice()
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const argmax = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + ctx * 4))
  const nll = new Float32Array(buf.buffer.slice(buf.byteOffset + ctx * 4, buf.byteOffset + ctx * 8))
  const logprobs = into ?? new Float32Array(ctx * vocab)
  const rowBytes = 8 + 2 * vocab
  for (let t = 0; t < ctx; t++) {
    const base = ctx * 8 + t * rowBytes
    const min = dv.getFloat32(base, true)
    const step = dv.getFloat32(base + 4, true)
    const codes = new Uint16Array(buf.buffer, buf.byteOffset + base + 8, vocab)
    const o = t * vocab
    for (let i = 0; i < vocab; i++) logprobs[o + i] = min + step * codes[i]!
  }
  return { logprobs, argmax, nll }
}

function header(key: string, ctx: number, vocab: number, windows: number): Uint8Array {
  const h = new Uint8Array(HEADER_BYTES)
  const dv = new DataView(h.buffer)
  dv.setUint32(0, MAGIC, true)
  dv.setUint32(4, VERSION, true)
  dv.setUint32(8, ctx, true)
  dv.setUint32(12, vocab, true)
  dv.setUint32(16, windows, true)
  h.set(Buffer.from(key, 'hex'), KEY_OFFSET)
  return h
}

/** A cache file that fails its checks after it was opened (modified meanwhile). */
export class LogprobCacheCorruptError extends Error {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`base log-prob cache ${file}: ${problem}; the file was removed, run again to recompute it`)
    this.name = 'LogprobCacheCorruptError'
  }
}

/** Reads windows of a complete, verified cache file. */
export class LogprobCacheReader {
  private constructor(
    private readonly fh: FileHandle,
    private readonly path: string,
    readonly ctx: number,
    readonly vocab: number,
    readonly windows: number,
  ) {}

  /**
   * Opens the entry for `key` in the private folder `dir`; null when there is none or it does
   * not verify (wrong header, size, owner, or any window's checksum; such a file is deleted).
   * Every window is checked here, once, so a bad file costs a recomputation, never a result.
   */
  static async open(dir: string, key: string, ctx: number, vocab: number, windows: number): Promise<LogprobCacheReader | null> {
    const path = cachePath(await ensurePrivateDir(dir), key)
    let fh: FileHandle
    try {
      fh = await open(path, constants.O_RDONLY | NO_FOLLOW | (constants.O_NONBLOCK ?? 0))
    } catch {
      return null
    }
    const reader = new LogprobCacheReader(fh, path, ctx, vocab, windows)
    if (await reader.verify(key)) return reader
    await fh.close()
    await rm(path, { force: true })
    return null
  }

  private async verify(key: string): Promise<boolean> {
    const info = await this.fh.stat()
    const uid = process.getuid?.()
    if (!info.isFile() || (uid !== undefined && info.uid !== uid)) return false
    if (info.size !== cacheBytes(this.ctx, this.vocab, this.windows)) return false
    const h = new Uint8Array(HEADER_BYTES)
    const { bytesRead } = await this.fh.read(h, 0, HEADER_BYTES, 0)
    const dv = new DataView(h.buffer)
    const headerOk =
      bytesRead === HEADER_BYTES &&
      dv.getUint32(0, true) === MAGIC &&
      dv.getUint32(4, true) === VERSION &&
      dv.getUint32(8, true) === this.ctx &&
      dv.getUint32(12, true) === this.vocab &&
      dv.getUint32(16, true) === this.windows &&
      Buffer.from(h.subarray(KEY_OFFSET, KEY_OFFSET + DIGEST_BYTES)).toString('hex') === key
    if (!headerOk) return false
    for (let i = 0; i < this.windows; i++) if ((await this.readRecord(i)) === null) return false
    return true
  }

  /** The payload of window `index` when its checksum matches, else null. */
  private async readRecord(index: number): Promise<Uint8Array | null> {
    const n = recordBytes(this.ctx, this.vocab)
    const bytes = new Uint8Array(n)
    const { bytesRead } = await this.fh.read(bytes, 0, n, HEADER_BYTES + index * n)
    if (bytesRead !== n) return null
    const payload = bytes.subarray(0, n - DIGEST_BYTES)
    return sha256(payload).equals(bytes.subarray(n - DIGEST_BYTES)) ? payload : null
  }

  async read(index: number, into?: Float32Array): Promise<CachedWindow> {
    const payload = await this.readRecord(index)
    if (payload === null) {
      await rm(this.path, { force: true })
      throw new LogprobCacheCorruptError(this.path, `window ${index} no longer matches its checksum`)
    }
    return decodeWindow(this.ctx, this.vocab, payload, into)
  }

  close(): Promise<void> {
    return this.fh.close()
  }
}

/** Writes windows in order to a temporary file, renamed into place only when complete. */
export class LogprobCacheWriter {
  private written = 0
  private constructor(
    private readonly fh: FileHandle,
    private readonly tmp: string,
    private readonly path: string,
    readonly ctx: number,
    readonly vocab: number,
    readonly windows: number,
  ) {}

  static async create(dir: string, key: string, ctx: number, vocab: number, windows: number): Promise<LogprobCacheWriter> {
    const path = cachePath(await ensurePrivateDir(dir), key)
    const tmp = `${path}.partial-${process.pid}-${Date.now()}`
    // O_EXCL + O_NOFOLLOW: never write through a name someone else prepared.
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | NO_FOLLOW, 0o600)
    await fh.write(header(key, ctx, vocab, windows), 0, HEADER_BYTES, 0)
    return new LogprobCacheWriter(fh, tmp, path, ctx, vocab, windows)
  }

  async append(w: CachedWindow): Promise<void> {
    const payload = encodeWindow(this.ctx, this.vocab, w)
    const record = new Uint8Array(payload.length + DIGEST_BYTES)
    record.set(payload)
    record.set(sha256(payload), payload.length)
    await this.fh.write(record, 0, record.length, HEADER_BYTES + this.written * record.length)
    this.written++
  }

  /** Keeps the file if every window was written; otherwise removes the partial file. */
  async finish(): Promise<boolean> {
    await this.fh.close()
    if (this.written === this.windows) {
      await rename(this.tmp, this.path)
      return true
    }
    await rm(this.tmp, { force: true })
    return false
  }
}

export function cachePath(dir: string, key: string): string {
  return join(dir, `${key}.qslp`)
}

/**
 * Removes the least recently used cache files until `incoming` more bytes fit in `budget`,
 * so repeated evaluations of different texts or models never fill the disk.
 */
export async function pruneCache(dir: string, incoming: number, budget: number): Promise<void> {
  let all: string[]
  try {
    all = await readdir(dir)
  } catch {
    return
  }
  // Partial files of a run that was killed would escape the budget forever: an hour after
  // their last write nobody is appending to them.
  for (const n of all.filter((n) => n.includes('.qslp.partial-'))) {
    const st = await lstat(join(dir, n)).catch(() => null)
    if (st?.isFile() && Date.now() - st.mtimeMs > STALE_PARTIAL_MS) await rm(join(dir, n), { force: true })
  }
  const names = all.filter((n) => n.endsWith('.qslp'))
  const files = (
    await Promise.all(
      names.map(async (n) => {
        try {
          const st = await lstat(join(dir, n))
          return st.isFile() ? { path: join(dir, n), size: st.size, used: Math.max(st.atimeMs, st.mtimeMs) } : null
        } catch {
          return null
        }
      }),
    )
  ).filter((f): f is { path: string; size: number; used: number } => f !== null)
  files.sort((a, b) => a.used - b.used)
  let total = files.reduce((t, f) => t + f.size, 0)
  for (const f of files) {
    if (total + incoming <= budget) break
    await rm(f.path, { force: true })
    total -= f.size
  }
}
