import { ModelFormatError } from '../../common/errors'
import { TYPED_FIELDS } from './dtypes'
import { decodePackedVarints, varintToInt64, WIRE_I32, WIRE_LEN, WIRE_VARINT, type FieldHeader, type WireScanner } from './protobuf-wire'

/**
 * ONNX protobuf messages (onnx/onnx.proto), decoded field by field through a WireScanner:
 * ModelProto and GraphProto, NodeProto with its attributes, and TensorProto, whose payload is
 * recorded as a byte range and never read here.
 */

// Field numbers from onnx/onnx.proto.
const MODEL = { irVersion: 1, producerName: 2, producerVersion: 3, domain: 4, modelVersion: 5, graph: 7, opsetImport: 8, metadataProps: 14 }
const GRAPH = { node: 1, name: 2, initializer: 5, input: 11, output: 12, sparseInitializer: 15 }
const NODE = { input: 1, output: 2, name: 3, opType: 4, attribute: 5, domain: 7 }
const ATTR = { name: 1, f: 2, i: 3, s: 4, floats: 7, ints: 8, type: 20 }
const TENSOR = { dims: 1, dataType: 2, segment: 3, stringData: 6, name: 8, rawData: 9, externalData: 13, dataLocation: 14 }
export const DATA_LOCATION_EXTERNAL = 1

export interface Range {
  offset: number
  length: number
}

export interface TensorProtoInfo {
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

export interface Attribute {
  type: number
  f?: number
  i?: number
  s?: string
  floats: number[]
  ints: number[]
}

export interface OnnxNode {
  name: string
  opType: string
  domain: string
  inputs: string[]
  outputs: string[]
  attributes: Map<string, Attribute>
}

/** ModelProto's own fields; the graph is left as a field header for parseGraphProto. */
export interface ModelProtoInfo {
  irVersion: number
  producer: string
  producerVersion: string
  domain: string
  modelVersion: number | null
  /** Opset version by domain ('' is written as 'ai.onnx'). */
  opsets: Record<string, number>
  /** metadata_props as key → value. */
  props: Record<string, string>
  graph: FieldHeader
}

/** Reads the top-level ModelProto that spans the whole file. */
export async function parseModelProto(scan: WireScanner): Promise<ModelProtoInfo> {
  const size = scan.source.size
  const meta = { irVersion: null as number | null, producer: '', producerVersion: '', domain: '', modelVersion: null as number | null }
  const opsets: Record<string, number> = {}
  const props: Record<string, string> = {}
  let graph: FieldHeader | null = null
  for (let pos = 0; pos < size; ) {
    const h = await scan.header(pos, size, 'ModelProto')
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
  if (meta.irVersion === null) throw new ModelFormatError(scan.path, null, 'ModelProto has no ir_version (not an ONNX model?)')
  if (!graph) throw new ModelFormatError(scan.path, null, 'ModelProto has no graph')
  return { ...meta, irVersion: meta.irVersion, opsets, props, graph }
}

export interface GraphProtoInfo {
  name: string
  nodes: OnnxNode[]
  /** Initializers in file order, each with a name (payloads as byte ranges). */
  initializers: TensorProtoInfo[]
  inputs: string[]
  outputs: string[]
  /** Sparse initializers are counted, not read. */
  sparseInitializers: number
}

/** Reads the GraphProto inside `graph` (ModelProto's graph field). */
export async function parseGraphProto(scan: WireScanner, graph: FieldHeader): Promise<GraphProtoInfo> {
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
        if (info.name === '') throw new ModelFormatError(scan.path, `initializer #${infos.length} (at byte ${h.offset})`, 'has no name')
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
  return { name: graphName, nodes, initializers: infos, inputs, outputs, sparseInitializers }
}

/** Names the initializer in an error raised while parsing it (the scanner knows no tensor names). */
function withTensor(err: unknown, tensor: string): unknown {
  if (err instanceof ModelFormatError && err.tensor === null) return new ModelFormatError(err.file, tensor, err.problem)
  return err
}

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

function newTensorInfo(): TensorProtoInfo {
  return { name: '', dims: [], dataType: 0, raw: null, typed: null, stringCount: 0, external: new Map(), dataLocation: 0, segmented: false }
}

/** How error messages and aliases name a node: its name, else its first output. */
export function nodeLabel(n: OnnxNode): string {
  return n.name || n.outputs[0] || n.opType
}
