import { describe, it, expect } from 'vitest'
import * as v from 'valibot'
import { any2Method, any3Method, any4Method, anynSchema, quantizeAnyN, type AnyNParams, type AnyNTensor } from '../../worker/quant/anyn'
import { rowSeed } from '../../worker/quant/kmeans-1d'
import { QuantParamError, type LayerCalibration } from '../../worker/quant/contract'
import { f16ToF32, f32ToF16 } from '../../worker/formats/dtypes'
import { seededRandom } from '../../worker/inference/sampler'
import { gaussianWeights } from '../helpers/quant-random'

const params = (p: Partial<AnyNParams>): AnyNParams => v.parse(anynSchema, p)
const f16 = (x: number) => f16ToF32(f32ToF16(x))
const f = Math.fround
const calib = (mean: ArrayLike<number>): LayerCalibration => ({ count: 10, mean, meanAbs: Array.from(mean, Math.abs), meanSq: Array.from(mean, (x) => x * x) })

describe('anyN on a row of exactly 2ⁿ distinct values is exact', () => {
  it.each([
    [4, 0, 'weights'],
    [4, 32, 'weights'],
    [3, 16, 'activations-scale'],
    [2, 0, 'activations'],
  ] as const)('any%i, group %i, weighting %s', (bits, group, weighting) => {
    const K = 1 << bits
    // Levels in normalised space 0 … 2ⁿ−1 with few mantissa bits (fp16-exact), α = 2⁻⁴, m = −0.5:
    // every group holds the lowest and highest level, so every group has the same (m, α).
    const rand = seededRandom(bits * 10 + group)
    const L = Array.from({ length: K }, (_, k) => (k === 0 ? 0 : k === K - 1 ? K - 1 : k - 0.25 + 0.5 * Math.floor(rand() * 2)))
    const rows = 3
    const cols = 64
    const g = group || cols
    const w = new Float32Array(rows * cols)
    for (let i = 0; i < w.length; i++) {
      const j = i % g
      const level = j === 0 ? 0 : j === 1 ? K - 1 : j - 2 < K ? j - 2 : Math.floor(rand() * K)
      w[i] = -0.5 + L[level]! / 16
    }
    const mean = gaussianWeights(cols, 3, 1)
    const q = quantizeAnyN(`any${bits}`, bits, w, rows, cols, params({ group, weighting }), calib(mean))
    expect(q.dequantizeRows(0, rows)).toEqual(w)
    expect(Array.from(q.table(1))).toEqual(L)
  })
})

describe('anyN stored values', () => {
  const rows = 6
  const cols = 256
  const w = gaussianWeights(rows * cols, 31, 0.02, 41)
  const mean = gaussianWeights(cols, 32, 1)

  it('ŵ = LUT[q]·α + m from fp16 α = max(M − m, 1e-6)/(2ⁿ − 1), fp16 m, fp16 LUT; q = nearest level', () => {
    const q = quantizeAnyN('any3', 3, w, rows, cols, params({ group: 64 }), calib(mean))
    const deq = q.dequantizeRows(0, rows)
    for (let r = 0; r < rows; r++) {
      const lut = q.table(r)
      for (let k = 1; k < 8; k++) expect(lut[k]!).toBeGreaterThanOrEqual(lut[k - 1]!)
      for (const x of lut) expect(f16(x)).toBe(x)
      for (let gi = 0; gi < 4; gi++) {
        const seg = w.subarray(r * cols + gi * 64, r * cols + gi * 64 + 64)
        const lo = Math.min(...seg)
        const hi = Math.max(...seg)
        const a = f16(Math.max(hi - lo, 1e-6) / 7)
        const m = f16(lo)
        for (let j = 0; j < 64; j++) {
          const col = gi * 64 + j
          const got = deq[r * cols + col]!
          expect(got).toBe(f(f(lut[q.code(r, col)]! * a) + m))
          // No other level is strictly nearer to the weight.
          for (const l of lut) expect(Math.abs(f(f(l * a) + m) - seg[j]!)).toBeGreaterThanOrEqual(Math.abs(got - seg[j]!) * (1 - 1e-6) - 1e-12)
        }
      }
    }
  })

  it('activations weighting ignores columns whose mean activation is 0', () => {
    const m0 = Float32Array.from(mean)
    m0[10] = 0
    m0[20] = 0
    const a = quantizeAnyN('any4', 4, w, rows, cols, params({ group: 0, weighting: 'activations' }), calib(m0))
    const w2 = w.slice()
    // Move those weights inside their row's range (min/max unchanged): the tables must not move.
    for (let r = 0; r < rows; r++) {
      w2[r * cols + 10] = w2[r * cols + 10]! * 0.5
      w2[r * cols + 20] = 0
    }
    const b = quantizeAnyN('any4', 4, w2, rows, cols, params({ group: 0, weighting: 'activations' }), calib(m0))
    const c = quantizeAnyN('any4', 4, w2, rows, cols, params({ group: 0, weighting: 'weights' }))
    const d = quantizeAnyN('any4', 4, w, rows, cols, params({ group: 0, weighting: 'weights' }))
    for (let r = 0; r < rows; r++) {
      expect(b.table(r)).toEqual(a.table(r))
      expect(c.table(r)).not.toEqual(d.table(r))
    }
  })

  it('with one group a row, ×activations×scale clusters like ×activations (α is a per-row constant); with groups it does not', () => {
    const act = quantizeAnyN('any4', 4, w, rows, cols, params({ group: 0, weighting: 'activations' }), calib(mean))
    const actScale = quantizeAnyN('any4', 4, w, rows, cols, params({ group: 0, weighting: 'activations-scale' }), calib(mean))
    for (let r = 0; r < rows; r++) {
      const x = act.table(r)
      const y = actScale.table(r)
      for (let k = 0; k < 16; k++) expect(Math.abs(x[k]! - y[k]!)).toBeLessThanOrEqual(2 ** -10 * Math.max(1, Math.abs(x[k]!)))
    }
    const gAct = quantizeAnyN('any4', 4, w, rows, cols, params({ group: 32, weighting: 'activations' }), calib(mean))
    const gScale = quantizeAnyN('any4', 4, w, rows, cols, params({ group: 32, weighting: 'activations-scale' }), calib(mean))
    let differ = 0
    for (let r = 0; r < rows; r++) if (gAct.table(r).some((x, k) => x !== gScale.table(r)[k])) differ++
    expect(differ).toBe(rows)
  })

  it('each weighting wins on its own objective', () => {
    // Σ s·(w_S − ŵ_S)² over the row, with s of each weighting; per-row k-means minimises its own.
    const objective = (deq: Float32Array, s: (j: number) => number) => {
      let e = 0
      for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) e += s(j) * (deq[r * cols + j]! - w[r * cols + j]!) ** 2
      return e
    }
    const plain = quantizeAnyN('any2', 2, w, rows, cols, params({ group: 0, weighting: 'weights' })).dequantizeRows(0, rows)
    const act = quantizeAnyN('any2', 2, w, rows, cols, params({ group: 0, weighting: 'activations' }), calib(mean)).dequantizeRows(0, rows)
    const byAct = (j: number) => Math.abs(mean[j]!)
    expect(objective(act, byAct)).toBeLessThan(objective(plain, byAct))
    expect(objective(plain, () => 1)).toBeLessThan(objective(act, () => 1))
  })
})

