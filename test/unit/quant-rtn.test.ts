import { describe, it, expect } from 'vitest'
import { f16ToF32, f32ToF16 } from '../../worker/formats/dtypes'
import { QuantParamError } from '../../worker/quant/contract'
import { quantizeRtn, rtnMethod, rtnSchema, RTN_CLIP_SHRINKS, type RtnParams } from '../../worker/quant/rtn'
import { seededRandom } from '../../worker/inference/sampler'
import { rtnInt4 } from '../helpers/rtn-int4'
import { gaussianWeights } from '../helpers/quant-random'
import * as v from 'valibot'

const params = (p: Partial<RtnParams>): RtnParams => v.parse(rtnSchema, p)
const f16 = (x: number) => f16ToF32(f32ToF16(x))

function sse(a: Float32Array, b: Float32Array): number {
  let s = 0
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2
  return s
}

describe('RTN on its own grid', () => {
  it('asymmetric: weights already on the grid come back exactly, every code used', () => {
    // Groups of 16 with min −0.5 and step 2⁻⁴ (both fp16-exact): w = −0.5 + q/16, q a permutation of 0..15.
    const rand = seededRandom(3)
    const rows = 4
    const cols = 64
    const w = new Float32Array(rows * cols)
    for (let g = 0; g < (rows * cols) / 16; g++) {
      const qs = Array.from({ length: 16 }, (_, i) => i).sort(() => rand() - 0.5)
      qs.forEach((q, i) => (w[g * 16 + i] = -0.5 + q / 16))
    }
    const t = quantizeRtn(w, rows, cols, params({ bits: 4, group: 16 }))
    expect(t.dequantizeRows(0, rows)).toEqual(w)
    expect(t.code(0, 0)).toBe((w[0]! + 0.5) * 16)
  })

  it('symmetric: q·s with fp16 s comes back exactly; codes are offset by 2^(b−1) − 1', () => {
    const rows = 3
    const cols = 14
    const s = 0.01171875 // fp16-exact: 3·2⁻⁸
    const w = new Float32Array(rows * cols)
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) w[r * cols + c] = (c % 2 ? 1 : -1) * Math.min(c >> 1, 3) * s * (r + 1) + 0 // no −0
    // Row r's absmax is 3·s·(r+1) = qmax·scale for 3 bits (qmax 3).
    const t = quantizeRtn(w, rows, cols, params({ bits: 3, group: 0, sym: true }))
    expect(t.dequantizeRows(0, rows)).toEqual(w)
    expect(t.code(0, 7)).toBe(3 + 3)
    expect(t.code(0, 6)).toBe(-3 + 3)
    expect(Array.from(t.levels(1))).toEqual([-3, -2, -1, 0, 1, 2, 3].map((k) => Math.fround(k * 2 * s)))
  })

  it('a constant group dequantizes to its (fp16) value', () => {
    const w = new Float32Array(32).fill(0.3)
    for (const sym of [false, true]) {
      const out = quantizeRtn(w, 1, 32, params({ group: 0, sym })).dequantizeRows(0, 1)
      expect(new Set(out).size).toBe(1)
      expect(Math.abs(out[0]! - 0.3)).toBeLessThan(sym ? 0.3 / 7 : 0.3 * 2 ** -11)
    }
  })
})

describe('RTN against the transformers reference (test/helpers/rtn-int4.ts)', () => {
  it('equals it bit for bit where its fp32 min and scale are fp16-exact', () => {
    const rand = seededRandom(5)
    const w = new Float32Array(8 * 128)
    for (let g = 0; g < 8; g++) {
      for (let i = 0; i < 128; i++) w[g * 128 + i] = Math.fround(-0.5 + rand() * 0.9375)
      w[g * 128 + 3] = -0.5
      w[g * 128 + 77] = 0.4375 // max − min = 15·2⁻⁴: scale 2⁻⁴ exactly
    }
    const ours = quantizeRtn(w, 2, 512, params({ bits: 4, group: 128 })).dequantizeRows(0, 2)
    expect(ours).toEqual(rtnInt4(w, 512, 128))
  })

  it('quantizes random groups to the reference except for fp16 rounding of min and scale', () => {
    const w = gaussianWeights(64 * 256, 9, 0.05, 37)
    const ours = quantizeRtn(w, 64, 256, params({ bits: 4, group: 128 })).dequantizeRows(0, 64)
    const ref = rtnInt4(w, 256, 128)
    // A reference-sized fp16 offset is about 2⁻¹¹ of the group's min: far below the rounding error.
    expect(sse(ours, ref) / sse(w, ref)).toBeLessThan(0.03)
  })
})

