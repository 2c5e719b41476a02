/**
 * The values one element of a ggml block can dequantize to (QuantizedTensor.levels): every
 * code of its (sub-)block put through that block's stored scale and offset, with the same
 * formulas as worker/formats/gguf/dequant.ts (products of an fp16 and small integers are
 * exact, so the single float32 rounding here gives the decoder's values).
 */
import { f16ToF32 } from '../formats/dtypes'

function h(b: Uint8Array, at: number): number {
  return f16ToF32(b[at]! | (b[at + 1]! << 8))
}

/** value(q) = step·q + offset for q in [qmin, qmax], rounded once to float32. */
function affine(step: number, offset: number, qmin: number, qmax: number): Float32Array {
  const out = new Float32Array(qmax - qmin + 1)
  for (let q = qmin; q <= qmax; q++) out[q - qmin] = step * q + offset
  return out
}

function k4ScaleMin(b: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [b[at + j]! & 63, b[at + j + 4]! & 63]
  return [(b[at + j + 4]! & 0xf) | ((b[at + j - 4]! >> 6) << 4), (b[at + j + 4]! >> 4) | ((b[at + j]! >> 6) << 4)]
}

/** Levels of element `e` (index inside the block) of one block's bytes, unsorted. */
export function ggmlBlockLevels(type: string, b: Uint8Array, e: number): Float32Array {
  switch (type) {
    case 'Q8_0':
      return affine(h(b, 0), 0, -128, 127)
    case 'Q4_0':
      return affine(h(b, 0), -8 * h(b, 0), 0, 15)
    case 'Q4_1':
      return affine(h(b, 0), h(b, 2), 0, 15)
    case 'Q5_0':
      return affine(h(b, 0), -16 * h(b, 0), 0, 31)
    case 'Q5_1':
      return affine(h(b, 0), h(b, 2), 0, 31)
    case 'Q2_K': {
      const sc = b[e >> 4]!
      return affine(h(b, 80) * (sc & 0xf), -h(b, 82) * (sc >> 4), 0, 3)
    }
    case 'Q3_K': {
      const j = e >> 4
      const low = j < 8 ? b[96 + j]! & 0xf : b[96 + j - 8]! >> 4
      const s = (low | (((b[104 + (j & 3)]! >> (2 * (j >> 2))) & 3) << 4)) - 32
      const step = h(b, 108) * s
      return affine(step, -4 * step, 0, 7)
    }
    case 'Q4_K':
    case 'Q5_K': {
      const [sc, m] = k4ScaleMin(b, 4, e >> 5)
      return affine(Math.fround(h(b, 0) * sc), -Math.fround(h(b, 2) * m), 0, type === 'Q4_K' ? 15 : 31)
    }
    case 'Q6_K': {
      const step = h(b, 208) * ((b[192 + (e >> 4)]! << 24) >> 24)
      return affine(step, -32 * step, 0, 63)
    }
    default:
      throw new Error(`levels: ggml type ${type} is not one of the quantizer's types`)
  }
}
