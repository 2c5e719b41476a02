/**
 * ggml's 32-value block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, quantized as llama.cpp does it,
 * after ggml/src/ggml-quants.c: without importance weights `quantize_q*` call the
 * `quantize_row_q*_ref` routines (absmax / min-max scales, one rounding); with them (an
 * imatrix) `quantize_row_q4_0_impl` … `quantize_row_q5_1_impl` search the scale per block
 * (make_qx_quants / make_qkx3_quants). Q8_0 ignores importance weights, as ggml does.
 *
 * Each routine writes one row of blocks into `out` at `o` (the byte layout of block_q*
 * in ggml-common.h, which worker/formats/gguf/dequant.ts decodes) and works in float32 (see
 * ggml-search.ts for why).
 */
import { f32ToF16, f16ToF32 } from '../formats/dtypes'
import { makeQkx3Quants, makeQxQuants, roundAway as roundAwayShared } from './ggml-search'

// Module-local bindings: transpiled imports are read through a getter on every call, which
// cost more than the arithmetic in these loops.
const f = Math.fround
const roundAway = roundAwayShared

/** Writes the fp16 bits of x (ggml's GGML_FP32_TO_FP16, round to nearest even) little-endian at `at`. */
export function putF16(out: Uint8Array, at: number, x: number): void {
  const h = f32ToF16(x)
  out[at] = h & 0xff
  out[at + 1] = h >> 8
}

/** The float value of the fp16 at `at` (GGML_FP16_TO_FP32). */
export function getF16(out: Uint8Array, at: number): number {
  return f16ToF32(out[at]! | (out[at + 1]! << 8))
}

/** C's (int8_t) cast of a float: truncation toward zero, then wrap to 8 bits. */
function toInt8(x: number): number {
  return (Math.trunc(x) << 24) >> 24
}

const QK = 32

/** Block of 34 bytes: fp16 d = absmax/127, int8 q = roundf(x/d) (quantize_row_q8_0_ref). */
export function quantizeRowQ8_0(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number): void {
  for (let b = 0; b < n / QK; b++, xo += QK, o += 34) {
    let amax = 0
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[xo + j]!))
    const d = f(amax / 127)
    const id = d ? f(1 / d) : 0
    putF16(out, o, d)
    for (let j = 0; j < QK; j++) out[o + 2 + j] = roundAway(f(x[xo + j]! * id)) & 0xff
  }
}

/** Signed-max value of a block: the x with the largest |x|, the first of equals (ggml's `amax < fabsf(v)`). */
function signedMax(x: Float32Array, xo: number): number {
  let amax = 0
  let max = 0
  for (let j = 0; j < QK; j++) {
    const v = x[xo + j]!
    if (amax < Math.abs(v)) {
      amax = Math.abs(v)
      max = v
    }
  }
  return max
}

function minMax(x: Float32Array, xo: number): [number, number] {
  let min = Infinity
  let max = -Infinity
  for (let j = 0; j < QK; j++) {
    const v = x[xo + j]!
    if (v < min) min = v
    if (v > max) max = v
  }
  return [min, max]
}

/** Packs 32 codes of 4 bits (element j low nibble, j+16 high) at `at`. */
function packNibbles(L: ArrayLike<number>, out: Uint8Array, at: number): void {
  for (let j = 0; j < 16; j++) out[at + j] = (L[j]! & 0x0f) | ((L[j + 16]! & 0x0f) << 4)
}

/** 5-bit codes: low nibbles as packNibbles at `qs`, the fifth bits as a little-endian u32 at `qh` (bit j = element j). */
function packFiveBits(L: ArrayLike<number>, out: Uint8Array, qh: number, qs: number): void {
  packNibbles(L, out, qs)
  let bits = 0
  for (let j = 0; j < QK; j++) bits |= ((L[j]! & 0x10) >> 4) << j
  out[qh] = bits & 0xff
  out[qh + 1] = (bits >>> 8) & 0xff
  out[qh + 2] = (bits >>> 16) & 0xff
  out[qh + 3] = bits >>> 24
}

/**
 * Importance of each value of a row for the *_impl routines: qw·√(σ² + x²) with σ² the row's
 * mean square (ggml's `weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j])`).
 */
function rowSigma2(x: Float32Array, xo: number, n: number): number {
  let sumX2 = 0
  for (let j = 0; j < n; j++) sumX2 = f(sumX2 + f(x[xo + j]! * x[xo + j]!))
  return f(sumX2 / n)
}

function blockWeights(x: Float32Array, xo: number, qw: ArrayLike<number>, qo: number, sigma2: number, weight: Float32Array): void {
  for (let j = 0; j < QK; j++) weight[j] = f(qw[qo + j]! * f(Math.sqrt(f(sigma2 + f(x[xo + j]! * x[xo + j]!)))))
}

