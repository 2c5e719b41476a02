import { createHash, randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

/**
 * Cache entries that say what they are and prove they are whole. Each file is
 *
 *   QSCACHE1\n
 *   {"kind":…,"version":…,"key":…,"length":…,"sha256":…}\n
 *   <length payload bytes>
 *
 * A reader trusts the payload only when kind, version and key are the ones it asked for and
 * the payload's length and SHA-256 match: a truncated, foreign, stale or edited entry reads
 * as `invalid` and the caller recomputes. Writes go to a temporary name and are renamed into
 * place, so a reader never sees half an entry.
 */

const MAGIC = 'QSCACHE1\n'
/** Longest header line accepted (the key is the longest part). */
const MAX_HEADER_BYTES = 64 << 10

export interface EntryIdentity {
  /** Which cache wrote it ('stats', 'logprobs' …). */
  kind: string
  /** Bumped when the payload's meaning changes. */
  version: number
  /** The full cache key (file names are only a hash of it). */
  key: string
}

export type VerifiedRead = { status: 'ok'; payload: Uint8Array } | { status: 'missing' } | { status: 'invalid'; reason: string }

export function encodeVerifiedEntry(id: EntryIdentity, payload: Uint8Array): Uint8Array {
  const sha256 = createHash('sha256').update(payload).digest('hex')
  const header = JSON.stringify({ kind: id.kind, version: id.version, key: id.key, length: payload.length, sha256 })
  const head = Buffer.from(`${MAGIC}${header}\n`, 'utf8')
  return Buffer.concat([head, payload])
}

/** Checks `bytes` (a whole file) against `id`; the payload is a view into `bytes`. */
export function decodeVerifiedEntry(bytes: Uint8Array, id: EntryIdentity): VerifiedRead {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (buf.length < MAGIC.length || buf.toString('latin1', 0, MAGIC.length) !== MAGIC) return { status: 'invalid', reason: 'not a Quantscope cache entry' }
  const eol = buf.indexOf(10, MAGIC.length)
  if (eol < 0 || eol - MAGIC.length > MAX_HEADER_BYTES) return { status: 'invalid', reason: 'no header line' }
  let header: { kind?: unknown; version?: unknown; key?: unknown; length?: unknown; sha256?: unknown }
  try {
    header = JSON.parse(buf.toString('utf8', MAGIC.length, eol))
  } catch {
    return { status: 'invalid', reason: 'header is not JSON' }
  }
  if (header.kind !== id.kind) return { status: 'invalid', reason: `kind ${String(header.kind)}, expected ${id.kind}` }
  if (header.version !== id.version) return { status: 'invalid', reason: `version ${String(header.version)}, expected ${id.version}` }
  if (header.key !== id.key) return { status: 'invalid', reason: 'written for another key' }
  const payload = new Uint8Array(buf.buffer, buf.byteOffset + eol + 1, buf.length - eol - 1)
  if (header.length !== payload.length) return { status: 'invalid', reason: `payload is ${payload.length} bytes, header says ${String(header.length)} (truncated?)` }
  if (createHash('sha256').update(payload).digest('hex') !== header.sha256) return { status: 'invalid', reason: 'checksum mismatch' }
  return { status: 'ok', payload }
}

/**
 * Reads and verifies one entry. Never follows a symlink, never opens anything but a regular
 * file (a FIFO would block forever), never reads more than `maxBytes`.
 */
export async function readVerifiedFile(path: string, id: EntryIdentity, maxBytes: number): Promise<VerifiedRead> {
  let fh
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return { status: 'missing' }
    return { status: 'invalid', reason: `cannot open: ${code ?? (err as Error).message}` }
  }
  try {
    const info = await fh.stat()
    if (!info.isFile()) return { status: 'invalid', reason: 'not a regular file' }
    if (info.size > maxBytes) return { status: 'invalid', reason: `${info.size} bytes, more than the ${maxBytes} allowed` }
    const bytes = Buffer.alloc(info.size)
    let got = 0
    while (got < bytes.length) {
      const { bytesRead } = await fh.read(bytes, got, bytes.length - got, got)
      if (bytesRead === 0) break
      got += bytesRead
    }
    return decodeVerifiedEntry(bytes.subarray(0, got), id)
  } finally {
    await fh.close()
  }
}

/**
 * Writes an entry atomically: a private temporary file in the same folder (mode 0600,
 * exclusive create, so a planted name is never written through), then rename over `path`.
 * Returns the bytes written.
 */
export async function writeVerifiedFile(path: string, id: EntryIdentity, payload: Uint8Array): Promise<number> {
  const bytes = encodeVerifiedEntry(id, payload)
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  try {
    await fh.writeFile(bytes)
    await fh.close()
    await rename(tmp, path)
  } catch (err) {
    await fh.close().catch(() => {})
    await rm(tmp, { force: true })
    throw err
  }
  return bytes.length
}
