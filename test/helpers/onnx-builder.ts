import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import onnxProto, { type onnx as OnnxTypes } from 'onnx-proto'
import { f32ToBF16, f32ToF16 } from '../../worker/formats/dtypes'

/**
 * Builds small ONNX ModelProtos for tests. Encoding goes through the `onnx-proto` package
 * (protobufjs generated from onnx.proto), an encoder independent of the reader under test.
 */

const { onnx } = onnxProto

/** TensorProto.DataType values (onnx.proto); onnx-proto's enum stops at BFLOAT16. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E5M2: 19,
  UINT4: 21,
  INT4: 22,
} as const

export interface TensorSpec {
  name: string
  dataType: number
  dims: number[]
  raw?: Uint8Array
  floatData?: number[]
  int32Data?: number[]
  int64Data?: number[]
  doubleData?: number[]
  uint64Data?: number[]
  stringData?: string[]
  /** Stored in another file: data_location = EXTERNAL. */
  external?: { location: string; offset?: number; length?: number }
}

export type AttrSpec = { i: number } | { f: number } | { s: string } | { ints: number[] } | { floats: number[] }

export interface NodeSpec {
  opType: string
  inputs: string[]
  outputs: string[]
  name?: string
  domain?: string
  attrs?: Record<string, AttrSpec>
}

/** A graph input/output; typed ones (elemType + shape) are needed to run the model in onnxruntime. */
export type ValueSpec = string | { name: string; elemType: number; shape: (number | string)[] }

export interface ModelSpec {
  initializers?: TensorSpec[]
  nodes?: NodeSpec[]
  inputs?: ValueSpec[]
  outputs?: ValueSpec[]
  graphName?: string
  producer?: string
  irVersion?: number
  opsets?: Record<string, number>
  metadata?: Record<string, string>
}

const ATTR_TYPE = { FLOAT: 1, INT: 2, STRING: 3, FLOATS: 6, INTS: 7 }

function tensorProto(t: TensorSpec): OnnxTypes.ITensorProto {
  const p: OnnxTypes.ITensorProto = { name: t.name, dataType: t.dataType, dims: t.dims }
  if (t.raw) p.rawData = t.raw
  if (t.floatData) p.floatData = t.floatData
  if (t.int32Data) p.int32Data = t.int32Data
  if (t.int64Data) p.int64Data = t.int64Data
  if (t.doubleData) p.doubleData = t.doubleData
  if (t.uint64Data) p.uint64Data = t.uint64Data
  if (t.stringData) p.stringData = t.stringData.map((s) => new TextEncoder().encode(s))
  if (t.external) {
    p.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL
    p.externalData = [{ key: 'location', value: t.external.location }]
    if (t.external.offset !== undefined) p.externalData.push({ key: 'offset', value: String(t.external.offset) })
    if (t.external.length !== undefined) p.externalData.push({ key: 'length', value: String(t.external.length) })
  }
  return p
}

function attribute(name: string, a: AttrSpec): OnnxTypes.IAttributeProto {
  if ('i' in a) return { name, type: ATTR_TYPE.INT, i: a.i }
  if ('f' in a) return { name, type: ATTR_TYPE.FLOAT, f: a.f }
  if ('s' in a) return { name, type: ATTR_TYPE.STRING, s: new TextEncoder().encode(a.s) }
  if ('ints' in a) return { name, type: ATTR_TYPE.INTS, ints: a.ints }
  return { name, type: ATTR_TYPE.FLOATS, floats: a.floats }
}

function valueInfo(v: ValueSpec): OnnxTypes.IValueInfoProto {
  if (typeof v === 'string') return { name: v }
  const dim = v.shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }))
  return { name: v.name, type: { tensorType: { elemType: v.elemType, shape: { dim } } } }
}

export function encodeModel(spec: ModelSpec): Uint8Array {
  const opsets = spec.opsets ?? { '': 17 }
  const model: OnnxTypes.IModelProto = {
    irVersion: spec.irVersion ?? 8,
    producerName: spec.producer ?? 'quantscope-test',
    opsetImport: Object.entries(opsets).map(([domain, version]) => ({ domain, version })),
    metadataProps: Object.entries(spec.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph: {
      name: spec.graphName ?? 'test-graph',
      initializer: (spec.initializers ?? []).map(tensorProto),
      node: (spec.nodes ?? []).map((n) => ({
        opType: n.opType,
        input: n.inputs,
        output: n.outputs,
        name: n.name ?? '',
        domain: n.domain ?? '',
        attribute: Object.entries(n.attrs ?? {}).map(([k, a]) => attribute(k, a)),
      })),
      input: (spec.inputs ?? []).map(valueInfo),
      output: (spec.outputs ?? []).map(valueInfo),
    },
  }
  return onnx.ModelProto.encode(model).finish()
}

export async function makeTempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'quantscope-onnx-'))
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
}

export function f32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer)
}

export function f16Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Uint16Array.from(Array.from(values, f32ToF16)).buffer)
}

export function bf16Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Uint16Array.from(Array.from(values, f32ToBF16)).buffer)
}

export function i64Bytes(values: readonly (number | bigint)[]): Uint8Array {
  return new Uint8Array(BigInt64Array.from(values, (v) => BigInt(v)).buffer)
}

/** Deterministic PRNG (mulberry32): the same fixtures on every machine. */
export { seededRandom } from '../../worker/inference/sampler'