describe('anyN method contract', () => {
  it('needs activation statistics unless weighting=weights, and says so when they are missing', () => {
    expect(any4Method.needs(params({}))).toBe('activation-stats')
    expect(any3Method.needs(params({ weighting: 'activations' }))).toBe('activation-stats')
    expect(any2Method.needs(params({ weighting: 'weights' }))).toBe('none')
    const w = gaussianWeights(2 * 128, 1)
    expect(() => any4Method.quantize(w, 2, 128, params({}))).toThrow(QuantParamError)
    expect(() => any4Method.quantize(w, 2, 128, params({}))).toThrow(/any4 needs activation statistics/)
    expect(() => any4Method.quantize(w, 2, 128, params({}), calib(new Float32Array(64)))).toThrow(/64 channel means, the weight has 128/)
    expect(() => any3Method.quantize(w, 2, 128, params({ init: 'nf4', weighting: 'weights' }))).toThrow(/init 'nf4' needs 4 bits/)
    expect(any4Method.quantize(w, 2, 128, params({ init: 'nf4', weighting: 'weights' })).bytes).toBeGreaterThan(0)
  })

  it('storage: n-bit codes, fp16 (α, m) per group, 2ⁿ fp16 per row', () => {
    // 4096×4096 any4 g128: 4 + 32/128 + 16·16/4096 bits a weight.
    const s = any4Method.storage(4096, 4096, params({}))
    expect(s).toEqual({ codes: 8_388_608, scales: 4096 * 32 * 4, zeros: 0, tables: 4096 * 16 * 2, outliers: 0 })
    expect(((s.codes + s.scales + s.tables) * 8) / 4096 ** 2).toBeCloseTo(4 + 32 / 128 + (16 * 16) / 4096, 12)
    expect(any3Method.storage(3, 8, params({ group: 0 }))).toEqual({ codes: 9, scales: 12, zeros: 0, tables: 48, outliers: 0 })
  })

  it('each row draws its own k-means++ stream: row r alone with seed rowSeed(seed, r) gives the same table', () => {
    const w = gaussianWeights(3 * 128, 6)
    const p = params({ weighting: 'weights', group: 0, seed: 4 })
    const all = any4Method.quantize(w, 3, 128, p) as AnyNTensor
    for (const r of [1, 2]) {
      const alone = any4Method.quantize(w.subarray(r * 128, (r + 1) * 128), 1, 128, { ...p, seed: rowSeed(4, r) }) as AnyNTensor
      expect(alone.table(0)).toEqual(all.table(r))
    }
    const same = any4Method.quantize(w.subarray(128, 256), 1, 128, p) as AnyNTensor
    expect(same.table(0)).not.toEqual(all.table(1))
  })

  it('is deterministic for a seed and the seed reaches k-means++', () => {
    const w = gaussianWeights(4 * 128, 5)
    const p = params({ weighting: 'weights', group: 0 })
    const a = any4Method.quantize(w, 4, 128, p).dequantizeRows(0, 4)
    expect(any4Method.quantize(w, 4, 128, p).dequantizeRows(0, 4)).toEqual(a)
    expect(any4Method.quantize(w, 4, 128, { ...p, seed: 9 }).dequantizeRows(0, 4)).not.toEqual(a)
  })
})
