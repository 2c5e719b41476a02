import { bf16ToF32, decodePlain, f16ToF32, fp8e4m3ToF32, fp8e5m2ToF32, isPlainDType } from '../dtypes'
import { varintToInt64, varintToUint64 } from './protobuf-wire'

/**
 * ONNX element types (TensorProto.DataType) and the typed repeated fields that carry them, as
 * onnx/onnx.proto defines them; with the decoders from those encodings to float32.
 */

/** Typed repeated fields of TensorProto, with the element types each may carry (onnx.proto). */
export const TYPED_FIELDS: Record<number, { name: TypedField; wire: 'f32' | 'f64' | 'varint'; types: number[] }> = {
  4: { name: 'float_data', wire: 'f32', types: [1, 14] },
  // int32_data also carries the bit patterns of 16-bit floats and 8/4-bit types.
  5: { name: 'int32_data', wire: 'varint', types: [2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26] },
  7: { name: 'int64_data', wire: 'varint', types: [7] },
  10: { name: 'double_data', wire: 'f64', types: [11, 15] },
  11: { name: 'uint64_data', wire: 'varint', types: [12, 13] },
}
export type TypedField = 'float_data' | 'int32_data' | 'int64_data' | 'double_data' | 'uint64_data'

/** TensorProto.DataType → stored dtype name; `bits` per element; undecodable types keep the ONNX name. */
export interface ElemType {
  dtype: string
  bits: number
  decodable: boolean
}
export const ELEM_TYPES: Record<number, ElemType> = {
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
export const ELEM_BYTES: Record<string, number> = Object.fromEntries(
  Object.values(ELEM_TYPES)
    .filter((e) => e.decodable)
    .map((e) => [e.dtype, e.bits / 8]),
)

/** Stored bytes of `elements` elements; sub-byte types pack (onnx.proto). */
export function byteSize(et: ElemType, elements: number): number {
  return Math.ceil((elements * et.bits) / 8)
}

/** Little-endian stored elements → float32; covers the unsigned types decodePlain lacks. */
export function decodeLE(dtype: string, bytes: Uint8Array, out: Float32Array): Float32Array {
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
export function varintConverter(field: TypedField, dtype: string): (lo: number, hi: number) => number {
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
