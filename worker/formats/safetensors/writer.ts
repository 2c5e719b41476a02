import { rename, rm } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { openOutputFile, type OpenOutput } from '../../io/output-file'
import { isPlainDType, PLAIN_DTYPE_BYTES } from '../dtypes'

export interface SafetensorsTensorSpec {
  name: string
  dtype: string
  shape: number[]
}

/**
 * Writes a safetensors file tensor by tensor, so a multi-GB model never sits in memory:
 * the header is computed from the specs, then `fill(spec, i)` supplies each tensor's bytes
 * in order. Output goes to a temporary name and is renamed only when complete, so a crash
 * or cancel never leaves a half-written model under the final name. `options.openOutput`
 * replaces the file system (tests inject a disk that fills up); `options.signal` is checked
 * before each tensor.
 */
export async function writeSafetensorsFile(
  path: string,
  specs: SafetensorsTensorSpec[],
  fill: (spec: SafetensorsTensorSpec, index: number) => Uint8Array | Promise<Uint8Array>,
  metadata?: Record<string, string>,
  options: { openOutput?: OpenOutput; signal?: AbortSignal } = {},
): Promise<void> {
  const header: Record<string, unknown> = {}
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata
  const sizes: number[] = []
  let offset = 0
  for (const spec of specs) {
    if (!isPlainDType(spec.dtype)) throw new Error(`${path}: tensor '${spec.name}': unknown dtype '${spec.dtype}'`)
    if (spec.name in header) throw new Error(`${path}: tensor '${spec.name}' given twice`)
    const size = spec.shape.reduce((a, b) => a * b, 1) * PLAIN_DTYPE_BYTES[spec.dtype]
    header[spec.name] = { dtype: spec.dtype, shape: spec.shape, data_offsets: [offset, offset + size] }
    sizes.push(size)
    offset += size
  }
  let json = JSON.stringify(header)
  // Pad with spaces so the data section starts 8-byte aligned (as the reference writer does).
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8)
  const jsonBytes = Buffer.from(json, 'utf8')
  const lenBytes = Buffer.alloc(8)
  lenBytes.writeBigUInt64LE(BigInt(jsonBytes.length))

  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
  const fh = await (options.openOutput ?? openOutputFile)(tmp)
  try {
    await fh.write(lenBytes)
    await fh.write(jsonBytes)
    for (let i = 0; i < specs.length; i++) {
      options.signal?.throwIfAborted()
      const bytes = await fill(specs[i]!, i)
      if (bytes.length !== sizes[i]) {
        throw new Error(`${path}: tensor '${specs[i]!.name}': fill returned ${bytes.length} bytes, expected ${sizes[i]}`)
      }
      await fh.write(bytes)
    }
    await fh.close()
    await rename(tmp, path)
  } catch (err) {
    await fh.close().catch(() => {})
    await rm(tmp, { force: true })
    throw err
  }
}
