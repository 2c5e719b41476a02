import { createHash } from 'node:crypto'
import { openRegularFile } from './regular-file'

/** Bytes hashed from the start of each file: the header of every supported format, or most of it. */
const HEAD_BYTES = 64 << 10

/**
 * Identity of a set of files' bytes, for cache keys: each file's path, size, mtime and a
 * SHA-256 of its first 64 KiB (where safetensors, GGUF and ONNX keep their headers), so a
 * file rewritten with the same size and a restored mtime still gets a new identity when its
 * header changed. Tensor bytes beyond the first 64 KiB are not read: that would cost as much
 * as recomputing. Throws FileAccessError (naming the file) when one is missing or not a regular file.
 */
export async function filesFingerprint(files: readonly string[]): Promise<string> {
  const parts = await Promise.all(files.map(fileFingerprint))
  return parts.join('\u0001')
}

async function fileFingerprint(file: string): Promise<string> {
  const { handle: fh, info } = await openRegularFile(file)
  try {
    const head = Buffer.alloc(Math.min(HEAD_BYTES, info.size))
    let got = 0
    while (got < head.length) {
      const { bytesRead } = await fh.read(head, got, head.length - got, got)
      if (bytesRead === 0) break
      got += bytesRead
    }
    const digest = createHash('sha256').update(head.subarray(0, got)).digest('hex').slice(0, 32)
    return `${file}\u0000${info.size}\u0000${info.mtimeMs}\u0000${digest}`
  } finally {
    await fh.close()
  }
}
