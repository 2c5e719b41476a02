import { dirname, isAbsolute, join, relative, resolve, sep, win32 } from 'node:path'
import { FileByteSource } from '../../io/byte-source'
import { isRegularFile } from '../../io/regular-file'
import { elementCount, matrixShape, shapeProblem, type ModelFormat, type OpenedModel, type TensorEntry } from '../contract'
import { decodePlain } from '../dtypes'
import { ModelFormatError } from '../../common/errors'
import { byteSize, decodeLE, ELEM_BYTES, ELEM_TYPES, TYPED_FIELDS, varintConverter, type ElemType } from './dtypes'
import { dequantMatMulNBitsRows, matMulNBitsEntry, matMulNBitsSummary, type MatMulNBitsInfo, type OperandReader } from './matmulnbits'
import {
  DATA_LOCATION_EXTERNAL,
  nodeLabel,
  parseGraphProto,
  parseModelProto,
  type OnnxNode,
  type Range,
  type TensorProtoInfo,
} from './messages'
import { decodePackedVarints, WireScanner } from './protobuf-wire'

/**
 * ONNX reader. An .onnx file is one protobuf ModelProto (onnx/onnx.proto); tensors live in
 * GraphProto.initializer as TensorProto with their bytes in raw_data, in a typed repeated field
 * (float_data, int32_data, …) or in an external file (data_location = EXTERNAL). The graph is
 * scanned field by field through a small window (see protobuf-wire.ts, onnx-messages.ts):
 * tensor payloads are recorded as byte ranges, never read at open. Nodes are small and parsed
 * fully, because they tell which MatMul each anonymous weight feeds, and where MatMulNBits packs
 * a 2..8-bit weight (onnx-matmulnbits.ts).
 */

/** Where a tensor's values come from. */
type Storage =
  | { kind: 'bytes'; file: string; offset: number; length: number }
  | { kind: 'packed'; field: number; offset: number; length: number }
  | { kind: 'nbits'; q: MatMulNBitsInfo<Slot> }
  | { kind: 'none'; why: string; stored: { file: string; offset: number; length: number } | null }

interface Slot {
  entry: TensorEntry
  storage: Storage
  /** Elements per dims (decodable stored tensors). */
  elements: number
  /** Set once a varint-packed field's element count was checked against dims. */
  countChecked?: boolean
}

const MATMUL_OPS = new Set(['MatMul', 'Gemm', 'MatMulNBits'])
/** One-step producers between a stored weight and its MatMul. */
const PASS_THROUGH_OPS = new Set(['Transpose', 'Cast', 'DequantizeLinear'])
const ARCHITECTURE_KEYS = ['architecture', 'model_type', 'general.architecture']

// ---------- opening ----------

/** Resolves an external_data location inside the model folder; absolute paths and '..' escapes are refused. */
function externalPath(modelPath: string, tensor: string, location: string): string {
  const dir = dirname(modelPath)
  const loc = location.replace(/\\/g, '/')
  if (loc === '') throw new ModelFormatError(modelPath, tensor, 'external_data has an empty location')
  if (isAbsolute(loc) || win32.isAbsolute(location)) {
    throw new ModelFormatError(modelPath, tensor, `external_data location '${location}' is an absolute path; ONNX requires a path relative to the model folder`)
  }
  const abs = resolve(dir, loc)
  const rel = relative(dir, abs)
  if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw new ModelFormatError(modelPath, tensor, `external_data location '${location}' escapes the model folder ${dir}`)
  }
  return abs
}

function parseExternalInt(modelPath: string, tensor: string, key: string, text: string | undefined): number | null {
  if (text === undefined) return null
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(Number(text))) {
    throw new ModelFormatError(modelPath, tensor, `external_data ${key} '${text}' is not a non-negative integer`)
  }
  return Number(text)
}

export async function openOnnx(path: string): Promise<OpenedModel> {
  const abs = resolve(path)
  const src = await FileByteSource.open(abs)
  const external = new Map<string, FileByteSource>()
  try {
    return await readModel(abs, src, external)
  } catch (err) {
    await src.close()
    for (const s of external.values()) await s.close()
    throw err
  }
}

