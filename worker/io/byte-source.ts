import { open, stat, type FileHandle } from 'node:fs/promises'
import { ModelFormatError } from '../common/errors'

/**
 * A file read by byte range on demand. Models can be many GB, so nothing reads a whole
 * file: readers parse headers through `read`, and tensors keep (offset, length) pairs.
 *
 * Offsets are JS numbers (exact to 2^53), so files over 4 GB are fine.
 */
export interface ByteSource {
  readonly path: string
  readonly size: number
  /** Reads exactly `length` bytes at `offset`; throws if the file is shorter or changed. */
  read(offset: number, length: number): Promise<Uint8Array>
  close(): Promise<void>
}

export class FileByteSource implements ByteSource {
  private constructor(
    readonly path: string,
    readonly size: number,
    private readonly mtimeMs: number,
    private handle: FileHandle | null,
  ) {}

  static async open(path: string): Promise<FileByteSource> {
    let handle: FileHandle
    try {
      handle = await open(path, 'r')
    } catch (err) {
      throw new ModelFormatError(path, null, `cannot open file: ${(err as Error).message}`)
    }
    const info = await handle.stat()
    if (!info.isFile()) {
      await handle.close()
      throw new ModelFormatError(path, null, 'not a regular file')
    }
    return new FileByteSource(path, info.size, info.mtimeMs, handle)
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    if (!this.handle) throw new ModelFormatError(this.path, null, 'file was closed')
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ModelFormatError(this.path, null, `invalid byte range ${offset}+${length}`)
    }
    if (offset + length > this.size) {
      throw new ModelFormatError(
        this.path,
        null,
        `read past end of file: bytes ${offset}..${offset + length} requested, file has ${this.size} (truncated?)`,
      )
    }
    const out = new Uint8Array(length)
    let done = 0
    while (done < length) {
      const { bytesRead } = await this.handle.read(out, done, length - done, offset + done)
      if (bytesRead === 0) {
        await this.assertUnchanged()
        throw new ModelFormatError(this.path, null, `unexpected end of file at byte ${offset + done}`)
      }
      done += bytesRead
    }
    return out
  }

  /** Netron's habit: stop reading when the file changed on disk under us. */
  async assertUnchanged(): Promise<void> {
    const info = await stat(this.path)
    if (info.size !== this.size || info.mtimeMs !== this.mtimeMs) {
      throw new ModelFormatError(this.path, null, 'file changed on disk while it was open; reopen the model')
    }
  }

  async close(): Promise<void> {
    const h = this.handle
    this.handle = null
    await h?.close()
  }
}

/** Little-endian cursor over an in-memory header buffer, with precise errors on overrun. */
export class ByteCursor {
  private readonly view: DataView
  pos = 0

  constructor(
    readonly bytes: Uint8Array,
    private readonly file: string,
    /** Absolute file offset of bytes[0], so error messages name real positions. */
    private readonly baseOffset = 0,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  }

  get remaining(): number {
    return this.bytes.length - this.pos
  }

  need(n: number, what: string): void {
    if (n < 0 || this.pos + n > this.bytes.length) {
      throw new ModelFormatError(
        this.file,
        null,
        `truncated while reading ${what} at byte ${this.baseOffset + this.pos} (need ${n}, have ${this.remaining})`,
      )
    }
  }

  u8(what = 'u8'): number {
    this.need(1, what)
    return this.view.getUint8(this.pos++)
  }
  i8(what = 'i8'): number {
    this.need(1, what)
    return this.view.getInt8(this.pos++)
  }
  u16(what = 'u16'): number {
    this.need(2, what)
    const v = this.view.getUint16(this.pos, true)
    this.pos += 2
    return v
  }
  i16(what = 'i16'): number {
    this.need(2, what)
    const v = this.view.getInt16(this.pos, true)
    this.pos += 2
    return v
  }
  u32(what = 'u32'): number {
    this.need(4, what)
    const v = this.view.getUint32(this.pos, true)
    this.pos += 4
    return v
  }
  i32(what = 'i32'): number {
    this.need(4, what)
    const v = this.view.getInt32(this.pos, true)
    this.pos += 4
    return v
  }
  f32(what = 'f32'): number {
    this.need(4, what)
    const v = this.view.getFloat32(this.pos, true)
    this.pos += 4
    return v
  }
  f64(what = 'f64'): number {
    this.need(8, what)
    const v = this.view.getFloat64(this.pos, true)
    this.pos += 8
    return v
  }
  /** 64-bit unsigned as a JS number; throws if it exceeds 2^53 (no real file needs more). */
  u64(what = 'u64'): number {
    this.need(8, what)
    const v = this.view.getBigUint64(this.pos, true)
    this.pos += 8
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ModelFormatError(this.file, null, `${what} = ${v} at byte ${this.baseOffset + this.pos - 8} is implausibly large`)
    }
    return Number(v)
  }
  i64(what = 'i64'): number {
    this.need(8, what)
    const v = this.view.getBigInt64(this.pos, true)
    this.pos += 8
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new ModelFormatError(this.file, null, `${what} = ${v} at byte ${this.baseOffset + this.pos - 8} is out of range`)
    }
    return Number(v)
  }
  bytesOf(n: number, what = 'bytes'): Uint8Array {
    this.need(n, what)
    const out = this.bytes.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }
}