/** Symmetric 4/5-bit block: d = signed max / −2^(bits−1), code = min(2^bits − 1, (int8)(x/d + 2^(bits−1) + ½)). */
function symmetricRef(x: Float32Array, xo: number, half: number, L: Uint8Array): number {
  const d = f(signedMax(x, xo) / -half)
  const id = d ? f(1 / d) : 0
  const bias = half + 0.5
  for (let j = 0; j < QK; j++) L[j] = Math.min(2 * half - 1, toInt8(f(f(x[xo + j]! * id) + bias)))
  return d
}

/** Q4_0 blocks of 18 bytes: fp16 d, 16 bytes of nibbles; x ≈ (q − 8)·d. */
export function quantizeRowQ4_0(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Uint8Array(QK)
  if (!qw) {
    for (let b = 0; b < n / QK; b++, xo += QK, o += 18) {
      putF16(out, o, symmetricRef(x, xo, 8, L))
      packNibbles(L, out, o + 2)
    }
    return
  }
  const sigma2 = rowSigma2(x, xo, n)
  const weight = new Float32Array(QK)
  const Ls = new Int8Array(QK)
  for (let b = 0; b < n / QK; b++, o += 18) {
    blockWeights(x, xo + b * QK, qw, b * QK, sigma2, weight)
    putF16(out, o, makeQxQuants(QK, 8, x, xo + b * QK, Ls, 0, 1, weight))
    packNibbles(Ls, out, o + 2)
  }
}

/** Q5_0 blocks of 22 bytes: fp16 d, u32 fifth bits, 16 bytes of nibbles; x ≈ (q − 16)·d. */
export function quantizeRowQ5_0(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Uint8Array(QK)
  if (!qw) {
    for (let b = 0; b < n / QK; b++, xo += QK, o += 22) {
      putF16(out, o, symmetricRef(x, xo, 16, L))
      packFiveBits(L, out, o + 2, o + 6)
    }
    return
  }
  const sigma2 = rowSigma2(x, xo, n)
  const weight = new Float32Array(QK)
  const Ls = new Int8Array(QK)
  for (let b = 0; b < n / QK; b++, o += 22) {
    blockWeights(x, xo + b * QK, qw, b * QK, sigma2, weight)
    putF16(out, o, makeQxQuants(QK, 16, x, xo + b * QK, Ls, 0, 1, weight))
    packFiveBits(Ls, out, o + 2, o + 6)
  }
}

/**
 * Min-max block (Q4_1, Q5_1 refs): d = (max − min)/(2^bits − 1), m = min, code =
 * (x − min)/d + ½ truncated; Q4_1 clamps to 15, Q5_1 does not (its codes fit by construction,
 * and the packing keeps five bits either way).
 */
function minMaxRef(x: Float32Array, xo: number, levels: number, clampTop: boolean, L: Uint8Array): [number, number] {
  const [min, max] = minMax(x, xo)
  const d = f(f(max - min) / levels)
  const id = d ? f(1 / d) : 0
  for (let j = 0; j < QK; j++) {
    const q = toInt8(f(f(f(x[xo + j]! - min) * id) + 0.5)) & 0xff
    L[j] = clampTop ? Math.min(levels, q) : q
  }
  return [d, min]
}

/** Q4_1 blocks of 20 bytes: fp16 d, fp16 m, nibbles; x ≈ q·d + m. */
export function quantizeRowQ4_1(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  minMaxRow(x, xo, n, out, o, qw, 15, 20, (L, at) => packNibbles(L, out, at + 4))
}

/** Q5_1 blocks of 24 bytes: fp16 d, fp16 m, u32 fifth bits, nibbles; x ≈ q·d + m. */
export function quantizeRowQ5_1(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  minMaxRow(x, xo, n, out, o, qw, 31, 24, (L, at) => packFiveBits(L, out, at + 4, at + 8))
}

function minMaxRow(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null, levels: number, blockBytes: number, pack: (L: Uint8Array, at: number) => void): void {
  const L = new Uint8Array(QK)
  if (!qw) {
    for (let b = 0; b < n / QK; b++, xo += QK, o += blockBytes) {
      // The ref (uint8_t) cast of Q5_1 is unclamped; Q4_1's MIN(15, (int8_t)…) clamps.
      const [d, m] = minMaxRef(x, xo, levels, levels === 15, L)
      putF16(out, o, d)
      putF16(out, o + 2, m)
      pack(L, o)
    }
    return
  }
  const sigma2 = rowSigma2(x, xo, n)
  const weight = new Float32Array(QK)
  const Laux = new Uint8Array(QK)
  for (let b = 0; b < n / QK; b++, o += blockBytes) {
    blockWeights(x, xo + b * QK, qw, b * QK, sigma2, weight)
    const fit = makeQkx3Quants(QK, levels, x, xo + b * QK, weight, L, 0, Laux, -0.9, 0.05, 36, false)
    putF16(out, o, fit.scale)
    putF16(out, o + 2, -fit.theMin)
    pack(L, o)
  }
}