async function readModel(abs: string, src: FileByteSource, external: Map<string, FileByteSource>): Promise<OpenedModel> {
  const scan = new WireScanner(src)
  const model = await parseModelProto(scan)
  const graph = await parseGraphProto(scan, model.graph)
  const { nodes, initializers: infos } = graph

  const slots = new Map<string, Slot>()
  for (const info of infos) {
    if (slots.has(info.name)) throw new ModelFormatError(abs, info.name, 'duplicate initializer name')
    slots.set(info.name, await storedSlot(abs, external, info))
  }

  const consumerOps = linkConsumers(nodes, slots)
  const nbits: Record<string, unknown>[] = []
  for (const node of nodes) {
    if (node.opType !== 'MatMulNBits' || node.domain !== 'com.microsoft') continue
    const v = matMulNBitsEntry(abs, node, slots)
    if (!v) continue
    if (slots.has(v.entry.name)) throw new ModelFormatError(abs, v.entry.name, 'virtual tensor name collides with an initializer')
    slots.set(v.entry.name, { entry: v.entry, storage: { kind: 'nbits', q: v.q }, elements: v.elements })
    nbits.push(matMulNBitsSummary(v.entry.name, v.q))
  }

  const props = model.props
  const architecture = ARCHITECTURE_KEYS.map((k) => props[k]).find((v) => v !== undefined && v !== '') ?? null
  const metadata: Record<string, unknown> = {
    irVersion: model.irVersion,
    producer: model.producer,
    producerVersion: model.producerVersion,
    domain: model.domain,
    modelVersion: model.modelVersion,
    opsets: model.opsets,
    graphName: graph.name,
    nodeCount: nodes.length,
    inputs: graph.inputs,
    outputs: graph.outputs,
    metadataProps: props,
    initializerConsumers: consumerOps,
    matMulNBits: nbits,
  }
  if (graph.sparseInitializers) metadata.sparseInitializersSkipped = graph.sparseInitializers

  const beside = join(dirname(abs), 'tokenizer.json')
  const tokenizerPath = (await isRegularFile(beside)) ? beside : null
  return createModel(abs, src, external, slots, metadata, architecture, tokenizerPath)
}

/** Validates one TensorProto and decides where its bytes are. */
async function storedSlot(abs: string, external: Map<string, FileByteSource>, info: TensorProtoInfo): Promise<Slot> {
  const name = info.name
  const fail: (problem: string) => never = (problem) => {
    throw new ModelFormatError(abs, name, problem)
  }
  if (info.dataType === 0) fail('data_type is UNDEFINED (0)')
  if (info.segmented) fail('segmented TensorProto (segment field) is not supported')
  const et: ElemType = ELEM_TYPES[info.dataType] ?? { dtype: `ONNX_DATATYPE_${info.dataType}`, bits: 0, decodable: false }
  const problem = shapeProblem(info.dims)
  if (problem) fail(problem)
  const elements = elementCount(info.dims)
  const expected = byteSize(et, elements)
  const sizeNote = `dims [${info.dims.join(', ')}] × ${et.dtype} need ${expected} bytes`
  let storage: Storage
  let file = abs
  if (info.dataLocation === DATA_LOCATION_EXTERNAL) {
    const location = info.external.get('location')
    if (location === undefined) fail('data_location is EXTERNAL but external_data has no location')
    file = externalPath(abs, name, location)
    let xs = external.get(file)
    if (!xs) {
      try {
        xs = await FileByteSource.open(file)
      } catch (err) {
        return fail(`external data file '${location}' cannot be opened (${file}): ${(err as ModelFormatError).problem ?? String(err)}`)
      }
      external.set(file, xs)
    }
    const offset = parseExternalInt(abs, name, 'offset', info.external.get('offset')) ?? 0
    const length = parseExternalInt(abs, name, 'length', info.external.get('length')) ?? (et.bits ? expected : null)
    if (length === null) fail(`external_data gives no length and ${et.dtype} elements have no fixed size`)
    if (et.bits && length !== expected) fail(`external_data length ${length} does not match: ${sizeNote}`)
    if (offset + length > xs.size) fail(`external data [${offset}, ${offset + length}) runs past the end of '${location}' (${xs.size} bytes)`)
    storage = { kind: 'bytes', file, offset, length }
  } else if (info.raw) {
    if (et.bits && info.raw.length !== expected) fail(`raw_data has ${info.raw.length} bytes but ${sizeNote}`)
    storage = { kind: 'bytes', file: abs, ...info.raw }
  } else if (info.typed) {
    const tf = TYPED_FIELDS[info.typed.field]!
    if (!tf.types.includes(info.dataType)) fail(`${tf.name} present but data_type is ${et.dtype}`)
    const len = info.typed.range.length
    const complex = info.dataType === 14 || info.dataType === 15 ? 2 : 1
    if (tf.wire === 'f32' && len !== elements * 4 * complex) fail(`${tf.name} has ${len / 4} floats but dims need ${elements * complex}`)
    if (tf.wire === 'f64' && len !== elements * 8 * complex) fail(`${tf.name} has ${len / 8} doubles but dims need ${elements * complex}`)
    // A varint takes 1..10 bytes, so the payload bounds the element count; exact count at decode.
    if (tf.wire === 'varint' && et.decodable && (len < elements || len > elements * 10)) {
      fail(`${tf.name} payload of ${len} bytes cannot hold the ${elements} elements dims need`)
    }
    storage = { kind: 'packed', field: info.typed.field, ...info.typed.range }
  } else if (info.stringCount > 0) {
    storage = { kind: 'none', why: 'string tensors hold no numeric data', stored: null }
  } else if (elements === 0) {
    storage = { kind: 'bytes', file: abs, offset: 0, length: 0 }
  } else {
    return fail('has no data: no raw_data, typed *_data field or external_data')
  }
  if (!et.decodable && storage.kind !== 'none') {
    // Listed with its ONNX name; readRaw still returns the stored payload.
    const { offset, length } = storage as Range
    storage = { kind: 'none', why: `${et.dtype} tensors cannot be decoded`, stored: { file, offset, length } }
  }
  const stored: Range = storage.kind === 'none' ? (storage.stored ?? { offset: 0, length: 0 }) : (storage as Range)
  return {
    entry: {
      name,
      dtype: et.dtype,
      shape: info.dims,
      byteLength: stored.length,
      file,
      byteOffset: stored.offset,
      decodable: et.decodable,
    },
    storage,
    elements,
  }
}

