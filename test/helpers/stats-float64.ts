import { expect } from 'vitest'
import { f16ToF32, f32ToBF16 as bf16Bits, f32ToF16 as f16Bits } from '../../worker/formats/dtypes'
import type { StatsOptions, TensorStats } from '../../worker/stats/stats-types'

/**
 * Test-only float64 statistics computed the obvious way (whole tensor in memory, exact
 * two-pass moments, full sort for top-k), to check the streaming kernels against. Follows the
 * definitions documented in worker/stats/stats-accumulator.ts.
 */
export interface Float64Stats {
  count: number
  finite: number
  min: number
  max: number
  absmax: number
  mean: number
  /** Mean of |x|: the scale a float64 sum of these values is accurate to (times ~1e-16). */
  meanAbs: number
  std: number
  kurtosis: number
  nan: number
  inf: number
  zeros: number
  histogram: number[]
  rowAbsmax: number[]
  colAbsmax: number[]
  topK: { index: number; value: number }[]
  heatmap: { rows: number; cols: number; values: number[] }
}

export function float64Stats(
  values: ArrayLike<number>,
  rows: number,
  cols: number,
  opts: { bins: number; topK: number; heatmapSize: number },
): Float64Stats {
  const finiteIdx: number[] = []
  let nan = 0
  let inf = 0
  let zeros = 0
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!
    if (Number.isNaN(x)) nan++
    else if (!Number.isFinite(x)) inf++
    else {
      finiteIdx.push(i)
      if (x === 0) zeros++
    }
  }
  const n = finiteIdx.length
  let min = Infinity
  let max = -Infinity
  let sum = 0
  let sumAbs = 0
  for (const i of finiteIdx) {
    const x = values[i]!
    if (x < min) min = x
    if (x > max) max = x
    sum += x
    sumAbs += Math.abs(x)
  }
  const mean = n ? sum / n : 0
  let m2 = 0
  let m4 = 0
  for (const i of finiteIdx) {
    const d = values[i]! - mean
    m2 += d * d
    m4 += d * d * d * d
  }
  if (!n) min = max = 0
  const hist = new Array<number>(opts.bins).fill(0)
  const scale = max > min ? opts.bins / (max - min) : 0
  for (const i of finiteIdx) {
    const b = Math.floor((values[i]! - min) * scale)
    hist[Math.min(opts.bins - 1, Math.max(0, b))]!++
  }
  const rowAbsmax = new Array<number>(rows).fill(0)
  const colAbsmax = new Array<number>(cols).fill(0)
  const hr = Math.min(rows, opts.heatmapSize)
  const hc = Math.min(cols, opts.heatmapSize)
  const cellSum = new Array<number>(hr * hc).fill(0)
  const cellN = new Array<number>(hr * hc).fill(0)
  for (const i of finiteIdx) {
    const r = Math.floor(i / cols)
    const c = i % cols
    const a = Math.abs(values[i]!)
    rowAbsmax[r] = Math.max(rowAbsmax[r]!, a)
    colAbsmax[c] = Math.max(colAbsmax[c]!, a)
    const k = Math.floor((r * hr) / rows) * hc + Math.floor((c * hc) / cols)
    cellSum[k] += a
    cellN[k]++
  }
  // Threshold first (numeric typed-array sort), then the full comparator on the few survivors.
  const mags = Float64Array.from(finiteIdx, (i) => Math.abs(values[i]!)).sort()
  const cut = opts.topK > 0 && mags.length ? mags[Math.max(0, mags.length - opts.topK)]! : Infinity
  const topK = finiteIdx
    .filter((i) => Math.abs(values[i]!) >= cut)
    .map((index) => ({ index, value: values[index]! }))
    .sort((a, b) => Math.abs(b.value) - Math.abs(a.value) || a.index - b.index)
    .slice(0, opts.topK)
  return {
    count: values.length,
    finite: n,
    min: min + 0,
    max: max + 0,
    absmax: n ? Math.max(Math.abs(min), Math.abs(max)) : 0,
    mean,
    meanAbs: n ? sumAbs / n : 0,
    std: n ? Math.sqrt(m2 / n) : 0,
    kurtosis: n && m2 ? (n * m4) / (m2 * m2) : 0,
    nan,
    inf,
    zeros,
    histogram: hist,
    rowAbsmax,
    colAbsmax,
    topK,
    heatmap: { rows: hr, cols: hc, values: cellSum.map((s, k) => (cellN[k] ? s / cellN[k]! : 0)) },
  }
}

/** Deterministic PRNG (mulberry32) with a Box–Muller normal. */
export function rng(seed: number): { next(): number; normal(): number } {
  let s = seed >>> 0
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    next,
    normal: () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()),
  }
}

