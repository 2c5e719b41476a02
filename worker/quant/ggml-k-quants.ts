/**
 * ggml's K-quant super-blocks of 256 values (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), quantized as
 * llama.cpp does it, after ggml/src/ggml-quants.c: without importance weights `quantize_q*_K`
 * run `quantize_row_q*_K_ref`; with them (an imatrix) `quantize_row_q*_K_impl`. Both pick a
 * float scale (and min) per sub-block with the searches of ggml-search.ts, quantize those to
 * 4/6/8-bit integers under one fp16 super-scale, then re-round every value against the stored
 * scales ("requantize") so the codes fit what dequantization will read.
 *
 * Byte layouts are block_q*_K of ggml-common.h, as decoded by worker/formats/gguf/dequant.ts.
 */
import * as search from './ggml-search'
import { GROUP_MAX_EPS, makeQ3Quants, makeQkx2Quants, makeQkx3Quants, makeQpQuants, makeQxQuants } from './ggml-search'
import { getF16, putF16 } from './ggml-legacy-quants'

const QK_K = 256

// Module-local bindings: transpiled imports are read through a getter on every call, which
// cost more than the arithmetic in these loops.
const f = Math.fround
const nearestInt = search.nearestInt
const clamp = search.clamp

/** Σx²/256 over one super-block, in ggml's order. */
function superSumX2(x: Float32Array, xo: number): number {
  let s = 0
  for (let l = 0; l < QK_K; l++) s = f(s + f(x[xo + l]! * x[xo + l]!))
  return s
}

/** Imatrix weights of one sub-block: qw·√(σ² + x²). */
function imatrixWeights(x: Float32Array, xo: number, qw: ArrayLike<number>, qo: number, n: number, sigma2: number, out: Float32Array): void {
  for (let l = 0; l < n; l++) out[l] = f(qw[qo + l]! * f(Math.sqrt(f(sigma2 + f(x[xo + l]! * x[xo + l]!)))))
}

/** 2-bit codes of 256 values into 64 bytes: byte 32·(j/128) + l holds values j+l, +32, +64, +96 (Q2_K and Q3_K qs). */
function pack2Bit(L: ArrayLike<number>, out: Uint8Array, at: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) out[at + j / 4 + l] = L[j + l]! | (L[j + l + 32]! << 2) | (L[j + l + 64]! << 4) | (L[j + l + 96]! << 6)
  }
}

// ---- Q2_K: 84 bytes = scales[16] (4-bit scale | 4-bit min << 4), qs[64], fp16 d, fp16 dmin ----

export function quantizeRowQ2_K(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Uint8Array(QK_K)
  const Laux = new Uint8Array(16)
  const weights = new Float32Array(16)
  const mins = new Float32Array(16)
  const scales = new Float32Array(16)
  const sw = new Float32Array(16)
  const Ls = new Uint8Array(16)
  const Lm = new Uint8Array(16)
  for (let b = 0; b < n / QK_K; b++, xo += QK_K, o += 84) {
    if (!qw) {
      let maxScale = 0
      let maxMin = 0
      for (let j = 0; j < 16; j++) {
        for (let l = 0; l < 16; l++) weights[l] = Math.abs(x[xo + 16 * j + l]!)
        const fit = makeQkx2Quants(16, 3, x, xo + 16 * j, weights, L, 16 * j, Laux, -0.5, 0.1, 15, true)
        scales[j] = fit.scale
        mins[j] = fit.theMin
        if (scales[j]! > maxScale) maxScale = scales[j]!
        if (mins[j]! > maxMin) maxMin = mins[j]!
      }
      if (maxScale > 0) {
        const iscale = f(15 / maxScale)
        for (let j = 0; j < 16; j++) out[o + j] = nearestInt(f(iscale * scales[j]!))
        putF16(out, o + 80, f(maxScale / 15))
      } else {
        for (let j = 0; j < 16; j++) out[o + j] = 0
        putF16(out, o + 80, 0)
      }
      if (maxMin > 0) {
        const iscale = f(15 / maxMin)
        for (let j = 0; j < 16; j++) out[o + j] = out[o + j]! | (nearestInt(f(iscale * mins[j]!)) << 4)
        putF16(out, o + 82, f(maxMin / 15))
      } else {
        putF16(out, o + 82, 0)
      }
    } else {
      sw.fill(0)
      const sigma2 = f(superSumX2(x, xo) / QK_K)
      for (let j = 0; j < 16; j++) {
        imatrixWeights(x, xo + 16 * j, qw, b * QK_K + 16 * j, 16, sigma2, weights)
        for (let l = 0; l < 16; l++) sw[j] = f(sw[j]! + weights[l]!)
        const fit = makeQkx3Quants(16, 3, x, xo + 16 * j, weights, L, 16 * j, Laux, -0.9, 0.05, 36, false)
        scales[j] = fit.scale
        mins[j] = fit.theMin
      }
      const dm = makeQpQuants(16, 15, scales, Ls, sw)
      const mm = makeQpQuants(16, 15, mins, Lm, sw)
      putF16(out, o + 80, dm)
      putF16(out, o + 82, mm)
      for (let j = 0; j < 16; j++) out[o + j] = Ls[j]! | (Lm[j]! << 4)
    }
    // Requantize against the stored scales (ggml does this in both paths).
    const d0 = getF16(out, o + 80)
    const m0 = getF16(out, o + 82)
    for (let j = 0; j < 16; j++) {
      const d = f(d0 * (out[o + j]! & 0xf))
      if (!d) continue
      const dm = f(m0 * (out[o + j]! >> 4))
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = clamp(nearestInt(f(f(x[xo + 16 * j + ii]! + dm) / d)), 0, 3)
    }
    pack2Bit(L, out, o + 16)
  }
}

