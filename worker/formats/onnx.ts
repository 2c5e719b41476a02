import { stat } from 'node:fs/promises'
import { dirname, isAbsolute, join, relative, resolve, sep, win32 } from 'node:path'
import { FileByteSource } from '../io/byte-source'
import { elementCount, matrixShape, type ModelFormat, type OpenedModel, type TensorEntry } from './contract'
import { bf16ToF32, decodePlain, f16ToF32, fp8e4m3ToF32, fp8e5m2ToF32, isPlainDType } from './dtypes'
import { ModelFormatError } from './errors'
import {
  decodePackedVarints,
  varintToInt64,
  varintToUint64,
  WIRE_I32,
  WIRE_LEN,
  WIRE_VARINT,
  WireScanner,
  type FieldHeader,
} from './protobuf-wire'

/**
 * ONNX reader. An .onnx file is one protobuf ModelProto (onnx/onnx.proto); tensors live in
 * GraphProto.initializer as TensorProto with their bytes in raw_data, in a typed repeated field
 * (float_data, int32_data, …) or in an external file (data_location = EXTERNAL). The graph is
 * scanned field by field through a small window (see protobuf-wire.ts): tensor payloads are
 * recorded as byte ranges, never read at open. Nodes are small and parsed fully, because they
 * tell which MatMul each anonymous weight feeds, and where MatMulNBits packs a 2..8-bit weight.
 */

// Field numbers from onnx/onnx.proto.
const MODEL = { irVersion: 1, producerName: 2, producerVersion: 3, domain: 4, modelVersion: 5, graph: 7, opsetImport: 8, metadataProps: 14 }
const GRAPH = { node: 1, name: 2, initializer: 5, input: 11, output: 12, sparseInitializer: 15 }
const NODE = { input: 1, output: 2, name: 3, opType: 4, attribute: 5, domain: 7 }
const ATTR = { name: 1, f: 2, i: 3, s: 4, floats: 7, ints: 8, type: 20 }
const TENSOR = { dims: 1, dataType: 2, segment: 3, stringData: 6, name: 8, rawData: 9, externalData: 13, dataLocation: 14 }
const DATA_LOCATION_EXTERNAL = 1

/** Typed repeated fields of TensorProto, with the element types each may carry (onnx.proto). */
const TYPED_FIELDS: Record<number, { name: TypedField; wire: 'f32' | 'f64' | 'varint'; types: number[] }> = {
  4: { name: 'float_data', wire: 'f32', types: [1, 14] },
  // int32_data also carries the bit patterns of 16-bit floats and 8/4-bit types.
  5: { name: 'int32_data', wire: 'varint', types: [2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26] },
  7: { name: 'int64_data', wire: 'varint', types: [7] },
  10: { name: 'double_data', wire: 'f64', types: [11, 15] },
  11: { name: 'uint64_data', wire: 'varint', types: [12, 13] },
}
type TypedField = 'float_data' | 'int32_data' | 'int64_data' | 'double_data' | 'uint64_data'

