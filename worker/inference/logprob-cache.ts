import { createHash } from 'node:crypto'
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * The base model's log-probabilities for KL divergence, cached on disk compactly so a
 * quantizer sweep computes them once. Per predicted position the full distribution is kept
 * (KL needs all of it), as in llama.cpp's --kl-divergence-base: 16-bit codes on a linear
 * scale from the row's max down to max − 24 nats (rarer tokens are clamped there; each has
 * p < 4e-11), i.e. a step ≤ 3.7e-4 nats, plus the exact top-1 token and NLL.
 *
 * File: 64-byte header, then per window [argmax int32 × ctx][nll f32 × ctx]
 * [ctx rows of (min f32, step f32, V × uint16)] — fixed size, so any window is one read.
 */
const MAGIC = 0x504c5351 // 'QSLP'
const VERSION = 1
const HEADER_BYTES = 64
const RANGE_NATS = 24

export interface CachedWindow {
  logprobs: Float32Array
  argmax: Int32Array
  nll: Float32Array
}

export function windowBytes(ctx: number, vocab: number): number {
  return ctx * 8 + ctx * (8 + 2 * vocab)
}

export function cacheBytes(ctx: number, vocab: number, windows: number): number {
  return HEADER_BYTES + windows * windowBytes(ctx, vocab)
}

/** Cache file name from what determines the base log-probs: the model's bytes, ctx and the tokens. */
export function cacheKey(modelFingerprint: string, ctx: number, vocab: number, windows: readonly ArrayLike<number>[]): string {
  const h = createHash('sha256')
  h.update(`v${VERSION}\u0000${modelFingerprint}\u0000${ctx}\u0000${vocab}\u0000${windows.length}\u0000`)
  for (const w of windows) h.update(new Uint8Array(Int32Array.from(w).buffer))
  return h.digest('hex').slice(0, 40)
}

/** Identity of a model's bytes: path, size and mtime of each file. */
export async function fingerprintFiles(files: readonly string[]): Promise<string> {
  const parts = await Promise.all(files.map(async (f) => `${f}\u0000${(await stat(f)).size}\u0000${(await stat(f)).mtimeMs}`))
  return parts.join('\u0001')
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

function header(ctx: number, vocab: number, windows: number): Uint8Array {
  const h = new Uint8Array(HEADER_BYTES)
  const dv = new DataView(h.buffer)
  dv.setUint32(0, MAGIC, true)
  dv.setUint32(4, VERSION, true)
  dv.setUint32(8, ctx, true)
  dv.setUint32(12, vocab, true)
  dv.setUint32(16, windows, true)
  return h
}

/** Reads windows of a complete cache file; null when there is no valid file for this key. */
export class LogprobCacheReader {
  private constructor(
    private readonly fh: FileHandle,
    readonly ctx: number,
    readonly vocab: number,
    readonly windows: number,
  ) {}

  static async open(path: string, ctx: number, vocab: number, windows: number): Promise<LogprobCacheReader | null> {
    let fh: FileHandle
    try {
      fh = await open(path, 'r')
    } catch {
      return null
    }
    const h = new Uint8Array(HEADER_BYTES)
    const { bytesRead } = await fh.read(h, 0, HEADER_BYTES, 0)
    const dv = new DataView(h.buffer)
    const size = (await fh.stat()).size
    const ok =
      bytesRead === HEADER_BYTES &&
      dv.getUint32(0, true) === MAGIC &&
      dv.getUint32(4, true) === VERSION &&
      dv.getUint32(8, true) === ctx &&
      dv.getUint32(12, true) === vocab &&
      dv.getUint32(16, true) === windows &&
      size === cacheBytes(ctx, vocab, windows)
    if (!ok) {
      await fh.close()
      return null
    }
    return new LogprobCacheReader(fh, ctx, vocab, windows)
  }

  async read(index: number, into?: Float32Array): Promise<CachedWindow> {
    const n = windowBytes(this.ctx, this.vocab)
    const bytes = new Uint8Array(n)
    const { bytesRead } = await this.fh.read(bytes, 0, n, HEADER_BYTES + index * n)
    if (bytesRead !== n) throw new Error(`logprob cache: window ${index} is truncated`)
    return decodeWindow(this.ctx, this.vocab, bytes, into)
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
    await mkdir(dir, { recursive: true })
    const path = join(dir, `${key}.qslp`)
    const tmp = `${path}.partial-${process.pid}-${Date.now()}`
    const fh = await open(tmp, 'w')
    await fh.write(header(ctx, vocab, windows), 0, HEADER_BYTES, 0)
    return new LogprobCacheWriter(fh, tmp, path, ctx, vocab, windows)
  }

  async append(w: CachedWindow): Promise<void> {
    const bytes = encodeWindow(this.ctx, this.vocab, w)
    await this.fh.write(bytes, 0, bytes.length, HEADER_BYTES + this.written * bytes.length)
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
  let names: string[]
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.qslp'))
  } catch {
    return
  }
  const files = (
    await Promise.all(
      names.map(async (n) => {
        try {
          const st = await stat(join(dir, n))
          return { path: join(dir, n), size: st.size, used: Math.max(st.atimeMs, st.mtimeMs) }
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