// ---- Q3_K: 110 bytes = hmask[32], qs[64], scales[12] (16 six-bit scales), fp16 d ----

/** Packs 16 six-bit scale codes (already offset by 32) into 12 bytes: low nibbles in 0..7, top bits in 8..11. */
function packQ3Scales(codes: ArrayLike<number>, out: Uint8Array, at: number): void {
  for (let k = 0; k < 12; k++) out[at + k] = 0
  for (let j = 0; j < 16; j++) {
    const l = codes[j]!
    if (j < 8) out[at + j] = l & 0xf
    else out[at + j - 8] = out[at + j - 8]! | ((l & 0xf) << 4)
    out[at + 8 + (j % 4)] = out[at + 8 + (j % 4)]! | ((l >> 4) << (2 * Math.floor(j / 4)))
  }
}

function q3Scale(out: Uint8Array, at: number, j: number): number {
  const low = j < 8 ? out[at + j]! & 0xf : out[at + j - 8]! >> 4
  return (low | (((out[at + 8 + (j % 4)]! >> (2 * Math.floor(j / 4))) & 3) << 4)) - 32
}

export function quantizeRowQ3_K(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Int8Array(QK_K)
  const scales = new Float32Array(16)
  const weight = new Float32Array(16)
  const sw = new Float32Array(16)
  const Ls = new Int8Array(16)
  const codes = new Int32Array(16)
  for (let b = 0; b < n / QK_K; b++, xo += QK_K, o += 110) {
    if (!qw) {
      let maxScale = 0
      let amax = 0
      for (let j = 0; j < 16; j++) {
        scales[j] = makeQ3Quants(16, 4, x, xo + 16 * j, L, 16 * j, true)
        const s = Math.abs(scales[j]!)
        if (s > amax) {
          amax = s
          maxScale = scales[j]!
        }
      }
      if (maxScale) {
        const iscale = f(-32 / maxScale)
        // ggml keeps nearest_int in an int8_t before clamping; the value is within ±33 here.
        for (let j = 0; j < 16; j++) codes[j] = clamp((nearestInt(f(iscale * scales[j]!)) << 24) >> 24, -32, 31) + 32
        packQ3Scales(codes, out, o + 96)
        putF16(out, o + 108, f(1 / iscale))
      } else {
        for (let k = 0; k < 12; k++) out[o + 96 + k] = 0
        putF16(out, o + 108, 0)
      }
    } else {
      const sigma2 = f(f(2 * superSumX2(x, xo)) / QK_K)
      for (let j = 0; j < 16; j++) {
        imatrixWeights(x, xo + 16 * j, qw, b * QK_K + 16 * j, 16, sigma2, weight)
        let sumw = 0
        for (let l = 0; l < 16; l++) sumw = f(sumw + weight[l]!)
        sw[j] = sumw
        scales[j] = makeQxQuants(16, 4, x, xo + 16 * j, L, 16 * j, 1, weight)
      }
      const dBlock = makeQxQuants(16, 32, scales, 0, Ls, 0, 1, sw)
      packQ3Scales(Ls, out, o + 96)
      putF16(out, o + 108, dBlock)
    }
    const d0 = getF16(out, o + 108)
    for (let j = 0; j < 16; j++) {
      const d = f(d0 * q3Scale(out, o + 96, j))
      if (!d) continue
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = clamp(nearestInt(f(x[xo + 16 * j + ii]! / d)), -4, 3) + 4
    }
    // High bit of value j goes to hmask[j % 32] bit j / 32; the low two bits stay in L.
    for (let k = 0; k < 32; k++) out[o + k] = 0
    for (let j = 0; j < QK_K; j++) {
      if (L[j]! > 3) {
        out[o + (j % 32)] = out[o + (j % 32)]! | (1 << Math.floor(j / 32))
        L[j] = L[j]! - 4
      }
    }
    pack2Bit(L, out, o + 32)
  }
}

