import { describe, expect, it } from 'vitest'
import * as v from 'valibot'
import { f16ToF32, f32ToF16 } from '../../worker/formats/dtypes'
import { QuantParamError, type LayerCalibration } from '../../worker/quant/contract'
import { type AwqParams, awqMethod, awqParamsSchema, awqQuantize } from '../../worker/quant/awq'
import { unpackCodes } from '../../worker/quant/packing'
import { calibrationOf, correlatedActivations, outputError, outputErrorOnActivations, randomWeight, seededRandom } from '../helpers/quant-calibration'

const params = (p: Partial<AwqParams>): AwqParams => v.parse(awqParamsSchema, p)
const fp16 = (x: number) => f16ToF32(f32ToF16(x))

/** llm-awq pseudo_quantize_tensor (zero point) of one group, written out plainly, with an fp16 scale. */
function pseudoQuantize(vals: number[], bits: number): number[] {
  const maxq = 2 ** bits - 1
  const lo = Math.min(...vals)
  const hi = Math.max(...vals)
  const scale = fp16(Math.max(hi - lo, 1e-5) / maxq)
  const halfEven = (x: number) => (Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x))
  const zero = Math.min(maxq, Math.max(0, -halfEven(lo / scale)))
  return vals.map((w) => scale * (Math.min(maxq, Math.max(0, halfEven(w / scale) + zero)) - zero))
}

/** s = mean|x|^α (≥ 1e-4) / √(max·min), as stored (fp16). */
function scalesFor(meanAbs: ArrayLike<number>, alpha: number): number[] {
  const raw = Array.from(meanAbs, (m) => Math.max(m ** alpha, 1e-4))
  const norm = Math.sqrt(Math.max(...raw) * Math.min(...raw))
  return raw.map((x) => fp16(x / norm))
}

/** Ŵ = Q(W·diag(s))/s per group, each group optionally clipped to ±shrink·max|w·s| first. */
function scaledRtn(w: Float32Array, rows: number, cols: number, g: number, bits: number, s: number[], shrink: (r: number, k: number) => number = () => 1): Float32Array {
  const out = new Float32Array(w.length)
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols / g; k++) {
      const ws = Array.from({ length: g }, (_, i) => w[r * cols + k * g + i]! * s[k * g + i]!)
      const m = shrink(r, k) * Math.max(...ws.map(Math.abs))
      pseudoQuantize(ws.map((x) => Math.min(m, Math.max(-m, x))), bits).forEach((q, i) => (out[r * cols + k * g + i] = q / s[k * g + i]!))
    }
  }
  return out
}

/** Activations whose first four channels are 8× larger (AWQ's salient channels). */
function setup(rows: number, cols: number, seed: number) {
  const rand = seededRandom(seed)
  const gains = Array.from({ length: cols }, (_, j) => (j < 4 ? 8 : 0.5 + rand()))
  const tokens = 4 * cols
  const X = correlatedActivations(tokens, cols, rand, gains)
  return { weight: randomWeight(rows, cols, rand), X, tokens, cal: calibrationOf(X, tokens, cols) }
}