/** TensorProto.DataType → stored dtype name; `bits` per element; undecodable types keep the ONNX name. */
interface ElemType {
  dtype: string
  bits: number
  decodable: boolean
}
const ELEM_TYPES: Record<number, ElemType> = {
  1: { dtype: 'F32', bits: 32, decodable: true },
  2: { dtype: 'U8', bits: 8, decodable: true },
  3: { dtype: 'I8', bits: 8, decodable: true },
  4: { dtype: 'U16', bits: 16, decodable: true },
  5: { dtype: 'I16', bits: 16, decodable: true },
  6: { dtype: 'I32', bits: 32, decodable: true },
  7: { dtype: 'I64', bits: 64, decodable: true },
  8: { dtype: 'STRING', bits: 0, decodable: false },
  9: { dtype: 'BOOL', bits: 8, decodable: true },
  10: { dtype: 'F16', bits: 16, decodable: true },
  11: { dtype: 'F64', bits: 64, decodable: true },
  12: { dtype: 'U32', bits: 32, decodable: true },
  13: { dtype: 'U64', bits: 64, decodable: true },
  14: { dtype: 'COMPLEX64', bits: 64, decodable: false },
  15: { dtype: 'COMPLEX128', bits: 128, decodable: false },
  16: { dtype: 'BF16', bits: 16, decodable: true },
  17: { dtype: 'F8_E4M3', bits: 8, decodable: true },
  18: { dtype: 'FLOAT8E4M3FNUZ', bits: 8, decodable: false },
  19: { dtype: 'F8_E5M2', bits: 8, decodable: true },
  20: { dtype: 'FLOAT8E5M2FNUZ', bits: 8, decodable: false },
  21: { dtype: 'UINT4', bits: 4, decodable: false },
  22: { dtype: 'INT4', bits: 4, decodable: false },
  23: { dtype: 'FLOAT4E2M1', bits: 4, decodable: false },
  24: { dtype: 'FLOAT8E8M0', bits: 8, decodable: false },
  25: { dtype: 'UINT2', bits: 2, decodable: false },
  26: { dtype: 'INT2', bits: 2, decodable: false },
}

/** Bytes per element of each decodable dtype. */
const ELEM_BYTES: Record<string, number> = Object.fromEntries(
  Object.values(ELEM_TYPES)
    .filter((e) => e.decodable)
    .map((e) => [e.dtype, e.bits / 8]),
)

interface Range {
  offset: number
  length: number
}

interface TensorProtoInfo {
  name: string
  dims: number[]
  dataType: number
  raw: Range | null
  typed: { field: number; range: Range } | null
  stringCount: number
  external: Map<string, string>
  dataLocation: number
  segmented: boolean
}

interface Attribute {
  type: number
  f?: number
  i?: number
  s?: string
  floats: number[]
  ints: number[]
}

interface OnnxNode {
  name: string
  opType: string
  domain: string
  inputs: string[]
  outputs: string[]
  attributes: Map<string, Attribute>
}

/** Where a tensor's values come from. */
type Storage =
  | { kind: 'bytes'; file: string; offset: number; length: number }
  | { kind: 'packed'; field: number; offset: number; length: number }
  | { kind: 'nbits'; q: MatMulNBitsInfo }
  | { kind: 'none'; why: string; stored: { file: string; offset: number; length: number } | null }

interface Slot {
  entry: TensorEntry
  storage: Storage
  /** Elements per dims (decodable stored tensors). */
  elements: number
  /** Set once a varint-packed field's element count was checked against dims. */
  countChecked?: boolean
}

interface MatMulNBitsInfo {
  node: string
  K: number
  N: number
  bits: number
  blockSize: number
  blocks: number
  blobSize: number
  B: Slot
  scales: Slot
  zeroPoints: Slot | null
  /** uint8 zero points packed like B, else float zero points (one per block). */
  packedZeroPoints: boolean
}

const MATMUL_OPS = new Set(['MatMul', 'Gemm', 'MatMulNBits'])
/** One-step producers between a stored weight and its MatMul. */
const PASS_THROUGH_OPS = new Set(['Transpose', 'Cast', 'DequantizeLinear'])
const ARCHITECTURE_KEYS = ['architecture', 'model_type', 'general.architecture']

function withTensor(err: unknown, tensor: string): unknown {
  if (err instanceof ModelFormatError && err.tensor === null) return new ModelFormatError(err.file, tensor, err.problem)
  return err
}

// ---------- protobuf messages ----------

