import { constants, type Stats } from 'node:fs'
import { open, stat, type FileHandle } from 'node:fs/promises'

/**
 * Every file the engine reads (model weights, config.json, tokenizer.json, index files, ONNX
 * external data, evaluation text) is opened through here, because opening anything else can
 * block: open(2) on a FIFO waits for a writer, and each such open holds one of libuv's four
 * pool threads forever, so four of them stall every later file operation of the process.
 *
 * Symlinks are followed (Hugging Face cache folders are symlinks to blobs); what they point
 * to must be a regular file. The check is made twice: a stat before opening gives the clear
 * error, and the open itself is non-blocking and re-checked with fstat, so a file swapped for
 * a FIFO in between cannot block either.
 */

/** Raised for a path that is missing, unreadable or not a regular file; the message names it. */
export class FileAccessError extends Error {
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`${path}: ${problem}`)
    this.name = 'FileAccessError'
  }
}

/** "a FIFO", "a directory" …: what a non-regular file is, for messages. */
export function describeFileKind(info: Stats): string {
  if (info.isFile()) return 'a regular file'
  if (info.isDirectory()) return 'a directory'
  if (info.isFIFO()) return 'a FIFO'
  if (info.isSocket()) return 'a socket'
  if (info.isCharacterDevice()) return 'a character device'
  if (info.isBlockDevice()) return 'a block device'
  return 'not a regular file'
}

function notRegular(path: string, info: Stats): FileAccessError {
  return new FileAccessError(path, `not a regular file (${describeFileKind(info)})`)
}

/** Throws FileAccessError unless `path` (symlinks followed) is a regular file; returns its stats. */
export async function assertRegularFile(path: string): Promise<Stats> {
  let info: Stats
  try {
    info = await stat(path)
  } catch (err) {
    throw new FileAccessError(path, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : `cannot read: ${(err as Error).message}`)
  }
  if (!info.isFile()) throw notRegular(path, info)
  return info
}

/** True if `path` (symlinks followed) is a regular file; false for missing or other kinds. */
export async function isRegularFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile()
  } catch {
    return false
  }
}

// O_NONBLOCK makes open(2) of a FIFO return at once; on a regular file it changes nothing.
// Windows has no FIFOs of this kind and no such flag.
const READ_FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0)

/** Opens a regular file for reading, never blocking on a FIFO or device; the caller closes it. */
export async function openRegularFile(path: string): Promise<{ handle: FileHandle; info: Stats }> {
  await assertRegularFile(path)
  let handle: FileHandle
  try {
    handle = await open(path, READ_FLAGS)
  } catch (err) {
    throw new FileAccessError(path, `cannot open: ${(err as Error).message}`)
  }
  try {
    const info = await handle.stat()
    if (!info.isFile()) throw notRegular(path, info)
    return { handle, info }
  } catch (err) {
    await handle.close()
    throw err
  }
}

/**
 * The whole text of a small regular file (JSON sidecars, evaluation text). `maxBytes` bounds
 * what is read into memory, so a multi-GB file named config.json is refused, not loaded.
 */
export async function readRegularTextFile(path: string, maxBytes: number): Promise<string> {
  const { handle, info } = await openRegularFile(path)
  try {
    if (info.size > maxBytes) {
      throw new FileAccessError(path, `file is ${info.size} bytes, more than the ${maxBytes} bytes allowed for it`)
    }
    const buf = Buffer.alloc(info.size)
    let done = 0
    while (done < buf.length) {
      const { bytesRead } = await handle.read(buf, done, buf.length - done, done)
      if (bytesRead === 0) throw new FileAccessError(path, 'file shrank while it was read')
      done += bytesRead
    }
    return buf.toString('utf8')
  } finally {
    await handle.close()
  }
}
