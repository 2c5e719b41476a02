import { describe, expect, it } from 'vitest'
import * as v from 'valibot'
import { f16ToF32 } from '../../worker/formats/dtypes'
import { QuantParamError, type LayerCalibration } from '../../worker/quant/contract'
import { type GptqParams, gptqMethod, gptqParamsSchema, gptqQuantize } from '../../worker/quant/gptq'
import { inverseHessianFactor } from '../../worker/quant/hessian-inverse'
import { unpackCodes } from '../../worker/quant/packing'
import { type IntGroupTensor, fitIntGrid, newGroupGrid, quantizeToGrid } from '../../worker/quant/int-grid'
import { calibrationOf, correlatedActivations, outputError, outputErrorOnActivations, randomWeight, seededRandom } from '../helpers/quant-calibration'

const params = (p: Partial<GptqParams>): GptqParams => v.parse(gptqParamsSchema, p)
const codesOf = (t: IntGroupTensor) => unpackCodes(t.codes, t.bits, 0, t.rows * t.cols, new Uint8Array(t.rows * t.cols))

/** Gauss–Jordan inverse with partial pivoting (float64), independent of the Cholesky route. */
function invert(A: Float64Array, n: number): Float64Array {
  const a = Float64Array.from(A)
  const inv = new Float64Array(n * n)
  for (let i = 0; i < n; i++) inv[i * n + i] = 1
  for (let c = 0; c < n; c++) {
    let p = c
    for (let r = c + 1; r < n; r++) if (Math.abs(a[r * n + c]!) > Math.abs(a[p * n + c]!)) p = r
    for (let k = 0; k < n; k++) {
      ;[a[c * n + k], a[p * n + k]] = [a[p * n + k]!, a[c * n + k]!]
      ;[inv[c * n + k], inv[p * n + k]] = [inv[p * n + k]!, inv[c * n + k]!]
    }
    const d = a[c * n + c]!
    for (let k = 0; k < n; k++) {
      a[c * n + k] = a[c * n + k]! / d
      inv[c * n + k] = inv[c * n + k]! / d
    }
    for (let r = 0; r < n; r++) {
      if (r === c) continue
      const f = a[r * n + c]!
      for (let k = 0; k < n; k++) {
        a[r * n + k] = a[r * n + k]! - f * a[c * n + k]!
        inv[r * n + k] = inv[r * n + k]! - f * inv[c * n + k]!
      }
    }
  }
  return inv
}

/**
 * GPTQ straight from the paper's formulas, one row at a time, no batching and no Cholesky:
 * quantize column c, δ = (w_c − q_c)/[H⁻¹]_cc, w_F −= δ·H⁻¹_{F,c}, then remove c from H⁻¹ by
 * H⁻¹ −= H⁻¹_{:,c}·H⁻¹_{c,:}/[H⁻¹]_cc (OBS elimination).
 */
function gptqBruteForce(weight: Float32Array, rows: number, cols: number, cal: LayerCalibration, p: GptqParams): Uint8Array {
  const n = cols
  const g = p.group === 0 ? n : p.group
  const H = Float64Array.from(cal.gram!, (x) => (2 * x) / cal.count)
  const W0 = Float64Array.from(weight)
  for (let j = 0; j < n; j++) {
    if (H[j * n + j] !== 0) continue
    H[j * n + j] = 1
    for (let r = 0; r < rows; r++) W0[r * n + j] = 0
  }
  const order = Array.from({ length: n }, (_, i) => i)
  if (p.actorder) order.sort((a, b) => H[b * n + b]! - H[a * n + a]! || a - b)
  let mean = 0
  for (let i = 0; i < n; i++) mean += H[i * n + i]! / n
  for (let i = 0; i < n; i++) H[i * n + i] = H[i * n + i]! + p.damp * mean
  const Hinv0 = invert(H, n)
  const maxq = 2 ** p.bits - 1
  const codes = new Uint8Array(rows * n)
  for (let r = 0; r < rows; r++) {
    const w = W0.slice(r * n, r * n + n)
    const grids = Array.from({ length: n / g }, () => newGroupGrid())
    const fit = (k: number) => {
      const vals = w.slice(k * g, k * g + g)
      fitIntGrid(Math.min(...vals), Math.max(...vals), p.bits, p.sym, 'gptq', grids[k]!)
    }
    if (p.actorder) for (let k = 0; k < n / g; k++) fit(k)
    const Hinv = Float64Array.from(Hinv0)
    const done = new Uint8Array(n)
    for (const c of order) {
      if (!p.actorder && c % g === 0) fit(c / g)
      const { scale, zero } = grids[Math.floor(c / g)]!
      const q = quantizeToGrid(w[c]!, scale, zero, maxq)
      codes[r * n + c] = q
      const d = Hinv[c * n + c]!
      const delta = (w[c]! - scale * (q - zero)) / d
      done[c] = 1
      for (let j = 0; j < n; j++) if (!done[j]) w[j] = w[j]! - delta * Hinv[j * n + c]!
      w[c] = scale * (q - zero)
      const col = Array.from({ length: n }, (_, i) => Hinv[i * n + c]!)
      const row = Hinv.slice(c * n, c * n + n)
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) Hinv[i * n + j] = Hinv[i * n + j]! - (col[i]! * row[j]!) / d
    }
  }
  return codes
}

