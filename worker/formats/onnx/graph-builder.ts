import onnxProto from 'onnx-proto'
import type { onnx as OnnxTypes } from 'onnx-proto'

/**
 * A small builder for ONNX models (ModelProto via the `onnx-proto` package): nodes,
 * inputs/outputs with symbolic dims, small inline constants and large weights as external
 * data. Weights never go through protobuf: the serialised model only names them (external
 * data location/offset/length), so the 2 GB protobuf limit never applies and the weight
 * bytes are handed to the runtime as they are.
 */
const { onnx } = onnxProto

export const IR_VERSION = 8
export const OPSET = 17
export const MS_DOMAIN = 'com.microsoft'

export type ElemType = 'float32' | 'float16' | 'uint8' | 'int64' | 'bool'
export type Dim = number | string

export type Attr = { int: number } | { float: number } | { ints: number[] } | { string: string }

const ELEM: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  uint8: onnx.TensorProto.DataType.UINT8,
  int64: onnx.TensorProto.DataType.INT64,
  bool: onnx.TensorProto.DataType.BOOL,
}

/** A weight handed to the runtime beside the model (one "external data file" per layout). */
export interface ExternalWeight {
  name: string
  dims: number[]
  data: Float32Array
}

/**
 * How external weights are laid out on serialisation:
 * - 'per-tensor': each weight its own in-memory file (onnxruntime-web's `externalData`
 *   option takes a list; no concatenation copy of the weights is needed),
 * - 'single-file': one `weights.bin`, weights at 64-byte aligned offsets (written to disk
 *   for onnxruntime-node, which loads external data from files only).
 */
export type ExternalLayout = 'per-tensor' | 'single-file'

export interface SerializedModel {
  model: Uint8Array
  /** External files in the order their bytes appear; `parts` are written back to back. */
  files: { path: string; parts: { offset: number; data: Float32Array }[]; byteLength: number }[]
}

/**
 * An initializer whose bytes a writer has already put into an external data file (an export
 * streams its weights to disk one by one): the model only names file, offset and length.
 */
export interface ExternalRef {
  name: string
  type: ElemType
  dims: number[]
  location: string
  offset: number
  length: number
}

export class GraphBuilder {
  private readonly nodes: OnnxTypes.INodeProto[] = []
  private readonly inline: OnnxTypes.ITensorProto[] = []
  private readonly written: OnnxTypes.ITensorProto[] = []
  private readonly external: ExternalWeight[] = []
  private readonly inputs: OnnxTypes.IValueInfoProto[] = []
  private readonly outputs: OnnxTypes.IValueInfoProto[] = []
  private readonly names = new Set<string>()
  private counter = 0
  private released = false

  constructor(readonly graphName: string) {}

