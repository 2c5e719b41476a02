import { stat, type FileHandle } from 'node:fs/promises'
import { ModelFormatError } from '../common/errors'
import { FileAccessError, openRegularFile } from './regular-file'

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
    try {
      const { handle, info } = await openRegularFile(path)
      return new FileByteSource(path, info.size, info.mtimeMs, handle)
    } catch (err) {
      if (err instanceof FileAccessError) throw new ModelFormatError(path, null, err.problem)
      throw err
    }
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