/** Plain RTN on the same grids: every group fitted from the original weights, no feedback. */
function rtnCodes(weight: Float32Array, rows: number, cols: number, p: GptqParams): Float32Array {
  const g = p.group === 0 ? cols : p.group
  const out = new Float32Array(weight.length)
  const grid = newGroupGrid()
  for (let k = 0; k < weight.length; k += g) {
    const vals = weight.subarray(k, k + g)
    fitIntGrid(Math.min(...vals), Math.max(...vals), p.bits, p.sym, 'gptq', grid)
    for (let i = k; i < k + g; i++) out[i] = grid.scale * (quantizeToGrid(weight[i]!, grid.scale, grid.zero, 2 ** p.bits - 1) - grid.zero)
  }
  return out
}

function setup(rows: number, cols: number, seed: number, tokens = 4 * cols) {
  const rand = seededRandom(seed)
  const X = correlatedActivations(tokens, cols, rand)
  return { weight: randomWeight(rows, cols, rand), X, tokens, cal: calibrationOf(X, tokens, cols) }
}

describe('GPTQ integer grid (GPTQ reference rule)', () => {
  it('fits scale and zero as quant.py find_params does, with the scale rounded to fp16', () => {
    const grid = newGroupGrid()
    fitIntGrid(-1, 2, 2, false, 'gptq', grid) // range [-1, 2], 3 steps → scale 1, zero 1
    expect([grid.scale, grid.zero]).toEqual([1, 1])
    expect([-1, 0.5, 1.5, 2, 7].map((w) => quantizeToGrid(w, grid.scale, grid.zero, 3))).toEqual([0, 1, 3, 3, 3]) // 0.5 and 1.5 round half to even
    fitIntGrid(0.2, 0.7, 4, false, 'gptq', grid) // the range always includes 0
    expect(grid.scale).toBe(f16ToF32(0x29f9)) // fp16 nearest to 0.7/15: (1 + 505/1024)·2⁻⁵
    expect(grid.zero).toBe(0)
    fitIntGrid(-0.3, 0.7, 4, true, 'gptq', grid) // symmetric: ±0.7, mid-point zero
    expect(Math.abs(grid.scale - 1.4 / 15)).toBeLessThan(1.4 / 15 / 1024)
    expect(grid.zero).toBe(8)
    fitIntGrid(0, 0, 3, false, 'gptq', grid) // an all-zero group gets [-1, 1]
    expect(Math.abs(grid.scale - 2 / 7)).toBeLessThan(2 / 7 / 1024)
    expect(grid.zero).toBe(Math.round(1 / grid.scale))
  })
})

