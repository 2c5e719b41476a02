/**
 * GGUF/ggml block dequantization to float32, following ggml's reference
 * `dequantize_row_*` functions in ggml/src/ggml-quants.c and the block structs in
 * ggml/src/ggml-common.h. Each decoder below states its block layout.
 *
 * Exactness: every scale is an fp16 (or, for Q8_K, an fp32) times a small integer, so each
 * intermediate product and difference is exact in float64; the single rounding happens when
 * the value is stored into the Float32Array. That is the same value ggml's float32 arithmetic
 * produces (its intermediates are exact too), so results match ggml bit for bit.
 */
import { decodePlain, f16ToF32, isPlainDType } from '../dtypes'
import { ggmlByteSize, ggmlTypeByName } from './ggml-types'

type BlockDecoder = (src: Uint8Array, out: Float32Array, nBlocks: number) => void

let f16: Float32Array | null = null
/** 64K-entry fp16 → f32 table (256 KB), built on first use. */
function f16Table(): Float32Array {
  if (!f16) {
    f16 = new Float32Array(65536)
    for (let i = 0; i < 65536; i++) f16[i] = f16ToF32(i)
  }
  return f16
}

/** Q4_0, 18 bytes / 32 values: fp16 d; qs[16]: low nibble = element j, high = j+16; x = (q-8)·d. */
function q4_0(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 18
    const y = b * 32
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    for (let j = 0; j < 16; j++) {
      const q = src[o + 2 + j]!
      out[y + j] = ((q & 0x0f) - 8) * d
      out[y + j + 16] = ((q >> 4) - 8) * d
    }
  }
}

/** Q4_1, 20 bytes / 32: fp16 d, fp16 m; qs[16] as Q4_0; x = q·d + m. */
function q4_1(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 20
    const y = b * 32
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    const m = h[src[o + 2]! | (src[o + 3]! << 8)]!
    for (let j = 0; j < 16; j++) {
      const q = src[o + 4 + j]!
      out[y + j] = (q & 0x0f) * d + m
      out[y + j + 16] = (q >> 4) * d + m
    }
  }
}

/** Q5_0, 22 bytes / 32: fp16 d; qh (u32 LE, bit i = 5th bit of element i); qs[16] as Q4_0; x = (q-16)·d. */
function q5_0(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 22
    const y = b * 32
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    const qh = (src[o + 2]! | (src[o + 3]! << 8) | (src[o + 4]! << 16) | (src[o + 5]! << 24)) >>> 0
    for (let j = 0; j < 16; j++) {
      const q = src[o + 6 + j]!
      const lo = (q & 0x0f) | (((qh >>> j) & 1) << 4)
      const hi = (q >> 4) | (((qh >>> (j + 16)) & 1) << 4)
      out[y + j] = (lo - 16) * d
      out[y + j + 16] = (hi - 16) * d
    }
  }
}

/** Q5_1, 24 bytes / 32: fp16 d, fp16 m; qh u32; qs[16]; x = q·d + m. */
function q5_1(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 24
    const y = b * 32
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    const m = h[src[o + 2]! | (src[o + 3]! << 8)]!
    const qh = (src[o + 4]! | (src[o + 5]! << 8) | (src[o + 6]! << 16) | (src[o + 7]! << 24)) >>> 0
    for (let j = 0; j < 16; j++) {
      const q = src[o + 8 + j]!
      const lo = (q & 0x0f) | (((qh >>> j) & 1) << 4)
      const hi = (q >> 4) | (((qh >>> (j + 16)) & 1) << 4)
      out[y + j] = lo * d + m
      out[y + j + 16] = hi * d + m
    }
  }
}

/** Q8_0, 34 bytes / 32: fp16 d; int8 qs[32]; x = q·d. */
function q8_0(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 34
    const y = b * 32
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    for (let j = 0; j < 32; j++) out[y + j] = ((src[o + 2 + j]! << 24) >> 24) * d
  }
}

/**
 * Q2_K, 84 bytes / 256: scales[16] (low nibble scale, high nibble min, one pair per 16
 * values), qs[64] (2 bits), fp16 d, fp16 dmin. Value e: qs byte 32·(e>>7) + (e&31), bit shift
 * 2·((e>>5)&3); x = d·sc·q − dmin·m with (sc, m) = scales[e>>4].
 */
