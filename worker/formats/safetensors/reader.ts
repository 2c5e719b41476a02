import { basename, dirname, join, resolve } from 'node:path'
import { FileByteSource } from '../../io/byte-source'
import { FileAccessError, readRegularTextFile } from '../../io/regular-file'
import { ModelFormatError } from '../../common/errors'
import { matrixShape, shapeProblem, type ModelFormat, type OpenedModel, type TensorEntry } from '../contract'
import { findDuplicateKey } from '../json-keys'
import { decodePlain, isPlainDType, PLAIN_DTYPE_BYTES, type PlainDType } from '../dtypes'

/**
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`, then the
 * data section; offsets are relative to the data section. Spec: huggingface/safetensors.
 * Sharded models add `model.safetensors.index.json` = `{metadata, weight_map: {name: file}}`.
 */

/** The reference implementation refuses headers over 100 MB; so do we. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024

export interface SafetensorsHeader {
  tensors: TensorEntry[]
  metadata: Record<string, string>
  dataStart: number
}

/** Parses and validates one safetensors file's header (reads only the header bytes). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const src = await FileByteSource.open(path)
  try {
    if (src.size < 8) throw new ModelFormatError(path, null, `file is ${src.size} bytes, too short for a safetensors header`)
    const lenBytes = await src.read(0, 8)
    const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true)
    if (headerLen > BigInt(MAX_HEADER_BYTES)) {
      throw new ModelFormatError(path, null, `header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`)
    }
    const n = Number(headerLen)
    if (8 + n > src.size) {
      throw new ModelFormatError(path, null, `header length ${n} runs past the end of the ${src.size}-byte file (truncated?)`)
    }
    const text = new TextDecoder('utf-8', { fatal: false }).decode(await src.read(8, n))
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      throw new ModelFormatError(path, null, `header is not valid JSON: ${(err as Error).message}`)
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new ModelFormatError(path, null, 'header JSON is not an object')
    }
    const duplicate = findDuplicateKey(text)
    if (duplicate) {
      const [first, ...rest] = duplicate
      throw duplicate.length === 1
        ? new ModelFormatError(path, first!, 'tensor appears twice in the header')
        : new ModelFormatError(path, first === '__metadata__' ? null : first!, `key '${rest.join("' → '")}' appears twice${first === '__metadata__' ? ' in __metadata__' : ''}`)
    }
    const dataStart = 8 + n
    const dataSize = src.size - dataStart
    const tensors: TensorEntry[] = []
    let metadata: Record<string, string> = {}
    for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = parseMetadata(path, raw)
        continue
      }
      tensors.push(parseTensorEntry(path, name, raw, dataStart, dataSize))
    }
    checkNoOverlap(path, tensors, dataStart)
    return { tensors, metadata, dataStart }
  } finally {
    await src.close()
  }
}

function parseMetadata(path: string, raw: unknown): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ModelFormatError(path, null, '__metadata__ is not an object of strings')
  }
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw new ModelFormatError(path, null, `__metadata__['${k}'] is not a string`)
    out[k] = v
  }
  return out
}

function parseTensorEntry(path: string, name: string, raw: unknown, dataStart: number, dataSize: number): TensorEntry {
  if (typeof raw !== 'object' || raw === null) throw new ModelFormatError(path, name, 'header entry is not an object')
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>
  if (typeof dtype !== 'string') throw new ModelFormatError(path, name, 'missing dtype')
  if (!isPlainDType(dtype)) throw new ModelFormatError(path, name, `unknown dtype '${dtype}'`)
  if (!Array.isArray(shape)) throw new ModelFormatError(path, name, `invalid shape ${JSON.stringify(shape)}`)
  const problem = shapeProblem(shape as number[])
  if (problem) throw new ModelFormatError(path, name, problem)
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new ModelFormatError(path, name, `invalid data_offsets ${JSON.stringify(offsets)}`)
  }
  const [begin, end] = offsets as [number, number]
  if (end < begin) throw new ModelFormatError(path, name, `data_offsets [${begin}, ${end}] end before they begin`)
  if (end > dataSize) {
    throw new ModelFormatError(path, name, `data_offsets [${begin}, ${end}] run past the data section of ${dataSize} bytes (truncated file?)`)
  }
  const elements = (shape as number[]).reduce((a, b) => a * b, 1)
  const expected = elements * PLAIN_DTYPE_BYTES[dtype]
  if (expected !== end - begin) {
    throw new ModelFormatError(path, name, `shape [${shape.join(', ')}] × ${dtype} needs ${expected} bytes but data_offsets span ${end - begin}`)
  }
  return {
    name,
    dtype,
    shape: shape as number[],
    byteLength: end - begin,
    file: path,
    byteOffset: dataStart + begin,
    decodable: true,
  }
}

function checkNoOverlap(path: string, tensors: TensorEntry[], dataStart: number): void {
  const sorted = tensors.filter((t) => t.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset)
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!
    const cur = sorted[i]!
    if (cur.byteOffset < prev.byteOffset + prev.byteLength) {
      throw new ModelFormatError(
        path,
        cur.name,
        `data_offsets overlap tensor '${prev.name}' ([${prev.byteOffset - dataStart}, ${prev.byteOffset - dataStart + prev.byteLength}])`,
      )
    }
  }
}

export interface SafetensorsIndex {
  metadata: Record<string, unknown>
  weightMap: Map<string, string>
}

/** Reads `*.safetensors.index.json`: `{metadata?, weight_map: {tensor: shard file}}`. */
export async function readSafetensorsIndex(path: string): Promise<SafetensorsIndex> {
  let text: string
  try {
    text = await readRegularTextFile(path, MAX_HEADER_BYTES)
  } catch (err) {
    throw new ModelFormatError(path, null, err instanceof FileAccessError ? err.problem : `cannot read index: ${(err as Error).message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new ModelFormatError(path, null, `index is not valid JSON: ${(err as Error).message}`)
  }
  // Two entries for one tensor would otherwise leave only the last shard it names.
  const duplicate = findDuplicateKey(text)
  if (duplicate?.[0] === 'weight_map' && duplicate.length === 2) {
    throw new ModelFormatError(path, duplicate[1]!, 'weight_map names this tensor twice')
  }
  if (duplicate) throw new ModelFormatError(path, null, `key '${duplicate.join("' → '")}' appears twice`)
  const map = (json as { weight_map?: unknown })?.weight_map
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new ModelFormatError(path, null, 'index has no weight_map object')
  }
  const weightMap = new Map<string, string>()
  for (const [tensor, file] of Object.entries(map)) {
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\') || file === '..') {
      throw new ModelFormatError(path, tensor, `weight_map names an invalid shard file ${JSON.stringify(file)}`)
    }
    weightMap.set(tensor, file)
  }
  const metadata = (json as { metadata?: Record<string, unknown> }).metadata ?? {}
  return { metadata, weightMap }
}

/**
 * Opens a single .safetensors file, or every shard named by an index.json. Sharded models
 * check that each tensor the index names lives in the shard the index says.
 */
export async function openSafetensors(path: string): Promise<OpenedModel> {
  const abs = resolve(path)
  let files: string[]
  let index: SafetensorsIndex | null = null
  if (abs.endsWith('.json')) {
    index = await readSafetensorsIndex(abs)
    const shardNames = [...new Set(index.weightMap.values())].sort()
    if (shardNames.length === 0) throw new ModelFormatError(abs, null, 'index weight_map is empty')
    files = shardNames.map((f) => join(dirname(abs), f))
  } else {
    files = [abs]
  }
  const tensors: TensorEntry[] = []
  const metadata: Record<string, unknown> = {}
  const seen = new Map<string, string>()
  for (const file of files) {
    const header = await readSafetensorsHeader(file)
    Object.assign(metadata, header.metadata)
    for (const t of header.tensors) {
      const prev = seen.get(t.name)
      if (prev) throw new ModelFormatError(file, t.name, `tensor also present in ${basename(prev)}`)
      seen.set(t.name, file)
      if (index && index.weightMap.get(t.name) !== basename(file)) {
        throw new ModelFormatError(file, t.name, `index maps this tensor to '${index.weightMap.get(t.name) ?? '(nothing)'}'`)
      }
      tensors.push(t)
    }
  }
  if (index) {
    for (const name of index.weightMap.keys()) {
      if (!seen.has(name)) throw new ModelFormatError(abs, name, `index names this tensor but shard '${index.weightMap.get(name)}' lacks it`)
    }
    Object.assign(metadata, index.metadata)
  }
  return createSafetensorsModel(files, tensors, metadata)
}

function createSafetensorsModel(files: string[], tensors: TensorEntry[], metadata: Record<string, unknown>): OpenedModel {
  const byName = new Map(tensors.map((t) => [t.name, t]))
  const sources = new Map<string, Promise<FileByteSource>>()
  const source = (file: string): Promise<FileByteSource> => {
    let s = sources.get(file)
    if (!s) {
      s = FileByteSource.open(file)
      sources.set(file, s)
    }
    return s
  }
  const entry = (name: string): TensorEntry => {
    const t = byName.get(name)
    if (!t) throw new ModelFormatError(files[0]!, name, 'no such tensor')
    return t
  }
  const rowBytes = async (name: string, rowStart: number, rowEnd: number) => {
    const t = entry(name)
    const { rows, cols } = matrixShape(t.shape)
    if (!(Number.isInteger(rowStart) && Number.isInteger(rowEnd) && 0 <= rowStart && rowStart <= rowEnd && rowEnd <= rows)) {
      throw new ModelFormatError(t.file, name, `row range [${rowStart}, ${rowEnd}) outside [0, ${rows})`)
    }
    const size = PLAIN_DTYPE_BYTES[t.dtype as PlainDType]
    const count = (rowEnd - rowStart) * cols
    return { t, count, bytes: await (await source(t.file)).read(t.byteOffset + rowStart * cols * size, count * size) }
  }
  return {
    format: 'safetensors',
    files,
    architecture: null,
    config: null,
    metadata,
    tensors,
    tokenizerPath: null,
    async readRows(name, rowStart, rowEnd) {
      const { t, bytes, count } = await rowBytes(name, rowStart, rowEnd)
      return decodePlain(t.dtype as PlainDType, bytes, new Float32Array(count))
    },
    async readRows64(name, rowStart, rowEnd) {
      const { t, bytes, count } = await rowBytes(name, rowStart, rowEnd)
      return decodePlain(t.dtype as PlainDType, bytes, new Float64Array(count))
    },
    async readRaw(name) {
      const t = entry(name)
      return (await source(t.file)).read(t.byteOffset, t.byteLength)
    },
    async readRawRows(name, rowStart, rowEnd) {
      return (await rowBytes(name, rowStart, rowEnd)).bytes
    },
    async close() {
      const all = [...sources.values()]
      sources.clear()
      await Promise.all(all.map(async (p) => (await p.catch(() => null))?.close()))
    },
  }
}

export const safetensorsFormat: ModelFormat = {
  id: 'safetensors',
  label: 'safetensors',
  extensions: ['.safetensors', '.safetensors.index.json'],
  match(head) {
    // An 8-byte length followed by '{' is the only signature the format has.
    return head.length >= 9 && head[8] === 0x7b && head[5] === 0 && head[6] === 0 && head[7] === 0
  },
  open: openSafetensors,
}
