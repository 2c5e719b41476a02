import { describe, it, expect } from 'vitest'
import { quantErrorMetrics } from '../../worker/quant/metrics'
import { parseQuantSpec } from '../../worker/quant/spec'
import { QuantParamError } from '../../worker/quant/contract'
import { gaussianWeights } from '../helpers/quant-random'

describe('quantization error metrics', () => {
  // 20000×64: more than one streaming block (2²⁰ values) of dequantised rows.
  const rows = 20000
  const cols = 64
  const T = 40
  const w = gaussianWeights(rows * cols, 2, 0.02, 19)
  const { method, params } = parseQuantSpec('rtn:bits=3,group=32')
  const q = method.quantize(w, rows, cols, params)
  const x = gaussianWeights(T * cols, 3, 1) // T calibration tokens
  const gram = new Float64Array(cols * cols)
  for (let t = 0; t < T; t++) for (let a = 0; a < cols; a++) for (let b = 0; b < cols; b++) gram[a * cols + b] += x[t * cols + a]! * x[t * cols + b]!

  it('weight MSE, SQNR and max |error| equal a direct float64 computation', () => {
    const deq = q.dequantizeRows(0, rows)
    let e2 = 0
    let w2 = 0
    let mx = 0
    for (let i = 0; i < w.length; i++) {
      const d = w[i]! - deq[i]!
      e2 += d * d
      w2 += w[i]! * w[i]!
      mx = Math.max(mx, Math.abs(d))
    }
    const m = quantErrorMetrics(w, q)
    expect(m.mse).toBeCloseTo(e2 / w.length, 15)
    expect(m.sqnrDb).toBeCloseTo(10 * Math.log10(w2 / e2), 9)
    expect(m.maxAbsError).toBe(mx)
    expect(m.outputMse).toBeNull()
  })

  it('output error tr(E·XᵀX·Eᵀ) equals ‖X·Eᵀ‖² from the activations themselves', () => {
    const deq = q.dequantizeRows(0, rows)
    let direct = 0
    for (let t = 0; t < T; t++) {
      for (let r = 0; r < rows; r++) {
        let y = 0
        for (let j = 0; j < cols; j++) y += x[t * cols + j]! * (w[r * cols + j]! - deq[r * cols + j]!)
        direct += y * y
      }
    }
    const m = quantErrorMetrics(w, q, { gram, count: T })
    expect(m.outputErrorPerToken! / (direct / T)).toBeCloseTo(1, 10)
    expect(m.outputMse! / (direct / (T * rows))).toBeCloseTo(1, 10)
  })

  it('an exact quantization has zero error and infinite SQNR', () => {
    const grid = Float32Array.from({ length: 64 }, (_, i) => (i % 8) / 8 - 0.5)
    const m = quantErrorMetrics(grid, parseQuantSpec('rtn:bits=3,group=0').method.quantize(grid, 1, 64, parseQuantSpec('rtn:bits=3,group=0').params))
    expect(m.mse).toBe(0)
    expect(m.sqnrDb).toBe(Infinity)
  })

  it('refuses a Gram matrix or weight of the wrong size', () => {
    expect(() => quantErrorMetrics(w, q, { gram: new Float64Array(10), count: 1 })).toThrow(QuantParamError)
    expect(() => quantErrorMetrics(w.subarray(1), q)).toThrow(/weight has/)
    expect(() => quantErrorMetrics(w, q, { gram, count: 0 })).toThrow(/token count/)
  })
})
