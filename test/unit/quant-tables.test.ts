import { describe, it, expect } from 'vitest'
import * as v from 'valibot'
import { NF4_TABLE, NF4_VALUES, nf4Method } from '../../worker/quant/nf4'
import { FP4_TABLE, fp4Method } from '../../worker/quant/fp4'
import { quantizeAbsmaxTable, type AbsmaxTableTensor } from '../../worker/quant/absmax-table'
import { f16ToF32, f32ToF16 } from '../../worker/formats/dtypes'
import { gaussianWeights } from '../helpers/quant-random'

const f16 = (x: number) => f16ToF32(f32ToF16(x))

/** Φ(x) by Simpson's rule on the density (independent of any library inverse). */
function normalCdf(x: number): number {
  const n = 4000
  const h = x / n
  const phi = (t: number) => Math.exp(-t * t / 2) / Math.sqrt(2 * Math.PI)
  let s = phi(0) + phi(x)
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * phi(i * h)
  return 0.5 + (s * h) / 3
}
function normalPpf(p: number): number {
  let lo = -10
  let hi = 10
  for (let i = 0; i < 80; i++) {
    const mid = (lo + hi) / 2
    if (normalCdf(mid) < p) lo = mid
    else hi = mid
  }
  return (lo + hi) / 2
}
const linspace = (a: number, b: number, n: number) => Array.from({ length: n }, (_, i) => Math.fround(a + ((b - a) * i) / (n - 1)))

describe('the 16-value tables', () => {
  it('NF4 is bitsandbytes\' create_normal_map(0.9677083, use_extra_value=True), normalised', () => {
    // 8 positive quantiles, 7 negative, an exact zero; scaled so the extremes are ±1.
    const pos = linspace(0.9677083, 0.5, 9).slice(0, -1).map(normalPpf)
    const neg = linspace(0.9677083, 0.5, 8).slice(0, -1).map((p) => -normalPpf(p))
    const all = [...pos, 0, ...neg].sort((a, b) => a - b)
    const max = Math.max(...all.map(Math.abs))
    const expected = all.map((x) => x / max)
    for (let i = 0; i < 16; i++) expect(Math.abs(NF4_VALUES[i]! - expected[i]!)).toBeLessThan(2e-6)
    expect(NF4_TABLE.values[7]).toBe(0)
  })

  it('FP4 is the E2M1 decoding of each 4-bit pattern S EE M (bias 1, subnormal at E = 0)', () => {
    for (let code = 0; code < 16; code++) {
      const sign = code & 8 ? -1 : 1
      const e = (code >> 1) & 3
      const m = code & 1
      const mag = e === 0 ? m * 0.5 : 2 ** (e - 1) * (1 + m / 2)
      expect(FP4_TABLE.values[code]).toBe(sign * mag)
    }
  })
})

function bruteNearest(values: Float32Array, x: number, tie: (a: number, b: number) => number): number {
  let best = -1
  for (let c = 0; c < 16; c++) {
    if (c === 8 && values === FP4_TABLE.values) continue // −0 is never produced
    if (best < 0) {
      best = c
      continue
    }
    const d = Math.abs(values[c]! - x) - Math.abs(values[best]! - x)
    if (d < 0 || (d === 0 && tie(c, best) < 0)) best = c
  }
  return best
}

describe.each([
  ['nf4', NF4_TABLE, 1, (a: number, b: number) => NF4_TABLE.values[a]! - NF4_TABLE.values[b]!],
  ['fp4', FP4_TABLE, 6, (a: number, b: number) => (a & 1) - (b & 1)],
] as const)('%s absmax blocks', (_id, table, tmax, tie) => {
  const rows = 8
  const cols = 128
  const w = gaussianWeights(rows * cols, 4, 0.03, 13)
  const q = quantizeAbsmaxTable(table, w, rows, cols, { group: 32 }) as AbsmaxTableTensor
  const deq = q.dequantizeRows(0, rows)

  it('stores absmax/max|table| in fp16 per block and codes each weight to the nearest value', () => {
    for (let b = 0; b < (rows * cols) / 32; b++) {
      let amax = 0
      for (let i = b * 32; i < b * 32 + 32; i++) amax = Math.max(amax, Math.abs(w[i]!))
      const s = f16(amax / tmax)
      expect(q.scales.values[b]).toBe(s)
      for (let i = b * 32; i < b * 32 + 32; i++) {
        const code = bruteNearest(table.values, Math.fround(w[i]! / s), tie)
        expect(q.code(Math.floor(i / cols), i % cols)).toBe(code)
        expect(deq[i]).toBe(Math.fround(table.values[code]! * s))
      }
    }
  })

  it('weights on the scaled table come back exactly', () => {
    const s = 0.0078125 // 2⁻⁷, fp16-exact
    const on = Float32Array.from({ length: 64 }, (_, i) => table.values[(i * 7) % 16]! * s + 0)
    on[5] = tmax * s // the block's absmax sits on the table's end
    on[37] = -tmax * s
    const out = quantizeAbsmaxTable(table, on, 2, 32, { group: 0 }).dequantizeRows(0, 2)
    expect(out).toEqual(on)
  })

  it('a zero block stays zero', () => {
    expect(quantizeAbsmaxTable(table, new Float32Array(64), 1, 64, { group: 32 }).dequantizeRows(0, 1)).toEqual(new Float32Array(64))
  })
})

describe('ties and storage', () => {
  it('FP4 rounds halfway magnitudes to the even mantissa, NF4 to the lower value', () => {
    // Block absmax 6 → scale 1, so w/s is w itself.
    const w = Float32Array.of(6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -5, -0.75, -0.25, 0, 0, 0, 0, 0)
    const out = quantizeAbsmaxTable(FP4_TABLE, w, 1, 16, { group: 0 }).dequantizeRows(0, 1)
    expect(Array.from(out.subarray(0, 11))).toEqual([6, 0, 1, 1, 2, 2, 4, 4, -4, -1, 0])
    // Halfway between NF4's 0 (code 7) and 0.0796 (code 8), exactly (halving is exact): → 0.
    const half = NF4_TABLE.values[8]! / 2
    const n = quantizeAbsmaxTable(NF4_TABLE, Float32Array.of(1, half, -half, half * 1.0001), 1, 4, { group: 0 })
    expect([n.code(0, 1), n.code(0, 2), n.code(0, 3)]).toEqual([7, 7, 8])
  })

  it('counts 4-bit codes and one fp16 scale per block', () => {
    const p = v.parse(nf4Method.schema, {})
    expect(p).toEqual({ group: 64 })
    expect(nf4Method.storage(4096, 4096, p)).toEqual({ codes: 8_388_608, scales: 4096 * 64 * 2, zeros: 0, tables: 0, outliers: 0 })
    expect(fp4Method.storage(3, 10, { group: 0 })).toEqual({ codes: 15, scales: 6, zeros: 0, tables: 0, outliers: 0 })
    expect(() => fp4Method.storage(3, 10, { group: 4 })).toThrow(/group 4 does not divide the row length 10/)
  })
})