/** Relative closeness with an absolute floor, for moments. */
export function close(a: number, b: number, rel = 1e-6, abs = 1e-12): boolean {
  return Math.abs(a - b) <= Math.max(abs, rel * Math.max(Math.abs(a), Math.abs(b)))
}

/** Largest |a−b|/max(|a|,|b|) over two equally long arrays (0 where both are 0). */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity
  let worst = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!)
    if (d > 0) worst = Math.max(worst, d / Math.max(Math.abs(a[i]!), Math.abs(b[i]!)))
  }
  return worst
}

/** Asserts every field of `s` against the float64 computation over `v` viewed as rows × cols. */
/**
 * `momentTol`: relative tolerance of std, kurtosis and the heatmap means (the mean is compared
 * against the scale of the data, mean |x|, since it may cancel to ~0). 1e-9 for pure float64
 * kernels; the WASM kernel sums in float32 within groups of 32 values (moments) or 32 rows
 * (heatmap columns) and is held to 1e-6 (the spec).
 */
export function expectMatchesFloat64(s: TensorStats, v: Float32Array, rows: number, cols: number, o: StatsOptions, momentTol = 1e-9): void {
  const ref = float64Stats(v, rows, cols, o)
  expect(s.count).toBe(ref.count)
  expect([s.nan, s.inf, s.zeros]).toEqual([ref.nan, ref.inf, ref.zeros])
  expect([s.min, s.max, s.absmax]).toEqual([ref.min, ref.max, ref.absmax])
  // With ±1e30 in the data the mean cancels; any summation order is only exact to ~eps·mean|x|.
  const meanFloor = (momentTol > 1e-9 ? momentTol / 10 : 1e-12) * ref.meanAbs
  expect(close(s.mean, ref.mean, momentTol, meanFloor), `mean ${s.mean} vs ${ref.mean}`).toBe(true)
  expect(close(s.std, ref.std, momentTol), `std ${s.std} vs ${ref.std}`).toBe(true)
  expect(close(s.kurtosis, ref.kurtosis, momentTol), `kurtosis ${s.kurtosis} vs ${ref.kurtosis}`).toBe(true)
  expect(s.histogram.lo).toBe(ref.min)
  expect(s.histogram.hi).toBe(ref.max)
  expect(s.histogram.counts).toEqual(ref.histogram)
  expect(s.histogram.counts.reduce((a, b) => a + b, 0)).toBe(ref.finite)
  expect(s.rowAbsmax).toEqual(ref.rowAbsmax)
  expect(s.colAbsmax).toEqual(ref.colAbsmax)
  expect(s.topK.map(({ index, value }) => ({ index, value }))).toEqual(ref.topK)
  for (const t of s.topK) expect(t.row * cols + t.col).toBe(t.index)
  expect([s.heatmap.rows, s.heatmap.cols]).toEqual([ref.heatmap.rows, ref.heatmap.cols])
  expect(maxRelDiff(s.heatmap.values, ref.heatmap.values), 'heatmap').toBeLessThan(momentTol)
}

/** Normal(0, 0.02) weights plus a few outlier columns, NaN/±Inf, ±0 and ±1e30 sprinkled in. */
export function adversarial(rows: number, cols: number, seed: number, round?: (x: number) => number): Float32Array {
  const r = rng(seed)
  const v = new Float32Array(rows * cols)
  for (let i = 0; i < v.length; i++) {
    const c = i % cols
    v[i] = r.normal() * (c % 17 === 3 ? 0.5 : 0.02)
  }
  const specials = [NaN, Infinity, -Infinity, 0, -0, 1e30, -1e30, 0, NaN]
  for (let k = 0; k < Math.max(1, v.length / 50); k++) {
    const s = specials[k % specials.length]!
    // 1e30 only in some tensors, so moments are also checked on ordinary data.
    if (Math.abs(s) === 1e30 && seed % 2 === 0) continue
    v[Math.floor(r.next() * v.length)] = s
  }
  if (round) for (let i = 0; i < v.length; i++) v[i] = round(v[i]!)
  return v
}

// Allocation-free 16-bit rounding for generating large test tensors (dtypes.ts allocates two
// typed arrays per call, which takes seconds on millions of values). Checked against dtypes.ts
// in stats-kernels.test.ts.
const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)
let f16Table: Float32Array | null = null

/** IEEE binary16 / bfloat16 bits of x, round to nearest even: the engine's encoders (exhaustively tested in dtypes.test). */
export { f32ToF16 as f16Bits, f32ToBF16 as bf16Bits } from '../../worker/formats/dtypes'

export function f16Value(bits: number): number {
  if (!f16Table) {
    f16Table = new Float32Array(65536)
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i)
  }
  return f16Table[bits]!
}

export function bf16Value(bits: number): number {
  u32[0] = bits << 16
  return f32[0]!
}

export const toF16 = (x: number) => f16Value(f16Bits(x))
export const toBF16 = (x: number) => bf16Value(bf16Bits(x))
