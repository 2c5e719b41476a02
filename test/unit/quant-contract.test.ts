import { describe, it, expect } from 'vitest'
import { totalBytes, type QuantizedTensor } from '../../worker/quant/contract'
import { parseQuantSpec } from '../../worker/quant/spec'
import { packCodes, unpackCodes } from '../../worker/quant/packing'
import { seededRandom } from '../../worker/inference/sampler'
import { gaussianWeights } from '../helpers/quant-random'

/**
 * What every method of this folder promises through the contract, checked on the same random
 * weights: storage() equals what the tensor holds, dequantizeRows(r0, r1) is a slice of the
 * full dequantisation, and levels(row, col) holds every dequantised value there.
 */
const ROWS = 12
const COLS = 256
const weight = gaussianWeights(ROWS * COLS, 11, 0.02, 61)
const means = Float64Array.from(gaussianWeights(COLS, 12, 1))
const calibration = { count: 100, mean: means, meanAbs: means.map(Math.abs), meanSq: means.map((x) => x * x) }

const SPECS = [
  'rtn:bits=4,group=128',
  'rtn:bits=3,group=64,sym=true',
  'rtn:bits=5,group=0',
  'rtn:bits=2,group=32,clip=mse',
  'rtn:bits=7,group=128,sym=true,clip=mse',
  'rtn:bits=8,group=256',
  'nf4:group=64',
  'fp4:group=32',
  'any4:group=128',
  'any3:group=64,weighting=activations',
  'any2:group=0,weighting=weights,init=quantile',
  'kmeans:bits=3,per=row,outliers=0.01',
  'kmeans:bits=6,per=tensor,outliers=0.02',
  'kmeans:bits=2,per=tensor',
]

describe.each(SPECS)('%s', (spec) => {
  const { method, params } = parseQuantSpec(spec)
  const q: QuantizedTensor = method.quantize(weight, ROWS, COLS, params, calibration)
  const full = q.dequantizeRows(0, ROWS)

  it('storage() of the shape equals the tensor\'s storage and bytes', () => {
    expect(q.storage).toEqual(method.storage(ROWS, COLS, params))
    expect(q.bytes).toBe(totalBytes(q.storage))
    expect(q.storage.codes).toBe(Math.ceil((ROWS * COLS * method.bits(params)) / 8))
    expect(q.method).toBe(method.id)
    expect(() => method.storage(0, COLS, params)).toThrow(/shape must be two positive integers, got \[0, 256\]/)
    expect(() => method.storage(ROWS, 2.5, params)).toThrow(/shape must be two positive integers/)
  })

  it('dequantizeRows(r0, r1) equals the slices of the full dequantisation', () => {
    for (const [r0, r1] of [[0, 1], [3, 7], [11, 12], [5, 5]] as const) {
      expect(q.dequantizeRows(r0, r1)).toEqual(full.subarray(r0 * COLS, r1 * COLS))
    }
    expect(() => q.dequantizeRows(0, ROWS + 1)).toThrow(RangeError)
  })

  it('levels(row, col) contain every dequantised value (outliers aside) and are ascending', () => {
    let outside = 0
    let unsorted = 0
    for (let r = 0; r < ROWS; r++) {
      let lv = q.levels(r, 0)
      for (let c = 0; c < COLS; c++) {
        // Levels are per group: fetch them again where a new group could start.
        if (c % 32 === 0) {
          lv = q.levels(r, c)
          for (let i = 1; i < lv.length; i++) if (!(lv[i]! > lv[i - 1]!)) unsorted++
        }
        if (!lv.includes(full[r * COLS + c]!)) outside++
      }
    }
    expect(unsorted).toBe(0)
    const outliersPerRow = method.id === 'kmeans' ? q.storage.outliers / 4 / ROWS : 0
    expect(outside).toBe(outliersPerRow * ROWS)
  })

  it('refuses NaN/Inf (naming row and column), a wrong length and a group that does not divide the row', () => {
    const bad = weight.slice()
    bad[3 * COLS + 5] = NaN
    expect(() => method.quantize(bad, ROWS, COLS, params, calibration)).toThrow(/weight\[3, 5\] is NaN/)
    bad[3 * COLS + 5] = 0
    bad[11 * COLS + 255] = Infinity
    expect(() => method.quantize(bad, ROWS, COLS, params, calibration)).toThrow(/weight\[11, 255\] is Infinity/)
    expect(() => method.quantize(weight.subarray(1), ROWS, COLS, params, calibration)).toThrow(/3071 values, shape \[12, 256\] needs 3072/)
    const group = (params as { group?: number }).group
    if (group) {
      // 200 columns: no group of these specs (32 … 256) divides it.
      const w200 = weight.subarray(0, 10 * 200)
      const c200 = { ...calibration, mean: means.subarray(0, 200) }
      expect(() => method.quantize(w200, 10, 200, params, c200)).toThrow(new RegExp(`group ${group} does not divide the row length 200`))
    }
  })

  it('is a quantization: error well below the weights, at most 2^bits levels a group', () => {
    let e2 = 0
    let w2 = 0
    for (let i = 0; i < full.length; i++) {
      e2 += (full[i]! - weight[i]!) ** 2
      w2 += weight[i]! ** 2
    }
    const bits = method.bits(params)
    // SQNR grows about 6 dB a bit; on Gaussian data with 8σ outliers every 61 weights even the
    // coarsest here (2-bit, one codebook for the tensor) keeps more than 2 dB a bit.
    expect(10 * Math.log10(w2 / e2)).toBeGreaterThan(Math.min(2 * bits, 20))
    expect(q.levels(0, 0).length).toBeLessThanOrEqual(1 << bits)
  })
})

describe('bit packing', () => {
  it.each([2, 3, 4, 5, 6, 7, 8])('%i-bit codes round-trip from any start', (bits) => {
    const rand = seededRandom(bits)
    const codes = Uint8Array.from({ length: 1001 }, () => Math.floor(rand() * (1 << bits)))
    const packed = packCodes(codes, bits)
    expect(packed.length).toBe(Math.ceil((1001 * bits) / 8))
    for (const [s, n] of [[0, 1001], [1, 17], [333, 400], [1000, 1]] as const) {
      expect(unpackCodes(packed, bits, s, n, new Uint8Array(n))).toEqual(codes.subarray(s, s + n))
    }
    // Independently: code i's bits are bits i·b … i·b+b−1 of the little-endian stream.
    const i = 501
    let v = 0
    for (let b = 0; b < bits; b++) v |= ((packed[(i * bits + b) >> 3]! >> ((i * bits + b) & 7)) & 1) << b
    expect(v).toBe(codes[i])
  })

  it('refuses a code wider than its bits', () => {
    expect(() => packCodes(Uint8Array.of(1, 16), 4)).toThrow(/code 16 at 1/)
  })
})