describe('MSE clipping search', () => {
  it.each([
    [2, false],
    [3, false],
    [4, true],
    [3, true],
  ] as const)('%i bits, sym %s: never worse than no clipping in any group, better overall', (bits, sym) => {
    const rows = 16
    const cols = 128
    const w = gaussianWeights(rows * cols, 21 + bits, 0.02, 29)
    const plain = quantizeRtn(w, rows, cols, params({ bits, sym, group: 32 })).dequantizeRows(0, rows)
    const clipped = quantizeRtn(w, rows, cols, params({ bits, sym, group: 32, clip: 'mse' })).dequantizeRows(0, rows)
    for (let g = 0; g < (rows * cols) / 32; g++) {
      const a = sse(plain.subarray(g * 32, g * 32 + 32), w.subarray(g * 32, g * 32 + 32))
      const b = sse(clipped.subarray(g * 32, g * 32 + 32), w.subarray(g * 32, g * 32 + 32))
      expect(b).toBeLessThanOrEqual(a)
    }
    expect(sse(clipped, w)).toBeLessThan(sse(plain, w) * 0.98)
  })

  it('brute force over the shrink grid finds the same best error per group', () => {
    const w = gaussianWeights(32, 77, 0.02, 5)
    const best = quantizeRtn(w, 1, 32, params({ bits: 3, group: 0, clip: 'mse' })).dequantizeRows(0, 1)
    // Independent: each shrink p of [min, max] with fp16 min and scale, float64 rounding.
    let lo = Infinity
    let hi = -Infinity
    for (const x of w) ((lo = Math.min(lo, x)), (hi = Math.max(hi, x)))
    let bestErr = Infinity
    for (const p of RTN_CLIP_SHRINKS) {
      const m = f16(lo * p)
      const s = f16((hi * p - lo * p) / 7)
      let e = 0
      for (const x of w) e += (Math.min(7, Math.max(0, Math.round((x - m) / s))) * s + m - x) ** 2
      bestErr = Math.min(bestErr, e)
    }
    expect(sse(best, w)).toBeCloseTo(bestErr, 12)
  })
})

describe('RTN storage and input checks', () => {
  it('counts codes, fp16 scales and (asymmetric) fp16 minimums exactly', () => {
    // 4096×11008 at 4 bits, group 128: 22,544,384 code bytes; 352,256 groups.
    expect(rtnMethod.storage(4096, 11008, params({}))).toEqual({ codes: 22_544_384, scales: 352_256 * 4, zeros: 0, tables: 0, outliers: 0 })
    expect(rtnMethod.storage(4096, 11008, params({ sym: true }))).toEqual({ codes: 22_544_384, scales: 352_256 * 2, zeros: 0, tables: 0, outliers: 0 })
    // 3 bits over 5×7 = 35 codes = 105 bits → 14 bytes; per row: 5 groups.
    expect(rtnMethod.storage(5, 7, params({ bits: 3, group: 0 }))).toEqual({ codes: 14, scales: 20, zeros: 0, tables: 0, outliers: 0 })
  })

  it('refuses bad shapes, non-dividing groups and NaN/Inf weights, naming the place', () => {
    const p = params({ group: 4 })
    expect(() => quantizeRtn(new Float32Array(7), 2, 4, p)).toThrow(/7 values, shape \[2, 4\] needs 8/)
    expect(() => quantizeRtn(new Float32Array(12), 2, 6, p)).toThrow(/group 4 does not divide the row length 6/)
    const w = new Float32Array(8)
    w[6] = NaN
    expect(() => quantizeRtn(w, 2, 4, p)).toThrow(QuantParamError)
    expect(() => quantizeRtn(w, 2, 4, p)).toThrow(/weight\[1, 2\] is NaN/)
    w[6] = -Infinity
    expect(() => quantizeRtn(w, 2, 4, p)).toThrow(/weight\[1, 2\] is -Infinity/)
    w[6] = 1e6
    expect(() => quantizeRtn(w, 2, 4, p)).toThrow(/does not fit fp16/)
    expect(() => rtnMethod.storage(2, 6, p)).toThrow(/does not divide/)
  })

  it('stops when cancelled and reports progress', () => {
    const w = gaussianWeights(400 * 32, 1)
    const seen: number[] = []
    quantizeRtn(w, 400, 32, params({ group: 0 }), { onProgress: (d) => seen.push(d) })
    expect(seen.at(-1)).toBe(400)
    expect(seen.length).toBeGreaterThan(50)
    const ac = new AbortController()
    ac.abort()
    expect(() => quantizeRtn(w, 400, 32, params({ group: 0 }), { signal: ac.signal })).toThrow(/abort/i)
  })
})