// ---- Q4_K / Q5_K: fp16 d, fp16 dmin, scales[12] (eight 6-bit scale/min pairs), then codes ----

/** Packs eight (scale, min) six-bit pairs as ggml's get_scale_min_k4 reads them. */
function packScaleMinK4(ls: ArrayLike<number>, lm: ArrayLike<number>, out: Uint8Array, at: number): void {
  for (let j = 0; j < 8; j++) {
    const s = ls[j]!
    const m = lm[j]!
    if (j < 4) {
      out[at + j] = s
      out[at + j + 4] = m
    } else {
      out[at + j + 4] = (s & 0xf) | ((m & 0xf) << 4)
      out[at + j - 4] = out[at + j - 4]! | ((s >> 4) << 6)
      out[at + j] = out[at + j]! | ((m >> 4) << 6)
    }
  }
}

function scaleMinK4(q: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [q[at + j]! & 63, q[at + j + 4]! & 63]
  return [(q[at + j + 4]! & 0xf) | ((q[at + j - 4]! >> 6) << 4), (q[at + j + 4]! >> 4) | ((q[at + j]! >> 6) << 4)]
}

/**
 * The shared body of Q4_K (nmax 15) and Q5_K (nmax 31): per 32-value sub-block an
 * asymmetric fit, scales and mins to 6 bits under fp16 d and dmin, requantized codes in L.
 */