  /** A fresh value name with a readable prefix. */
  fresh(prefix: string): string {
    let name = `${prefix}_${this.counter++}`
    while (this.names.has(name)) name = `${prefix}_${this.counter++}`
    this.names.add(name)
    return name
  }

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`graph builder: value name '${name}' used twice`)
    this.names.add(name)
    return name
  }

  input(name: string, type: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), type, dims))
    return name
  }

  /** Declares `value` a graph output under `name` (an Identity node when the names differ). */
  output(name: string, value: string, type: ElemType, dims: Dim[]): void {
    if (value !== name) this.nodes.push({ opType: 'Identity', input: [value], output: [this.claim(name)], name: `out_${name}` })
    this.outputs.push(valueInfo(name, type, dims))
  }

  /** Adds a node; returns its output names (`outputs` = count of fresh names, or the names). */
  node(op: string, inputs: string[], options: { attrs?: Record<string, Attr>; outputs?: number | string[]; domain?: string; prefix?: string } = {}): string[] {
    const outs = Array.isArray(options.outputs)
      ? options.outputs.map((n) => this.claim(n))
      : Array.from({ length: options.outputs ?? 1 }, () => this.fresh(options.prefix ?? op.toLowerCase()))
    const attribute = Object.entries(options.attrs ?? {}).map(([name, a]) => attrProto(name, a))
    this.nodes.push({ opType: op, input: inputs, output: outs, attribute, domain: options.domain ?? '', name: `${op}_${this.nodes.length}` })
    return outs
  }

  /** Single-output node. */
  op(op: string, inputs: string[], attrs?: Record<string, Attr>, domain?: string): string {
    return this.node(op, inputs, { attrs, domain })[0]!
  }

  constInt64(values: readonly number[], dims: number[] = [values.length], prefix = 'c'): string {
    const name = this.fresh(prefix)
    this.inline.push({ name, dataType: ELEM.int64, dims, int64Data: values.map((v) => v) })
    return name
  }

  /** A uint8 scalar (BitShift amounts). */
  constUint8(value: number, prefix = 'c'): string {
    const name = this.fresh(prefix)
    this.inline.push({ name, dataType: ELEM.uint8, dims: [], rawData: Uint8Array.of(value) })
    return name
  }

  constFloat(values: ArrayLike<number>, dims: number[], prefix = 'c'): string {
    const name = this.fresh(prefix)
    const data = Float32Array.from(values)
    this.inline.push({ name, dataType: ELEM.float32, dims, rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) })
    return name
  }

  /** A float32 weight passed as external data (never copied into the protobuf). */
  weight(name: string, dims: number[], data: Float32Array): string {
    const count = dims.reduce((a, b) => a * b, 1)
    if (data.length !== count) throw new Error(`graph builder: weight '${name}' has ${data.length} values, dims [${dims.join(', ')}] need ${count}`)
    this.external.push({ name: this.claim(name), dims, data })
    return name
  }

  /** An initializer already written to an external data file (see ExternalRef). */
  externalRef(ref: ExternalRef): string {
    this.written.push({
      name: this.claim(ref.name),
      dataType: ELEM[ref.type],
      dims: ref.dims,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: ref.location },
        { key: 'offset', value: String(ref.offset) },
        { key: 'length', value: String(ref.length) },
      ],
    })
    return ref.name
  }

  get externalBytes(): number {
    return this.external.reduce((s, w) => s + w.data.byteLength, 0)
  }

  /**
   * Drops the builder's references to the weight arrays once the runtime has its own copy
   * (native: written to disk), so a large model is not held twice while the session loads.
   * The builder cannot serialize again afterwards.
   */
  releaseWeights(): void {
    for (const w of this.external) w.data = new Float32Array(0)
    this.released = true
  }

  serialize(layout: ExternalLayout): SerializedModel {
    if (this.released) throw new Error('graph builder: weights were released; build the graph again')
    const files: SerializedModel['files'] = []
    const initializers = [...this.inline, ...this.written]
    let single: SerializedModel['files'][number] | null = null
    this.external.forEach((w, i) => {
      let path: string
      let offset: number
      if (layout === 'per-tensor') {
        path = `w${i}.bin`
        offset = 0
        files.push({ path, parts: [{ offset: 0, data: w.data }], byteLength: w.data.byteLength })
      } else {
        if (!single) {
          single = { path: 'weights.bin', parts: [], byteLength: 0 }
          files.push(single)
        }
        path = single.path
        offset = Math.ceil(single.byteLength / 64) * 64
        single.parts.push({ offset, data: w.data })
        single.byteLength = offset + w.data.byteLength
      }
      initializers.push({
        name: w.name,
        dataType: ELEM.float32,
        dims: w.dims,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: path },
          { key: 'offset', value: String(offset) },
          { key: 'length', value: String(w.data.byteLength) },
        ],
      })
    })
    const model: OnnxTypes.IModelProto = {
      irVersion: IR_VERSION,
      producerName: 'quantscope',
      opsetImport: [
        { domain: '', version: OPSET },
        { domain: MS_DOMAIN, version: 1 },
      ],
      graph: { name: this.graphName, node: this.nodes, initializer: initializers, input: this.inputs, output: this.outputs },
    }
    const bytes = onnx.ModelProto.encode(onnx.ModelProto.fromObject(model)).finish()
    return { model: bytes, files }
  }
}

function valueInfo(name: string, type: ElemType, dims: Dim[]): OnnxTypes.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType: ELEM[type], shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) } } },
  }
}

function attrProto(name: string, a: Attr): OnnxTypes.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType
  if ('int' in a) return { name, type: T.INT, i: a.int }
  if ('float' in a) return { name, type: T.FLOAT, f: a.float }
  if ('ints' in a) return { name, type: T.INTS, ints: a.ints }
  return { name, type: T.STRING, s: new TextEncoder().encode(a.string) }
}