describe('GPTQ inverse-Hessian factor', () => {
  it('gives the upper U with UᵀU = H⁻¹', () => {
    const n = 24
    const rand = seededRandom(3)
    const X = correlatedActivations(60, n, rand)
    const H = calibrationOf(X, 60, n).gram!
    for (let i = 0; i < n; i++) H[i * n + i] = H[i * n + i]! + 0.1
    const U = inverseHessianFactor(H, n)
    const Hinv = invert(H, n)
    let worst = 0
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        if (j < i) expect(U[i * n + j]).toBe(0)
        let s = 0
        for (let k = 0; k < n; k++) s += U[k * n + i]! * U[k * n + j]!
        worst = Math.max(worst, Math.abs(s - Hinv[i * n + j]!) / Math.abs(Hinv[i * n + i]!))
      }
      expect(U[i * n + i]).toBeGreaterThan(0)
    }
    expect(worst).toBeLessThan(1e-10)
  })

  it('rejects a Hessian that is not positive definite', () => {
    expect(() => inverseHessianFactor(Float64Array.from([1, 2, 2, 1]), 2)).toThrow(/not positive definite/)
  })
})

describe('GPTQ', () => {
  const cases: [string, Partial<GptqParams>][] = [
    ['per row, asymmetric 4-bit', { bits: 4, group: 0 }],
    ['group 8, symmetric 3-bit', { bits: 3, group: 8, sym: true }],
    ['group 2, asymmetric 2-bit', { bits: 2, group: 2 }],
    ['group 8, actorder (static groups), 4-bit', { bits: 4, group: 8, actorder: true }],
    ['per row, actorder, 3-bit', { bits: 3, group: 0, actorder: true }],
    ['group 8, 8-bit', { bits: 8, group: 8, damp: 0.1 }],
  ]
  it.each(cases)('lazy batches of 4 columns equal the paper formulas unbatched: %s', (_, partial) => {
    const rows = 6
    const cols = 16
    const { weight, cal } = setup(rows, cols, 11)
    // A dead input channel: its gram row and column are zero.
    for (let k = 0; k < cols; k++) cal.gram![5 * cols + k] = cal.gram![k * cols + 5] = 0
    const p = params({ ...partial, blocksize: 4 })
    const t = gptqQuantize(weight, rows, cols, p, cal)
    expect(Array.from(codesOf(t))).toEqual(Array.from(gptqBruteForce(weight, rows, cols, cal, p)))
    // Same result for any block size, including one that the group does not divide.
    for (const blocksize of [1, 5, 128]) expect(codesOf(gptqQuantize(weight, rows, cols, { ...p, blocksize }, cal))).toEqual(codesOf(t))
  })

  it('reduces to RTN when XᵀX is a multiple of the identity (per row and grouped)', () => {
    const rows = 5
    const cols = 32
    const weight = randomWeight(rows, cols, seededRandom(4))
    const gram = new Float64Array(cols * cols)
    for (let i = 0; i < cols; i++) gram[i * cols + i] = 7.5
    const cal: LayerCalibration = { count: 10, mean: [], meanAbs: [], meanSq: [], gram }
    for (const p of [params({ bits: 4, group: 0 }), params({ bits: 3, group: 8, sym: true })]) {
      expect(gptqQuantize(weight, rows, cols, p, cal).dequantizeRows(0, rows)).toEqual(rtnCodes(weight, rows, cols, p))
    }
  })

  it('has a lower output error than RTN on the same grid when inputs are correlated', () => {
    const rows = 24
    const cols = 64
    for (const [seed, partial] of [
      [1, { bits: 4, group: 0 }],
      [2, { bits: 3, group: 16 }],
      [3, { bits: 2, group: 32, sym: true }],
      [4, { bits: 4, group: 16, actorder: true }],
      [5, { bits: 3, group: 0, actorder: true, blocksize: 16 }],
    ] as const) {
      const { weight, X, tokens, cal } = setup(rows, cols, seed)
      const p = params(partial)
      const wq = gptqQuantize(weight, rows, cols, p, cal).dequantizeRows(0, rows)
      const gptqErr = outputError(weight, wq, rows, cols, cal.gram!)
      const rtnErr = outputError(weight, rtnCodes(weight, rows, cols, p), rows, cols, cal.gram!)
      // The gram form is the error on the activations themselves.
      expect(outputErrorOnActivations(weight, wq, rows, cols, X, tokens)).toBeCloseTo(gptqErr, 6)
      expect(gptqErr / rtnErr, `seed ${seed}`).toBeLessThan(0.8)
    }
  })

  it('stores exactly codes, fp16 scales and packed zeros, and dequantizes slices like the whole', () => {
    const rows = 6
    const cols = 16
    const { weight, cal } = setup(rows, cols, 21)
    const p = params({ bits: 3, group: 8 })
    const t: IntGroupTensor = gptqQuantize(weight, rows, cols, p, cal)
    // 96 codes × 3 bits = 36 bytes; 12 groups: 24 bytes of fp16 scales, 12 × 3 bits = 5 bytes of zeros.
    expect(t.storage).toEqual({ codes: 36, scales: 24, zeros: 5, tables: 0, outliers: 0 })
    expect(t.bytes).toBe(65)
    expect(gptqMethod.storage(rows, cols, p)).toEqual(t.storage)
    expect(gptqMethod.storage(rows, cols, params({ bits: 4, group: 0, sym: true }))).toEqual({ codes: 48, scales: 12, zeros: 0, tables: 0, outliers: 0 })
    // What is held is what is counted.
    expect([t.codes.length, t.zeros!.length]).toEqual([36, 5])
    const full = t.dequantizeRows(0, rows)
    const codes = codesOf(t)
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const gi = r * 2 + (c >> 3)
        expect(full[r * cols + c]).toBe(Math.fround(f16ToF32(t.scales.bits[gi]!) * (codes[r * cols + c]! - t.zero(gi))))
        expect(t.zero(gi)).toBeLessThan(8)
      }
    }
    expect(t.dequantizeRows(2, 5)).toEqual(full.subarray(2 * cols, 5 * cols))
    const lv = t.levels(1, 9)
    expect(lv.length).toBe(8)
    expect(Array.from(lv)).toEqual([...lv].sort((a, b) => a - b))
    expect(lv).toContain(full[cols + 9])
  })

  it('names what is missing or wrong, before any work', () => {
    const w = new Float32Array(4 * 8).fill(0.1)
    const stats = { count: 3, mean: [], meanAbs: [], meanSq: [] }
    const p = params({ group: 0 })
    expect(() => gptqQuantize(w, 4, 8, p)).toThrow(QuantParamError)
    expect(() => gptqQuantize(w, 4, 8, p)).toThrow(/gptq needs calibration/)
    expect(() => gptqQuantize(w, 4, 8, p, stats)).toThrow(/Gram matrix.*calibration\.gram/)
    expect(() => gptqQuantize(w, 4, 8, p, { ...stats, gram: new Float64Array(9) })).toThrow(/9 entries, expected 8×8/)
    expect(() => gptqQuantize(w, 4, 8, params({ group: 3 }), { ...stats, gram: new Float64Array(64) })).toThrow(/group 3 does not divide the row length 8/)
    const bad = w.slice()
    bad[13] = NaN
    expect(() => gptqQuantize(bad, 4, 8, p, { ...stats, gram: new Float64Array(64) })).toThrow(/weight\[1, 5\] is NaN/)
    expect(gptqMethod.needs(p)).toBe('gram')
    expect(v.parse(gptqParamsSchema, {})).toEqual({ bits: 4, group: 128, sym: false, damp: 0.01, blocksize: 128, actorder: false })
    expect(() => v.parse(gptqParamsSchema, { bits: 9 })).toThrow()
    expect(() => v.parse(gptqParamsSchema, { bitz: 4 })).toThrow()
  })

  it('reports progress by rows and stops when cancelled', () => {
    const { weight, cal } = setup(8, 32, 5)
    const seen: number[] = []
    gptqQuantize(weight, 8, 32, params({ group: 8, blocksize: 8 }), cal, { onProgress: (d, total) => seen.push(d / total) })
    expect(seen).toEqual([0.25, 0.5, 0.75, 1])
    const ac = new AbortController()
    ac.abort()
    expect(() => gptqQuantize(weight, 8, 32, params({ group: 8 }), cal, { signal: ac.signal })).toThrow(/abort/i)
  })
})