describe('AWQ', () => {
  const rows = 16
  const cols = 32

  it('scores every α by the exact output error and keeps the best, which beats plain RTN', () => {
    const { weight, X, tokens, cal } = setup(rows, cols, 7)
    const p = params({ bits: 3, group: 16, clip: false })
    const t = awqQuantize(weight, rows, cols, p, cal)
    const naive = Array.from({ length: 20 }, (_, a) => outputError(weight, scaledRtn(weight, rows, cols, 16, 3, scalesFor(cal.meanAbs, a / 20)), rows, cols, cal.gram!))
    // (the naive route rounds Ŵ to float32 first, hence 1e-6 and not 1e-12)
    for (let a = 0; a < 20; a++) expect(t.search.alphaErrors[a]! / naive[a]!).toBeCloseTo(1, 6)
    const best = naive.indexOf(Math.min(...naive))
    expect(t.search.alpha).toBe(best / 20)
    expect(best).toBeGreaterThan(0)
    // α = 0 is plain RTN; what is stored is the chosen α's result, and clearly better on salient channels.
    const rtnErr = outputError(weight, scaledRtn(weight, rows, cols, 16, 3, new Array(cols).fill(1)), rows, cols, cal.gram!)
    expect(naive[0]! / rtnErr).toBeCloseTo(1, 12)
    const wq = t.dequantizeRows(0, rows)
    const err = outputError(weight, wq, rows, cols, cal.gram!)
    expect(err / naive[best]!).toBeCloseTo(1, 5)
    expect(outputErrorOnActivations(weight, wq, rows, cols, X, tokens) / err).toBeCloseTo(1, 6)
    expect(err / rtnErr).toBeLessThan(0.9)
  })

  it('clipping only lowers the error, group by group, as the reference search', () => {
    const { weight, cal } = setup(rows, cols, 8)
    const noClip = awqQuantize(weight, rows, cols, params({ bits: 3, group: 16, clip: false }), cal)
    const t = awqQuantize(weight, rows, cols, params({ bits: 3, group: 16 }), cal)
    expect(t.search.alpha).toBe(noClip.search.alpha)
    const err = outputError(weight, t.dequantizeRows(0, rows), rows, cols, cal.gram!)
    expect(err).toBeLessThan(noClip.search.error)
    expect(err / t.search.error).toBeCloseTo(1, 6)
    expect(err).toBeLessThanOrEqual(Math.min(...t.search.alphaErrors))
  })

  it('with equal activation magnitudes the scales are 1 and it is RTN (+ clipping search)', () => {
    const { weight, cal } = setup(rows, cols, 9)
    const flat: LayerCalibration = { ...cal, meanAbs: new Float64Array(cols).fill(0.37) }
    const plain = awqQuantize(weight, rows, cols, params({ bits: 4, group: 8, clip: false }), flat)
    expect(Array.from(plain.columnScales!.bits)).toEqual(new Array(cols).fill(0x3c00))
    const ones = new Array(cols).fill(1)
    expect(plain.dequantizeRows(0, rows)).toEqual(scaledRtn(weight, rows, cols, 8, 4, ones))

    // Clipping: for each (row, group) the shrink of 1 − i/20, i < 10, with the least e·G_gg·eᵀ.
    const clipped = awqQuantize(weight, rows, cols, params({ bits: 4, group: 8 }), flat)
    const groupErr = (wq: Float32Array, r: number, k: number) => {
      let s = 0
      for (let i = k * 8; i < k * 8 + 8; i++) for (let j = k * 8; j < k * 8 + 8; j++) s += (wq[r * cols + i]! - weight[r * cols + i]!) * cal.gram![i * cols + j]! * (wq[r * cols + j]! - weight[r * cols + j]!)
      return s
    }
    const shrinks = Array.from({ length: 10 }, (_, i) => 1 - i / 20)
    const tries = shrinks.map((f) => scaledRtn(weight, rows, cols, 8, 4, ones, () => f))
    const chosen = (r: number, k: number) => {
      const errs = tries.map((wq) => groupErr(wq, r, k))
      return shrinks[errs.indexOf(Math.min(...errs))]!
    }
    const expected = scaledRtn(weight, rows, cols, 8, 4, ones, chosen)
    expect(clipped.dequantizeRows(0, rows)).toEqual(expected)
    expect(clipped.dequantizeRows(0, rows)).not.toEqual(plain.dequantizeRows(0, rows))
  })

  it('stores codes, fp16 group scales, zeros and fp16 channel scales exactly; slices equal the whole', () => {
    const { weight, cal } = setup(rows, cols, 10)
    const p = params({ bits: 4, group: 16 })
    const t = awqQuantize(weight, rows, cols, p, cal)
    // 512 codes × 4 bits = 256 B; 32 groups × 2 B + 32 channels × 2 B = 128 B; 32 zeros × 4 bits = 16 B.
    expect(t.storage).toEqual({ codes: 256, scales: 128, zeros: 16, tables: 0, outliers: 0 })
    expect(t.bytes).toBe(400)
    expect(awqMethod.storage(rows, cols, p)).toEqual(t.storage)
    expect(awqMethod.storage(rows, cols, params({ bits: 3, group: 0, sym: true }))).toEqual({ codes: 192, scales: 16 * 2 + 64, zeros: 0, tables: 0, outliers: 0 })
    const full = t.dequantizeRows(0, rows)
    expect([t.codes.length, t.zeros!.length]).toEqual([256, 16])
    const codes = unpackCodes(t.codes, 4, 0, rows * cols, new Uint8Array(rows * cols))
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const gi = r * 2 + (c >> 4)
        expect(full[r * cols + c]).toBe(Math.fround((f16ToF32(t.scales.bits[gi]!) * (codes[r * cols + c]! - t.zero(gi))) / f16ToF32(t.columnScales!.bits[c]!)))
      }
    }
    expect(t.dequantizeRows(3, 9)).toEqual(full.subarray(3 * cols, 9 * cols))
    expect(t.levels(2, 5)).toContain(full[2 * cols + 5])
  })

  it('symmetric grids use absmax/(2^(b−1)−1) and round trip through the stored values', () => {
    const { weight, cal } = setup(rows, cols, 12)
    const t = awqQuantize(weight, rows, cols, params({ bits: 4, group: 16, sym: true, clip: false }), cal)
    expect(t.zeros).toBeNull()
    const s = Array.from(t.columnScales!.bits, f16ToF32)
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < 2; k++) {
        const absMax = Math.max(...Array.from({ length: 16 }, (_, i) => Math.abs(weight[r * cols + k * 16 + i]! * s[k * 16 + i]!)))
        expect(f16ToF32(t.scales.bits[r * 2 + k]!)).toBe(fp16(absMax / 7))
      }
    }
    expect(t.search.error).toBeLessThanOrEqual(t.search.alphaErrors[0]!)
  })

  it('names what is missing or wrong', () => {
    const w = new Float32Array(4 * 8).fill(0.1)
    const stats = { count: 3, mean: [], meanAbs: new Float64Array(8).fill(1), meanSq: [] }
    const p = params({ group: 0 })
    expect(() => awqQuantize(w, 4, 8, p)).toThrow(QuantParamError)
    expect(() => awqQuantize(w, 4, 8, p)).toThrow(/awq needs calibration/)
    expect(() => awqQuantize(w, 4, 8, p, stats)).toThrow(/Gram matrix.*calibration\.gram/)
    expect(() => awqQuantize(w, 4, 8, p, { ...stats, gram: new Float64Array(64), meanAbs: [1, 2] })).toThrow(/meanAbs has 2 channels, expected 8/)
    expect(() => awqQuantize(w, 4, 8, params({ group: 16 }), { ...stats, gram: new Float64Array(64) })).toThrow(/group 16 does not divide the row length 8/)
    expect(awqMethod.needs(p)).toBe('gram')
    expect(v.parse(awqParamsSchema, {})).toEqual({ bits: 4, group: 128, sym: false, clip: true })
    const ac = new AbortController()
    ac.abort()
    const { weight, cal } = setup(rows, cols, 13)
    expect(() => awqQuantize(weight, rows, cols, params({ group: 16 }), cal, { signal: ac.signal })).toThrow(/abort/i)
  })
})