/**
 * Sets TensorEntry.alias to the MatMul/Gemm/MatMulNBits node each initializer feeds, directly
 * or through one Transpose/Cast/DequantizeLinear; returns initializer → consumer op chain.
 */
function linkConsumers(nodes: OnnxNode[], slots: Map<string, Slot>): Record<string, string> {
  const consumers = new Map<string, OnnxNode[]>()
  for (const node of nodes) {
    for (const input of node.inputs) {
      if (input === '') continue
      let list = consumers.get(input)
      if (!list) consumers.set(input, (list = []))
      list.push(node)
    }
  }
  const out: Record<string, string> = {}
  for (const [name, slot] of slots) {
    const direct = consumers.get(name) ?? []
    let chain: string | null = null
    for (const c of direct) {
      if (isMatMul(c)) {
        slot.entry.alias = nodeLabel(c)
        chain = c.opType
        break
      }
      if (!PASS_THROUGH_OPS.has(c.opType) || !c.outputs[0]) continue
      const next = (consumers.get(c.outputs[0]) ?? []).find(isMatMul)
      if (next) {
        slot.entry.alias = nodeLabel(next)
        chain = `${c.opType}>${next.opType}`
        break
      }
    }
    const first = direct[0]
    if (chain ?? first) out[name] = chain ?? first!.opType
  }
  return out
}

function isMatMul(n: OnnxNode): boolean {
  if (!MATMUL_OPS.has(n.opType)) return false
  return n.opType === 'MatMulNBits' ? n.domain === 'com.microsoft' : n.domain === '' || n.domain === 'ai.onnx'
}

// ---------- reading ----------