function q2_K(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 84
    const y = b * 256
    const d = h[src[o + 80]! | (src[o + 81]! << 8)]!
    const dmin = h[src[o + 82]! | (src[o + 83]! << 8)]!
    for (let e = 0; e < 256; e++) {
      const sc = src[o + (e >> 4)]!
      const q = (src[o + 16 + 32 * (e >> 7) + (e & 31)]! >> (2 * ((e >> 5) & 3))) & 3
      out[y + e] = d * (sc & 0x0f) * q - dmin * (sc >> 4)
    }
  }
}

/**
 * Q3_K, 110 bytes / 256: hmask[32], qs[64] (low 2 bits, as Q2_K), scales[12] (16 six-bit
 * scales: low 4 bits in byte j or high nibble of byte j-8, top 2 bits in byte 8 + j%4 at
 * shift 2·(j/4)), fp16 d. The high bit of value e is bit 4·(e>>7) + ((e>>5)&3) of
 * hmask[e&31]; x = d·(s−32)·(q − (hbit ? 0 : 4)).
 */
function q3_K(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  const scale = new Int32Array(16)
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 110
    const y = b * 256
    const sb = o + 96
    for (let j = 0; j < 16; j++) {
      const low = j < 8 ? src[sb + j]! & 0x0f : src[sb + j - 8]! >> 4
      const high = (src[sb + 8 + (j & 3)]! >> (2 * (j >> 2))) & 3
      scale[j] = (low | (high << 4)) - 32
    }
    const d = h[src[o + 108]! | (src[o + 109]! << 8)]!
    for (let e = 0; e < 256; e++) {
      const group = (e >> 5) & 3
      const q = (src[o + 32 + 32 * (e >> 7) + (e & 31)]! >> (2 * group)) & 3
      const hbit = (src[o + (e & 31)]! >> (4 * (e >> 7) + group)) & 1
      out[y + e] = d * scale[e >> 4]! * (q - (hbit ? 0 : 4))
    }
  }
}

/** ggml's get_scale_min_k4: 8 six-bit (scale, min) pairs packed in 12 bytes at `at`. */
function scaleMinK4(src: Uint8Array, at: number, sc: Uint8Array, mn: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    sc[j] = src[at + j]! & 63
    mn[j] = src[at + j + 4]! & 63
  }
  for (let j = 4; j < 8; j++) {
    sc[j] = (src[at + j + 4]! & 0x0f) | ((src[at + j - 4]! >> 6) << 4)
    mn[j] = (src[at + j + 4]! >> 4) | ((src[at + j]! >> 6) << 4)
  }
}

/**
 * Q4_K, 144 bytes / 256: fp16 d, fp16 dmin, scales[12] (get_scale_min_k4), qs[128]. Eight
 * sub-blocks of 32; sub-block s reads qs[32·(s>>1) + i], low nibble when s is even, high when
 * odd; x = d·sc[s]·q − dmin·m[s].
 */
function q4_K(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  const sc = new Uint8Array(8)
  const mn = new Uint8Array(8)
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 144
    const y = b * 256
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    const dmin = h[src[o + 2]! | (src[o + 3]! << 8)]!
    scaleMinK4(src, o + 4, sc, mn)
    for (let s = 0; s < 8; s++) {
      const d1 = d * sc[s]!
      const m1 = dmin * mn[s]!
      const qs = o + 16 + 32 * (s >> 1)
      const shift = (s & 1) * 4
      for (let i = 0; i < 32; i++) out[y + 32 * s + i] = d1 * ((src[qs + i]! >> shift) & 0x0f) - m1
    }
  }
}

/**
 * Q5_K, 176 bytes / 256: fp16 d, fp16 dmin, scales[12], qh[32], qs[128]. As Q4_K, plus the
 * 5th bit of value i of sub-block s is bit s of qh[i].
 */
