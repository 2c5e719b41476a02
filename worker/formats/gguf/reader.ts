import { resolve } from 'node:path'
import { FileByteSource } from '../../io/byte-source'
import { matrixShape, shapeProblem, type ModelConfig, type ModelFormat, type OpenedModel, type TensorEntry } from '../contract'
import { ModelFormatError } from '../../common/errors'
import { GGML_REMOVED_TYPE_NAMES, ggmlTypeById } from './ggml-types'
import { ggufConfig } from './config'
import { dequantize } from './dequant'
import { decodePlain } from '../dtypes'
import { GGUF_MAGIC, readGgufHeader, type GgufHeader } from './header'

export type { GgufArraySummary, GgufValue } from './header'

/**
 * GGUF v2/v3 reader (llama.cpp's format, spec: ggml/docs/gguf.md). The header is parsed in
 * gguf-header.ts and the ModelConfig derived from its metadata in gguf-config.ts; this file
 * checks the tensor table and reads tensor rows by byte range, dequantizing with gguf-dequant.ts.
 */

/** One readRows call decodes at most this many values (4 GiB of float32). */
const MAX_VALUES_PER_READ = 2 ** 30

interface GgufTensor extends TensorEntry {
  rows: number
  cols: number
  rowBytes: number
}

/** Types, sizes, alignment, bounds and overlaps of every tensor; any violation is an error. */
function buildTensors(file: string, fileSize: number, h: GgufHeader): GgufTensor[] {
  const seen = new Set<string>()
  const out: GgufTensor[] = []
  for (const info of h.infos) {
    const fail = (problem: string): never => {
      throw new ModelFormatError(file, info.name, problem)
    }
    if (seen.has(info.name)) fail('tensor name appears twice in the header')
    seen.add(info.name)
    const type = ggmlTypeById(info.typeId)
    if (!type) {
      const removed = GGML_REMOVED_TYPE_NAMES[info.typeId]
      fail(`unknown ggml type id ${info.typeId}${removed ? ` (${removed}, removed from ggml before GGUF existed)` : ''}`)
    }
    const shape = [...info.ne].reverse()
    const problem = shapeProblem(shape)
    if (problem) fail(problem)
    const { rows, cols } = matrixShape(shape)
    if (cols % type!.blockSize !== 0) {
      fail(`row length ne[0] = ${cols} is not a multiple of the ${type!.name} block size ${type!.blockSize}`)
    }
    const rowBytes = (cols / type!.blockSize) * type!.typeSize
    const byteLength = rowBytes * rows
    if (info.offset % h.alignment !== 0) fail(`data offset ${info.offset} is not a multiple of the alignment ${h.alignment}`)
    const byteOffset = h.dataStart + info.offset
    if (byteOffset > fileSize) {
      fail(`data offset ${info.offset} (byte ${byteOffset} of the file) lies beyond the end of the file (${fileSize} bytes)`)
    }
    if (byteOffset + byteLength > fileSize) {
      fail(`data (bytes ${byteOffset}..${byteOffset + byteLength}) extends past the end of the file (${fileSize} bytes); truncated?`)
    }
    out.push({ name: info.name, dtype: type!.name, shape, byteLength, file, byteOffset, decodable: type!.decodable, rows, cols, rowBytes })
  }
  const byStart = out.filter((t) => t.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset)
  for (let i = 1; i < byStart.length; i++) {
    const prev = byStart[i - 1]!
    const cur = byStart[i]!
    if (cur.byteOffset < prev.byteOffset + prev.byteLength) {
      throw new ModelFormatError(
        file,
        cur.name,
        `data (bytes ${cur.byteOffset}..${cur.byteOffset + cur.byteLength}) overlaps tensor '${prev.name}' (bytes ${prev.byteOffset}..${prev.byteOffset + prev.byteLength})`,
      )
    }
  }
  return out
}

async function openGguf(path: string): Promise<OpenedModel> {
  const file = resolve(path)
  const src = await FileByteSource.open(file)
  let header: GgufHeader
  let tensors: GgufTensor[]
  let config: ModelConfig | null
  const byName = new Map<string, GgufTensor>()
  try {
    header = await readGgufHeader(src, file)
    tensors = buildTensors(file, src.size, header)
    for (const t of tensors) byName.set(t.name, t)
    config = ggufConfig(file, header.metadata, byName)
  } catch (err) {
    await src.close()
    if (err instanceof ModelFormatError) throw err
    // A bug of ours must still name the file rather than surface as a bare TypeError.
    throw new ModelFormatError(file, null, `could not read GGUF header: ${(err as Error).message}`)
  }

  const tensorOf = (name: string): GgufTensor => {
    const t = byName.get(name)
    if (!t) throw new ModelFormatError(file, name, 'no such tensor in this file')
    return t
  }
  /** The stored bytes of rows [rowStart, rowEnd) of a decodable tensor, after checking the range. */
  const rowBytes = async (name: string, rowStart: number, rowEnd: number) => {
    const t = tensorOf(name)
    if (!t.decodable) throw new ModelFormatError(file, name, `cannot decode type ${t.dtype} (listed, but this build has no dequantizer for it)`)
    if (!Number.isInteger(rowStart) || !Number.isInteger(rowEnd) || rowStart < 0 || rowEnd < rowStart || rowEnd > t.rows) {
      throw new ModelFormatError(file, name, `row range [${rowStart}, ${rowEnd}) is outside [0, ${t.rows})`)
    }
    const count = (rowEnd - rowStart) * t.cols
    if (count > MAX_VALUES_PER_READ) {
      throw new ModelFormatError(file, name, `rows [${rowStart}, ${rowEnd}) hold ${count} values, more than one read may decode (${MAX_VALUES_PER_READ}); read fewer rows at a time`)
    }
    return { t, count, bytes: await src.read(t.byteOffset + rowStart * t.rowBytes, (rowEnd - rowStart) * t.rowBytes) }
  }
  const arch = header.metadata['general.architecture']
  return {
    format: 'gguf',
    files: [file],
    architecture: typeof arch === 'string' ? arch : null,
    config,
    // GGUF.* are gguf-py's names for the header fields; they cannot clash with real keys.
    metadata: {
      'GGUF.version': header.version,
      'GGUF.tensor_count': tensors.length,
      'GGUF.kv_count': header.kvCount,
      ...header.metadata,
    },
    tensors: tensors.map(({ rows: _r, cols: _c, rowBytes: _b, ...entry }) => entry),
    tokenizerPath: null,
    async readRows(name, rowStart, rowEnd) {
      const { t, bytes, count } = await rowBytes(name, rowStart, rowEnd)
      return dequantize(t.dtype, bytes, count)
    },
    async readRows64(name, rowStart, rowEnd) {
      const { t, bytes, count } = await rowBytes(name, rowStart, rowEnd)
      // F64 stays exact; every other type dequantizes to float32 values, exact in float64.
      return t.dtype === 'F64' ? decodePlain('F64', bytes, new Float64Array(count)) : new Float64Array(dequantize(t.dtype, bytes, count))
    },
    async readRaw(name) {
      const t = tensorOf(name)
      return src.read(t.byteOffset, t.byteLength)
    },
    close: () => src.close(),
  }
}

export const ggufFormat: ModelFormat = {
  id: 'gguf',
  label: 'GGUF',
  extensions: ['.gguf'],
  match(head: Uint8Array): boolean {
    return head.length >= 4 && GGUF_MAGIC.every((b, i) => head[i] === b)
  },
  open: openGguf,
}