async function parseTensorProto(scan: WireScanner, start: number, end: number, info: TensorProtoInfo): Promise<void> {
  for (let pos = start; pos < end; ) {
    const h = await scan.header(pos, end, 'TensorProto')
    pos = h.next
    const typed = TYPED_FIELDS[h.field]
    if (typed) {
      if (h.wireType !== WIRE_LEN) scan.fail(`${typed.name} stored unpacked (one protobuf field per element) is not supported`)
      if (info.typed) scan.fail(`${typed.name} at byte ${h.offset}: a second typed data field or packed chunk is not supported`)
      info.typed = { field: h.field, range: { offset: h.offset, length: h.length } }
      continue
    }
    switch (h.field) {
      case TENSOR.dims:
        if (h.wireType === WIRE_LEN) {
          const bytes = await scan.bytes(h.offset, h.length)
          decodePackedVarints(bytes, Infinity, (_, lo, hi) => info.dims.push(dimValue(scan, varintToInt64(lo, hi))), (p) => scan.fail(`dims: ${p}`))
        } else info.dims.push(dimValue(scan, scan.count(h, 'dims')))
        break
      case TENSOR.dataType:
        info.dataType = scan.count(h, 'data_type')
        break
      case TENSOR.segment:
        info.segmented = true
        break
      case TENSOR.stringData:
        info.stringCount++
        break
      case TENSOR.name:
        info.name = await scan.string(h)
        break
      case TENSOR.rawData:
        scan.expectWire(h, WIRE_LEN, 'raw_data')
        info.raw = { offset: h.offset, length: h.length }
        break
      case TENSOR.externalData: {
        const { key, value } = await parseStringPair(scan, h)
        info.external.set(key, value)
        break
      }
      case TENSOR.dataLocation:
        info.dataLocation = scan.count(h, 'data_location')
        break
    }
  }
}

function dimValue(scan: WireScanner, d: number): number {
  if (!Number.isSafeInteger(d) || d < 0) scan.fail(`invalid dimension ${d}`)
  return d
}

async function parseStringPair(scan: WireScanner, h: FieldHeader): Promise<{ key: string; value: string }> {
  scan.expectWire(h, WIRE_LEN, 'StringStringEntryProto')
  let key = ''
  let value = ''
  for (let pos = h.offset; pos < h.next; ) {
    const f = await scan.header(pos, h.next, 'StringStringEntryProto')
    pos = f.next
    if (f.field === 1) key = await scan.string(f)
    else if (f.field === 2) value = await scan.string(f)
  }
  return { key, value }
}

async function parseNode(scan: WireScanner, h: FieldHeader): Promise<OnnxNode> {
  scan.expectWire(h, WIRE_LEN, 'NodeProto')
  const node: OnnxNode = { name: '', opType: '', domain: '', inputs: [], outputs: [], attributes: new Map() }
  for (let pos = h.offset; pos < h.next; ) {
    const f = await scan.header(pos, h.next, 'NodeProto')
    pos = f.next
    switch (f.field) {
      case NODE.input:
        node.inputs.push(await scan.string(f))
        break
      case NODE.output:
        node.outputs.push(await scan.string(f))
        break
      case NODE.name:
        node.name = await scan.string(f)
        break
      case NODE.opType:
        node.opType = await scan.string(f)
        break
      case NODE.domain:
        node.domain = await scan.string(f)
        break
      case NODE.attribute: {
        scan.expectWire(f, WIRE_LEN, 'AttributeProto')
        const [name, attr] = await parseAttribute(scan, f)
        node.attributes.set(name, attr)
        break
      }
    }
  }
  return node
}