function q5_K(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  const sc = new Uint8Array(8)
  const mn = new Uint8Array(8)
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 176
    const y = b * 256
    const d = h[src[o]! | (src[o + 1]! << 8)]!
    const dmin = h[src[o + 2]! | (src[o + 3]! << 8)]!
    scaleMinK4(src, o + 4, sc, mn)
    const qh = o + 16
    for (let s = 0; s < 8; s++) {
      const d1 = d * sc[s]!
      const m1 = dmin * mn[s]!
      const qs = o + 48 + 32 * (s >> 1)
      const shift = (s & 1) * 4
      for (let i = 0; i < 32; i++) {
        const q = ((src[qs + i]! >> shift) & 0x0f) | (((src[qh + i]! >> s) & 1) << 4)
        out[y + 32 * s + i] = d1 * q - m1
      }
    }
  }
}

/**
 * Q6_K, 210 bytes / 256: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], fp16 d.
 * Value e in half n = e>>7, quarter g = (e>>5)&3, lane l = e&31: low bits from
 * ql[64n + 32(g&1) + l] (high nibble when g ≥ 2), high bits (qh[32n + l] >> 2g) & 3;
 * x = d·scales[e>>4]·(q − 32).
 */
function q6_K(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const h = f16Table()
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 210
    const y = b * 256
    const d = h[src[o + 208]! | (src[o + 209]! << 8)]!
    for (let e = 0; e < 256; e++) {
      const n = e >> 7
      const g = (e >> 5) & 3
      const l = e & 31
      const low = (src[o + 64 * n + 32 * (g & 1) + l]! >> (g >= 2 ? 4 : 0)) & 0x0f
      const high = (src[o + 128 + 32 * n + l]! >> (2 * g)) & 3
      const sc = (src[o + 192 + (e >> 4)]! << 24) >> 24
      out[y + e] = d * sc * ((low | (high << 4)) - 32)
    }
  }
}

/** Q8_K, 292 bytes / 256: fp32 d, int8 qs[256], int16 bsums[16] (unused here); x = q·d. */
function q8_K(src: Uint8Array, out: Float32Array, nBlocks: number): void {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength)
  for (let b = 0; b < nBlocks; b++) {
    const o = b * 292
    const y = b * 256
    const d = dv.getFloat32(o, true)
    for (let j = 0; j < 256; j++) out[y + j] = ((src[o + 4 + j]! << 24) >> 24) * d
  }
}

const BLOCK_DECODERS: Readonly<Record<string, BlockDecoder>> = Object.freeze({
  Q4_0: q4_0,
  Q4_1: q4_1,
  Q5_0: q5_0,
  Q5_1: q5_1,
  Q8_0: q8_0,
  Q2_K: q2_K,
  Q3_K: q3_K,
  Q4_K: q4_K,
  Q5_K: q5_K,
  Q6_K: q6_K,
  Q8_K: q8_K,
})

/** True when `dequantize` handles this ggml type name. */
export function canDequantize(typeName: string): boolean {
  return isPlainDType(typeName) || Object.prototype.hasOwnProperty.call(BLOCK_DECODERS, typeName)
}

/**
 * Decodes `count` consecutive values of ggml type `typeName` from `bytes` (exactly their
 * bytes, any alignment) into `out`. `count` must be a whole number of blocks. Throws a plain
 * Error on misuse; readers check types and sizes first and report ModelFormatErrors.
 */
export function dequantize(typeName: string, bytes: Uint8Array, count: number, out = new Float32Array(count)): Float32Array {
  const type = ggmlTypeByName(typeName)
  if (!type || !canDequantize(typeName)) throw new Error(`cannot decode ggml type ${typeName}`)
  if (!Number.isSafeInteger(count) || count < 0 || count % type.blockSize !== 0) {
    throw new Error(`${typeName}: ${count} values is not a whole number of ${type.blockSize}-value blocks`)
  }
  const need = ggmlByteSize(type, count)
  if (bytes.length < need) throw new Error(`${typeName}: ${count} values need ${need} bytes, got ${bytes.length}`)
  if (out.length < count) throw new Error(`${typeName}: output holds ${out.length} values, need ${count}`)
  if (isPlainDType(typeName)) return decodePlain(typeName, bytes, out, count)
  BLOCK_DECODERS[typeName]!(bytes, out, count / type.blockSize)
  return out
}
