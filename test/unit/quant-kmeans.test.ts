import { describe, it, expect } from 'vitest'
import * as v from 'valibot'
import { kmeansMethod, kmeansSchema, outliersPerRow, quantizeKMeans, type KMeansParams } from '../../worker/quant/kmeans'
import { f16ToF32, f32ToF16 } from '../../worker/formats/dtypes'
import { gaussianWeights } from '../helpers/quant-random'

const params = (p: Partial<KMeansParams>): KMeansParams => v.parse(kmeansSchema, p)
const f16 = (x: number) => f16ToF32(f32ToF16(x))

describe('KLLM k-means with dense-and-sparse outliers', () => {
  const rows = 10
  const cols = 200
  const w = gaussianWeights(rows * cols, 17, 0.02, 23)

  it('keeps the top ⌈fraction·cols⌉ |w| of each row exactly (fp16) and out of the codebook', () => {
    const q = quantizeKMeans(w, rows, cols, params({ bits: 3, outliers: 0.02 }))
    const deq = q.dequantizeRows(0, rows)
    const k = outliersPerRow(cols, 0.02)
    expect(k).toBe(4)
    for (let r = 0; r < rows; r++) {
      const row = Array.from(w.subarray(r * cols, (r + 1) * cols))
      const top = row.map((x, j) => [Math.abs(x), j] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k).map(([, j]) => j).sort((a, b) => a - b)
      expect(Array.from(q.outlierCols.subarray(r * k, (r + 1) * k))).toEqual(top)
      for (const j of top) expect(deq[r * cols + j]).toBe(f16(row[j]!))
      // The codebook came from the other weights only: its extremes lie inside their range.
      const rest = row.filter((_, j) => !top.includes(j))
      const book = q.codebook(r)
      expect(book[0]!).toBeGreaterThanOrEqual(f16(Math.min(...rest)))
      expect(book[7]!).toBeLessThanOrEqual(f16(Math.max(...rest)))
      // Every other weight takes its nearest codebook value.
      for (let j = 0; j < cols; j++) {
        if (top.includes(j)) continue
        const best = Math.min(...Array.from(book, (c) => Math.abs(c - row[j]!)))
        expect(Math.abs(deq[r * cols + j]! - row[j]!)).toBe(best)
      }
    }
  })

  it('outliers help: lower error than without, at the same code bits', () => {
    const err = (o: number) => {
      const d = quantizeKMeans(w, rows, cols, params({ bits: 3, outliers: o })).dequantizeRows(0, rows)
      let e = 0
      for (let i = 0; i < w.length; i++) e += (d[i]! - w[i]!) ** 2
      return e
    }
    expect(err(0.02)).toBeLessThan(err(0) * 0.9)
  })

  it('per tensor: one codebook for all rows; per row fits each row better', () => {
    const t = quantizeKMeans(w, rows, cols, params({ bits: 4, per: 'tensor' }))
    const r = quantizeKMeans(w, rows, cols, params({ bits: 4, per: 'row' }))
    expect(t.codebook(0)).toEqual(t.codebook(9))
    expect(t.codebooks.values.length).toBe(16)
    const sse = (d: Float32Array) => d.reduce((s, x, i) => s + (x - w[i]!) ** 2, 0)
    expect(sse(r.dequantizeRows(0, rows))).toBeLessThan(sse(t.dequantizeRows(0, rows)))
  })

  it('a row of 2^bits distinct fp16 values is exact', () => {
    const vals = [-0.5, -0.25, -0.125, 0, 0.0625, 0.25, 0.375, 1]
    const row = Float32Array.from({ length: 40 }, (_, j) => vals[(j * 3) % 8]!)
    expect(quantizeKMeans(row, 1, 40, params({ bits: 3 })).dequantizeRows(0, 1)).toEqual(row)
  })

  it('storage: codes, fp16 codebooks, outliers as uint16 column + fp16 value (uint32 past 65536 columns)', () => {
    expect(kmeansMethod.storage(4096, 4096, params({ bits: 3, outliers: 0.005 }))).toEqual({
      codes: (4096 * 4096 * 3) / 8,
      scales: 0,
      zeros: 0,
      tables: 4096 * 8 * 2,
      outliers: 4096 * 21 * 4, // ⌈0.005·4096⌉ = 21
    })
    expect(kmeansMethod.storage(2, 70000, params({ bits: 2, per: 'tensor', outliers: 0.001 }))).toEqual({
      codes: 35000,
      scales: 0,
      zeros: 0,
      tables: 8,
      outliers: 2 * 70 * 6,
    })
    expect(outliersPerRow(1000, 0.005)).toBe(5)
    expect(Object.is(outliersPerRow(1000, 0), 0)).toBe(true)
  })

  it('rejects fractions outside [0, 0.5] and bits outside 2–8', () => {
    expect(() => params({ outliers: 0.6 })).toThrow(/outliers must be a fraction/)
    expect(() => params({ bits: 1 })).toThrow(/bits must be an integer from 2 to 8/)
  })
})