/** Scalar and list attributes (INT, FLOAT, STRING, INTS, FLOATS); tensors and subgraphs are skipped. */
async function parseAttribute(scan: WireScanner, h: FieldHeader): Promise<[string, Attribute]> {
  let name = ''
  const attr: Attribute = { type: 0, floats: [], ints: [] }
  for (let pos = h.offset; pos < h.next; ) {
    const f = await scan.header(pos, h.next, 'AttributeProto')
    pos = f.next
    switch (f.field) {
      case ATTR.name:
        name = await scan.string(f)
        break
      case ATTR.type:
        attr.type = scan.count(f, 'attribute type')
        break
      case ATTR.f:
        scan.expectWire(f, WIRE_I32, 'attribute f')
        attr.f = readF32(await scan.bytes(f.offset, 4), 0)
        break
      case ATTR.i:
        scan.expectWire(f, WIRE_VARINT, 'attribute i')
        attr.i = f.value
        break
      case ATTR.s:
        attr.s = await scan.string(f)
        break
      case ATTR.floats:
        if (f.wireType === WIRE_I32) attr.floats.push(readF32(await scan.bytes(f.offset, 4), 0))
        else {
          scan.expectWire(f, WIRE_LEN, 'attribute floats')
          const b = await scan.bytes(f.offset, f.length)
          if (b.length % 4) scan.fail(`packed attribute floats '${name}' has ${b.length} bytes, not a multiple of 4`)
          for (let i = 0; i < b.length; i += 4) attr.floats.push(readF32(b, i))
        }
        break
      case ATTR.ints:
        if (f.wireType === WIRE_VARINT) attr.ints.push(f.value)
        else {
          scan.expectWire(f, WIRE_LEN, 'attribute ints')
          const b = await scan.bytes(f.offset, f.length)
          decodePackedVarints(b, Infinity, (_, lo, hi) => attr.ints.push(varintToInt64(lo, hi)), (p) => scan.fail(`attribute ints '${name}': ${p}`))
        }
        break
    }
  }
  return [name, attr]
}

function readF32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset + at, 4).getFloat32(0, true)
}

async function valueInfoName(scan: WireScanner, h: FieldHeader): Promise<string> {
  scan.expectWire(h, WIRE_LEN, 'ValueInfoProto')
  for (let pos = h.offset; pos < h.next; ) {
    const f = await scan.header(pos, h.next, 'ValueInfoProto')
    pos = f.next
    if (f.field === 1) return scan.string(f)
  }
  return ''
}

// ---------- opening ----------

function newTensorInfo(): TensorProtoInfo {
  return { name: '', dims: [], dataType: 0, raw: null, typed: null, stringCount: 0, external: new Map(), dataLocation: 0, segmented: false }
}

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