function createModel(
  abs: string,
  src: FileByteSource,
  external: Map<string, FileByteSource>,
  slots: Map<string, Slot>,
  metadata: Record<string, unknown>,
  architecture: string | null,
  tokenizerPath: string | null,
): OpenedModel {
  const sourceOf = (file: string): FileByteSource => (file === abs ? src : external.get(file)!)
  const slot = (name: string): Slot => {
    const s = slots.get(name)
    if (!s) throw new ModelFormatError(abs, name, 'no such tensor')
    return s
  }

  /** Float32 values of elements [start, start+count) of a stored tensor. */
  async function readElements(s: Slot, start: number, count: number): Promise<Float32Array> {
    const st = s.storage
    const t = s.entry
    const out = new Float32Array(count)
    if (st.kind === 'none') throw new ModelFormatError(abs, t.name, st.why)
    if (st.kind === 'nbits') throw new ModelFormatError(abs, t.name, 'internal: MatMulNBits tensors are read by rows')
    if (st.kind === 'bytes') {
      const size = ELEM_BYTES[t.dtype]!
      const bytes = await sourceOf(st.file).read(st.offset + start * size, count * size)
      return decodeLE(t.dtype, bytes, out)
    }
    const tf = TYPED_FIELDS[st.field]!
    if (tf.wire !== 'varint') {
      const size = tf.wire === 'f32' ? 4 : 8
      const bytes = await src.read(st.offset + start * size, count * size)
      return decodePlain(tf.wire === 'f32' ? 'F32' : 'F64', bytes, out)
    }
    const bytes = await src.read(st.offset, st.length)
    const fail = (p: string): never => {
      throw new ModelFormatError(abs, t.name, `${tf.name}: ${p}`)
    }
    if (!s.countChecked) {
      const n = decodePackedVarints(bytes, Infinity, () => {}, fail)
      if (n !== s.elements) fail(`holds ${n} elements but dims [${t.shape.join(', ')}] need ${s.elements}`)
      s.countChecked = true
    }
    const conv = varintConverter(tf.name, t.dtype)
    decodePackedVarints(bytes, start + count, (i, lo, hi) => {
      if (i >= start) out[i - start] = conv(lo, hi)
    }, fail)
    return out
  }

  async function readBytes(s: Slot, start: number, count: number): Promise<Uint8Array> {
    if (s.storage.kind === 'bytes') return sourceOf(s.storage.file).read(s.storage.offset + start, count)
    return Uint8Array.from(await readElements(s, start, count))
  }

  const operands: OperandReader<Slot> = { bytes: readBytes, elements: readElements }

  return {
    format: 'onnx',
    files: [abs, ...external.keys()],
    architecture,
    config: null,
    metadata,
    tensors: [...slots.values()].map((s) => s.entry),
    tokenizerPath,
    async readRows(name, rowStart, rowEnd) {
      const s = slot(name)
      const { rows, cols } = matrixShape(s.entry.shape)
      if (!(Number.isInteger(rowStart) && Number.isInteger(rowEnd) && 0 <= rowStart && rowStart <= rowEnd && rowEnd <= rows)) {
        throw new ModelFormatError(s.entry.file, name, `row range [${rowStart}, ${rowEnd}) outside [0, ${rows})`)
      }
      if (s.storage.kind === 'nbits') return dequantMatMulNBitsRows(s.storage.q, rowStart, rowEnd, operands)
      return readElements(s, rowStart * cols, (rowEnd - rowStart) * cols)
    },
    async readRows64(name, rowStart, rowEnd) {
      const s = slot(name)
      const st = s.storage
      // DOUBLE tensors (raw_data or double_data: both little-endian float64) are read exactly.
      if (s.entry.dtype === 'F64' && (st.kind === 'bytes' || (st.kind === 'packed' && TYPED_FIELDS[st.field]!.wire === 'f64'))) {
        const { rows, cols } = matrixShape(s.entry.shape)
        if (!(Number.isInteger(rowStart) && Number.isInteger(rowEnd) && 0 <= rowStart && rowStart <= rowEnd && rowEnd <= rows)) {
          throw new ModelFormatError(s.entry.file, name, `row range [${rowStart}, ${rowEnd}) outside [0, ${rows})`)
        }
        const count = (rowEnd - rowStart) * cols
        const bytes = await sourceOf(st.kind === 'bytes' ? st.file : abs).read(st.offset + rowStart * cols * 8, count * 8)
        return decodePlain('F64', bytes, new Float64Array(count))
      }
      return new Float64Array(await this.readRows(name, rowStart, rowEnd))
    },
    readRaw: (name) => readRaw(slot(name)),
    async close() {
      await src.close()
      for (const x of external.values()) await x.close()
    },
  }

  /**
   * Stored bytes. Fixed-width typed fields (float_data, double_data) already have the raw_data
   * layout; varint-packed ones are re-encoded to it, since varints are no layout a caller can use.
   */
  async function readRaw(s: Slot): Promise<Uint8Array> {
    const st = s.storage
    if (st.kind === 'nbits') return readRaw(st.q.B)
    if (st.kind === 'bytes') return sourceOf(st.file).read(st.offset, st.length)
    if (st.kind === 'none') {
      if (!st.stored) throw new ModelFormatError(abs, s.entry.name, `${st.why}; no raw bytes`)
      return sourceOf(st.stored.file).read(st.stored.offset, st.stored.length)
    }
    const tf = TYPED_FIELDS[st.field]!
    if (tf.wire !== 'varint') return src.read(st.offset, st.length)
    const size = ELEM_BYTES[s.entry.dtype]!
    const out = new Uint8Array(s.elements * size)
    const dv = new DataView(out.buffer)
    const n = decodePackedVarints(await src.read(st.offset, st.length), Infinity, (i, lo, hi) => {
      if (i >= s.elements) return
      // lo/hi are the two's-complement bit pattern: exact for int64, low bits for narrower types.
      if (size === 1) out[i] = lo & 0xff
      else if (size === 2) dv.setUint16(i * 2, lo & 0xffff, true)
      else if (size === 4) dv.setUint32(i * 4, lo, true)
      else {
        dv.setUint32(i * 8, lo, true)
        dv.setUint32(i * 8 + 4, hi, true)
      }
    }, (p) => {
      throw new ModelFormatError(abs, s.entry.name, `${tf.name}: ${p}`)
    })
    if (n !== s.elements) throw new ModelFormatError(abs, s.entry.name, `${tf.name} holds ${n} elements but dims need ${s.elements}`)
    return out
  }
}

export const onnxFormat: ModelFormat = {
  id: 'onnx',
  label: 'ONNX',
  extensions: ['.onnx'],
  // Protobuf has no magic bytes; the extension is the only reliable signal.
  match: () => false,
  open: openOnnx,
}
