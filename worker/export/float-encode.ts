/**
 * float32 values → the bytes of an output float type, with the rounding measured: the
 * dequantised values of a plan are exact in float32 but generally not in bf16/fp16 (an fp16
 * scale times an integer code needs up to 11 + bits significant bits), so every export that
 * writes 16-bit floats reports how far it moved them.
 */
import { f32ToF16, table16 } from '../formats/dtypes'
import type { ExportFloatType } from './contract'

export const SAFETENSORS_DTYPE: Readonly<Record<ExportFloatType, 'BF16' | 'F16' | 'F32'>> = Object.freeze({ bf16: 'BF16', fp16: 'F16', fp32: 'F32' })
/** The name transformers' config.json uses (`dtype`, formerly `torch_dtype`). */
export const TORCH_DTYPE: Readonly<Record<ExportFloatType, string>> = Object.freeze({ bf16: 'bfloat16', fp16: 'float16', fp32: 'float32' })

export interface EncodedFloats {
  bytes: Uint8Array
  /** Largest |encoded − value|, 0 when exact. */
  maxAbsError: number
  /** Sum of squared differences (for an RMS over a tensor). */
  sumSqError: number
  /** Values that changed. */
  rounded: number
  /** Finite values that became ±Inf (fp16 overflow). */
  overflowed: number
}

export function encodeFloats(values: Float32Array, type: ExportFloatType): EncodedFloats {
  if (type === 'fp32') {
    return { bytes: new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength)), maxAbsError: 0, sumSqError: 0, rounded: 0, overflowed: 0 }
  }
  const n = values.length
  const out = new Uint16Array(n)
  const bitsIn = new Uint32Array(values.buffer, values.byteOffset, n)
  const back = new Float32Array(1)
  const backBits = new Uint32Array(back.buffer)
  let maxAbsError = 0
  let sumSqError = 0
  let rounded = 0
  let overflowed = 0
  // Decoding back by table: a per-value f16ToF32 call made fp16 exports CPU-bound (8.7 s of a
  // 28 s GGUF export of a 0.5B model in the bench profile).
  const f16 = table16('f16')
  for (let i = 0; i < n; i++) {
    const v = values[i]!
    let decoded: number
    if (type === 'bf16') {
      const x = bitsIn[i]!
      // Round to nearest even on the upper 16 bits; NaN stays a (quiet) NaN.
      const h = (x & 0x7fffffff) > 0x7f800000 ? ((x >>> 16) | 0x40) & 0xffff : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff
      out[i] = h
      backBits[0] = h << 16
      decoded = back[0]!
    } else {
      const h = f32ToF16(v)
      out[i] = h
      decoded = f16[h]!
    }
    if (decoded !== v && !(Number.isNaN(decoded) && Number.isNaN(v))) {
      rounded++
      if (!Number.isFinite(decoded) && Number.isFinite(v)) {
        overflowed++
        continue
      }
      const d = Math.abs(decoded - v)
      if (d > maxAbsError) maxAbsError = d
      sumSqError += d * d
    }
  }
  return { bytes: new Uint8Array(out.buffer), maxAbsError, sumSqError, rounded, overflowed }
}

/** The model's declared dtype as an output type (fp32 when it declares none or another). */
export function declaredFloatType(dtype: string | null): ExportFloatType {
  switch (dtype) {
    case 'bfloat16':
      return 'bf16'
    case 'float16':
      return 'fp16'
    default:
      return 'fp32'
  }
}