function quantizeSuperBlockQ45(x: Float32Array, xo: number, nmax: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null, qo: number, L: Uint8Array): void {
  const Laux = new Uint8Array(32)
  const weights = new Float32Array(32)
  const mins = new Float32Array(8)
  const scales = new Float32Array(8)
  const Ls = new Uint8Array(8)
  const Lm = new Uint8Array(8)
  if (!qw) {
    let maxScale = 0
    let maxMin = 0
    for (let j = 0; j < 8; j++) {
      let sumX2 = 0
      for (let l = 0; l < 32; l++) sumX2 = f(sumX2 + f(x[xo + 32 * j + l]! * x[xo + 32 * j + l]!))
      const avX = f(Math.sqrt(f(sumX2 / 32)))
      for (let l = 0; l < 32; l++) weights[l] = f(avX + Math.abs(x[xo + 32 * j + l]!))
      const fit = nmax === 15
        ? makeQkx2Quants(32, 15, x, xo + 32 * j, weights, L, 32 * j, Laux, -1, 0.1, 20, false)
        : makeQkx2Quants(32, 31, x, xo + 32 * j, weights, L, 32 * j, Laux, -0.5, 0.1, 15, false)
      scales[j] = fit.scale
      mins[j] = fit.theMin
      if (scales[j]! > maxScale) maxScale = scales[j]!
      if (mins[j]! > maxMin) maxMin = mins[j]!
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0
    for (let j = 0; j < 8; j++) {
      // uint8_t ls = nearest_int(…): the int wraps to 8 bits before MIN(63, ·).
      Ls[j] = Math.min(63, nearestInt(f(invScale * scales[j]!)) & 0xff)
      Lm[j] = Math.min(63, nearestInt(f(invMin * mins[j]!)) & 0xff)
    }
    packScaleMinK4(Ls, Lm, out, o + 4)
    putF16(out, o, f(maxScale / 63))
    putF16(out, o + 2, f(maxMin / 63))
  } else {
    const sigma2 = f(f(2 * superSumX2(x, xo)) / QK_K)
    const sw = new Float32Array(8)
    for (let j = 0; j < 8; j++) {
      imatrixWeights(x, xo + 32 * j, qw, qo + 32 * j, 32, sigma2, weights)
      let sumw = 0
      for (let l = 0; l < 32; l++) sumw = f(sumw + weights[l]!)
      sw[j] = sumw
      const fit = makeQkx3Quants(32, nmax, x, xo + 32 * j, weights, L, 32 * j, Laux, -0.9, 0.05, 36, false)
      scales[j] = fit.scale
      mins[j] = fit.theMin
    }
    const dBlock = makeQpQuants(8, 63, scales, Ls, sw)
    const mBlock = makeQpQuants(8, 63, mins, Lm, sw)
    for (let j = 0; j < 8; j++) {
      Ls[j] = Math.min(63, Ls[j]!) // Q5_K's impl clamps here, Q4_K's does not need to (make_qp_quants caps at nmax)
      Lm[j] = Math.min(63, Lm[j]!)
    }
    packScaleMinK4(Ls, Lm, out, o + 4)
    putF16(out, o, dBlock)
    putF16(out, o + 2, mBlock)
  }
  const d0 = getF16(out, o)
  const m0 = getF16(out, o + 2)
  for (let j = 0; j < 8; j++) {
    const [sc, m] = scaleMinK4(out, o + 4, j)
    const d = f(d0 * sc)
    if (!d) continue
    const dm = f(m0 * m)
    for (let ii = 0; ii < 32; ii++) L[32 * j + ii] = clamp(nearestInt(f(f(x[xo + 32 * j + ii]! + dm) / d)), 0, nmax)
  }
}

/** Q4_K, 144 bytes: d, dmin, scales[12], qs[128] (sub-blocks 2k and 2k+1 share 32 bytes: low, high nibble). */
export function quantizeRowQ4_K(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Uint8Array(QK_K)
  for (let b = 0; b < n / QK_K; b++, xo += QK_K, o += 144) {
    quantizeSuperBlockQ45(x, xo, 15, out, o, qw, b * QK_K, L)
    for (let j = 0; j < QK_K; j += 64) {
      for (let l = 0; l < 32; l++) out[o + 16 + j / 2 + l] = L[j + l]! | (L[j + l + 32]! << 4)
    }
  }
}

/** Q5_K, 176 bytes: d, dmin, scales[12], qh[32] (bit s of qh[l] = fifth bit of sub-block s, lane l), qs[128] as Q4_K. */
export function quantizeRowQ5_K(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Uint8Array(QK_K)
  for (let b = 0; b < n / QK_K; b++, xo += QK_K, o += 176) {
    quantizeSuperBlockQ45(x, xo, 31, out, o, qw, b * QK_K, L)
    for (let k = 0; k < 32; k++) out[o + 16 + k] = 0
    for (let s = 0; s < 8; s += 2) {
      for (let l = 0; l < 32; l++) {
        const l1 = L[32 * s + l]!
        const l2 = L[32 * s + 32 + l]!
        out[o + 16 + l] = out[o + 16 + l]! | ((l1 >> 4) << s) | ((l2 >> 4) << (s + 1))
        out[o + 48 + 16 * s + l] = (l1 & 0xf) | ((l2 & 0xf) << 4)
      }
    }
  }
}

// ---- Q6_K: 210 bytes = ql[128], qh[64], int8 scales[16], fp16 d ----

export function quantizeRowQ6_K(x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null): void {
  const L = new Int8Array(QK_K)
  const scales = new Float32Array(16)
  for (let b = 0; b < n / QK_K; b++, xo += QK_K, o += 210) {
    let maxScale = 0
    let maxAbsScale = 0
    for (let ib = 0; ib < 16; ib++) {
      // With an imatrix ggml passes its raw values as the weights (no √(σ² + x²) here).
      const scale = makeQxQuants(16, 32, x, xo + 16 * ib, L, 16 * ib, 1, qw, b * QK_K + 16 * ib)
      scales[ib] = scale
      if (Math.abs(scale) > maxAbsScale) {
        maxAbsScale = Math.abs(scale)
        maxScale = scale
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      out.fill(0, o, o + 210)
      continue
    }
    const iscale = f(-128 / maxScale)
    putF16(out, o + 208, f(1 / iscale))
    for (let ib = 0; ib < 16; ib++) out[o + 192 + ib] = Math.min(127, nearestInt(f(iscale * scales[ib]!))) & 0xff
    const d0 = getF16(out, o + 208)
    for (let j = 0; j < 16; j++) {
      const d = f(d0 * ((out[o + 192 + j]! << 24) >> 24))
      if (!d) continue
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = clamp(nearestInt(f(x[xo + 16 * j + ii]! / d)), -32, 31) + 32
    }
    for (let j = 0; j < QK_K; j += 128) {
      const ql = o + j / 2
      const qh = o + 128 + j / 4
      for (let l = 0; l < 32; l++) {
        const a = L[j + l]!
        const bq = L[j + l + 32]!
        const c = L[j + l + 64]!
        const e = L[j + l + 96]!
        out[ql + l] = (a & 0xf) | ((c & 0xf) << 4)
        out[ql + l + 32] = (bq & 0xf) | ((e & 0xf) << 4)
        out[qh + l] = (a >> 4) | ((bq >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
      }
    }
  }
}