function byteSize(et: ElemType, elements: number): number {
  return Math.ceil((elements * et.bits) / 8)
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
  const meta = { irVersion: null as number | null, producer: '', producerVersion: '', domain: '', modelVersion: null as number | null }
  const opsets: Record<string, number> = {}
  const props: Record<string, string> = {}
  let graph: FieldHeader | null = null
  for (let pos = 0; pos < src.size; ) {
    const h = await scan.header(pos, src.size, 'ModelProto')
    pos = h.next
    switch (h.field) {
      case MODEL.irVersion:
        meta.irVersion = scan.count(h, 'ir_version')
        break
      case MODEL.producerName:
        meta.producer = await scan.string(h)
        break
      case MODEL.producerVersion:
        meta.producerVersion = await scan.string(h)
        break
      case MODEL.domain:
        meta.domain = await scan.string(h)
        break
      case MODEL.modelVersion:
        meta.modelVersion = scan.count(h, 'model_version')
        break
      case MODEL.graph:
        scan.expectWire(h, WIRE_LEN, 'graph')
        if (graph) scan.fail(`ModelProto holds a second graph field at byte ${h.offset}`)
        graph = h
        break
      case MODEL.opsetImport: {
        scan.expectWire(h, WIRE_LEN, 'opset_import')
        let domain = ''
        let version = 0
        for (let p = h.offset; p < h.next; ) {
          const f = await scan.header(p, h.next, 'OperatorSetIdProto')
          p = f.next
          if (f.field === 1) domain = await scan.string(f)
          else if (f.field === 2) version = scan.count(f, 'opset version')
        }
        opsets[domain === '' ? 'ai.onnx' : domain] = version
        break
      }
      case MODEL.metadataProps: {
        const { key, value } = await parseStringPair(scan, h)
        props[key] = value
        break
      }
    }
  }
  if (meta.irVersion === null) throw new ModelFormatError(abs, null, 'ModelProto has no ir_version (not an ONNX model?)')
  if (!graph) throw new ModelFormatError(abs, null, 'ModelProto has no graph')

  const nodes: OnnxNode[] = []
  const infos: TensorProtoInfo[] = []
  const inputs: string[] = []
  const outputs: string[] = []
  let graphName = ''
  let sparseInitializers = 0
  for (let pos = graph.offset; pos < graph.next; ) {
    const h = await scan.header(pos, graph.next, 'GraphProto')
    pos = h.next
    switch (h.field) {
      case GRAPH.node:
        nodes.push(await parseNode(scan, h))
        break
      case GRAPH.name:
        graphName = await scan.string(h)
        break
      case GRAPH.initializer: {
        scan.expectWire(h, WIRE_LEN, 'initializer')
        const info = newTensorInfo()
        try {
          await parseTensorProto(scan, h.offset, h.next, info)
        } catch (err) {
          throw withTensor(err, info.name || `initializer #${infos.length} (at byte ${h.offset})`)
        }
        if (info.name === '') throw new ModelFormatError(abs, `initializer #${infos.length} (at byte ${h.offset})`, 'has no name')
        infos.push(info)
        break
      }
      case GRAPH.input:
        inputs.push(await valueInfoName(scan, h))
        break
      case GRAPH.output:
        outputs.push(await valueInfoName(scan, h))
        break
      case GRAPH.sparseInitializer:
        sparseInitializers++
        break
    }
  }

  const slots = new Map<string, Slot>()
  for (const info of infos) {
    if (slots.has(info.name)) throw new ModelFormatError(abs, info.name, 'duplicate initializer name')
    slots.set(info.name, await storedSlot(abs, external, info))
  }

  const consumerOps = linkConsumers(nodes, slots)
  const nbits: Record<string, unknown>[] = []
  for (const node of nodes) {
    if (node.opType !== 'MatMulNBits' || node.domain !== 'com.microsoft') continue
    const v = matMulNBitsSlot(abs, node, slots)
    if (!v) continue
    if (slots.has(v.entry.name)) throw new ModelFormatError(abs, v.entry.name, 'virtual tensor name collides with an initializer')
    slots.set(v.entry.name, v)
    const q = (v.storage as { q: MatMulNBitsInfo }).q
    nbits.push({ node: q.node, tensor: v.entry.name, B: q.B.entry.name, scales: q.scales.entry.name, zeroPoints: q.zeroPoints?.entry.name ?? null, K: q.K, N: q.N, bits: q.bits, blockSize: q.blockSize })
  }

  const architecture = ARCHITECTURE_KEYS.map((k) => props[k]).find((v) => v !== undefined && v !== '') ?? null
  const metadata: Record<string, unknown> = {
    irVersion: meta.irVersion,
    producer: meta.producer,
    producerVersion: meta.producerVersion,
    domain: meta.domain,
    modelVersion: meta.modelVersion,
    opsets,
    graphName,
    nodeCount: nodes.length,
    inputs,
    outputs,
    metadataProps: props,
    initializerConsumers: consumerOps,
    matMulNBits: nbits,
  }
  if (sparseInitializers) metadata.sparseInitializersSkipped = sparseInitializers

  let tokenizerPath: string | null = join(dirname(abs), 'tokenizer.json')
  try {
    if (!(await stat(tokenizerPath)).isFile()) tokenizerPath = null
  } catch {
    tokenizerPath = null
  }
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
  const elements = elementCount(info.dims)
  if (!Number.isSafeInteger(elements)) fail(`dims [${info.dims.join(', ')}] hold too many elements`)
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

function nodeLabel(n: OnnxNode): string {
  return n.name || n.outputs[0] || n.opType
}

function intAttr(node: OnnxNode, name: string): number | undefined {
  return node.attributes.get(name)?.i
}

/** The virtual dequantized [N, K] entry of one MatMulNBits node whose B and scales are initializers. */
function matMulNBitsSlot(abs: string, node: OnnxNode, slots: Map<string, Slot>): Slot | null {
  const [, bName = '', sName = '', zName = ''] = node.inputs
  const B = slots.get(bName)
  const scales = slots.get(sName)
  if (!B || !scales) return null
  const fail = (problem: string): never => {
    throw new ModelFormatError(abs, bName, `MatMulNBits node '${nodeLabel(node)}': ${problem}`)
  }
  const K = intAttr(node, 'K')
  const N = intAttr(node, 'N')
  const blockSize = intAttr(node, 'block_size')
  const bits = intAttr(node, 'bits') ?? 4
  if (K === undefined || N === undefined || blockSize === undefined) return fail('attributes K, N and block_size are required')
  if (!(K > 0 && N > 0)) fail(`K = ${K} and N = ${N} must be positive`)
  if (!(Number.isInteger(bits) && bits >= 2 && bits <= 8)) fail(`bits = ${bits}; MatMulNBits supports 2..8`)
  if (!(blockSize >= 16 && (blockSize & (blockSize - 1)) === 0)) fail(`block_size = ${blockSize} must be a power of two >= 16`)
  const blocks = Math.ceil(K / blockSize)
  const blobSize = (blockSize * bits) / 8
  if (B.entry.dtype !== 'U8') fail(`B has dtype ${B.entry.dtype}, expected uint8`)
  if (B.elements !== N * blocks * blobSize) fail(`B has shape [${B.entry.shape.join(', ')}], expected [${N}, ${blocks}, ${blobSize}]`)
  if (!['F32', 'F16', 'BF16'].includes(scales.entry.dtype)) fail(`scales '${sName}' have dtype ${scales.entry.dtype}, expected float`)
  if (scales.elements !== N * blocks) fail(`scales '${sName}' hold ${scales.elements} values, expected N × blocks = ${N * blocks}`)
  let zeroPoints: Slot | null = null
  let packedZeroPoints = false
  if (zName !== '') {
    zeroPoints = slots.get(zName) ?? null
    if (!zeroPoints) return null // computed at run time: nothing to dequantize statically
    if (zeroPoints.entry.dtype === 'U8') {
      packedZeroPoints = true
      const want = N * Math.ceil((blocks * bits) / 8)
      if (zeroPoints.elements !== want) fail(`packed zero_points '${zName}' hold ${zeroPoints.elements} bytes, expected N × ceil(blocks × bits / 8) = ${want}`)
    } else if (zeroPoints.entry.dtype === scales.entry.dtype) {
      if (zeroPoints.elements !== N * blocks) fail(`zero_points '${zName}' hold ${zeroPoints.elements} values, expected ${N * blocks}`)
    } else fail(`zero_points '${zName}' have dtype ${zeroPoints.entry.dtype}, expected uint8 or ${scales.entry.dtype}`)
  }
  const q: MatMulNBitsInfo = { node: nodeLabel(node), K, N, bits, blockSize, blocks, blobSize, B, scales, zeroPoints, packedZeroPoints }
  return {
    entry: {
      name: `${bName}#dequantized`,
      dtype: `MATMULNBITS_Q${bits}`,
      shape: [N, K],
      byteLength: B.entry.byteLength,
      file: B.entry.file,
      byteOffset: B.entry.byteOffset,
      decodable: true,
      alias: nodeLabel(node),
      derivedFrom: [bName, sName, ...(zName ? [zName] : [])],
    },
    storage: { kind: 'nbits', q },
    elements: N * K,
  }
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

  /** Dequantized rows [r0, r1) of a MatMulNBits weight: w[n, k] = (q − zp) × scale. */
  async function dequantRows(q: MatMulNBitsInfo, r0: number, r1: number): Promise<Float32Array> {
    const rows = r1 - r0
    const rowBytes = q.blocks * q.blobSize
    const b = await readBytes(q.B, r0 * rowBytes, rows * rowBytes)
    const scales = await readElements(q.scales, r0 * q.blocks, rows * q.blocks)
    const zpRowBytes = Math.ceil((q.blocks * q.bits) / 8)
    let zpPacked: Uint8Array | null = null
    let zpFloat: Float32Array | null = null
    if (q.zeroPoints && q.packedZeroPoints) zpPacked = await readBytes(q.zeroPoints, r0 * zpRowBytes, rows * zpRowBytes)
    else if (q.zeroPoints) zpFloat = await readElements(q.zeroPoints, r0 * q.blocks, rows * q.blocks)
    const mask = (1 << q.bits) - 1
    const out = new Float32Array(rows * q.K)
    for (let r = 0; r < rows; r++) {
      for (let blk = 0; blk < q.blocks; blk++) {
        const scale = scales[r * q.blocks + blk]!
        let zp = 1 << (q.bits - 1)
        if (zpPacked) zp = unpackBits(zpPacked, r * zpRowBytes, blk * q.bits, q.bits, mask)
        else if (zpFloat) zp = zpFloat[r * q.blocks + blk]!
        const base = (r * q.blocks + blk) * q.blobSize
        const k0 = blk * q.blockSize
        const k1 = Math.min(q.K, k0 + q.blockSize)
        const o = r * q.K
        for (let k = k0; k < k1; k++) out[o + k] = (unpackBits(b, base, (k - k0) * q.bits, q.bits, mask) - zp) * scale
      }
    }
    return out
  }

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
      if (s.storage.kind === 'nbits') return dequantRows(s.storage.q, rowStart, rowEnd)
      return readElements(s, rowStart * cols, (rowEnd - rowStart) * cols)
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

/** `bits` bits starting `bitOffset` bits into bytes[base…], least significant bits first. */
function unpackBits(bytes: Uint8Array, base: number, bitOffset: number, bits: number, mask: number): number {
  const i = base + (bitOffset >> 3)
  const shift = bitOffset & 7
  let v = bytes[i]!
  if (shift + bits > 8) v |= bytes[i + 1]! << 8
  return (v >> shift) & mask
}

function decodeLE(dtype: string, bytes: Uint8Array, out: Float32Array): Float32Array {
  if (isPlainDType(dtype)) return decodePlain(dtype, bytes, out)
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  for (let i = 0; i < out.length; i++) {
    if (dtype === 'U16') out[i] = dv.getUint16(i * 2, true)
    else if (dtype === 'U32') out[i] = dv.getUint32(i * 4, true)
    else out[i] = Number(dv.getBigUint64(i * 8, true))
  }
  return out
}

/**
 * Varint element → float. int32_data holds 16-bit floats and fp8 as their bit patterns and
 * other small types as their value (onnx.proto); negative int32 values are sign-extended.
 */
function varintConverter(field: TypedField, dtype: string): (lo: number, hi: number) => number {
  if (field === 'int64_data') return varintToInt64
  if (field === 'uint64_data') return varintToUint64
  switch (dtype) {
    case 'F16':
      return (lo) => f16ToF32(lo & 0xffff)
    case 'BF16':
      return (lo) => bf16ToF32(lo & 0xffff)
    case 'F8_E4M3':
      return (lo) => fp8e4m3ToF32(lo & 0xff)
    case 'F8_E5M2':
      return (lo) => fp8e5m2ToF32(lo & 0xff)
    case 'BOOL':
      return (lo) => (lo ? 1 : 0)
    default:
      return (lo) => lo | 0
  }
}

export const onnxFormat: ModelFormat = {
  id: 'onnx',
  // Protobuf has no magic bytes; the extension is the only reliable signal.
  match: (path) => /\.onnx$/i.test(path),
  open: openOnnx,
}
