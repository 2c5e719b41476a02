import { DEFAULT_STATS_OPTIONS, type StatsOptions, type TensorStats } from './stats-types'

/**
 * What the two stats kernels (plain TS reference, WASM SIMD) share: the streaming
 * accumulator interface, option validation, the heatmap/histogram geometry and the final
 * assembly of TensorStats. Both kernels follow the rules written here, so their results are
 * identical for counts, extremes, absmax arrays, top-k and histograms; moments and heatmap
 * means agree to ~1e-7 relative (the TS kernel sums in float64, the WASM kernel partly in
 * float32 over short runs).
 *
 * Definitions (the doc of TensorStats leaves these open):
 * - `count` is every element (rows × cols); NaN and ±Inf are counted in `nan`/`inf` and left
 *   out of everything else (moments, min/max, absmax, histogram, top-k, heatmap means).
 * - `std` is the population standard deviation; `kurtosis` = n·M4/M2² (Pearson, normal = 3).
 *   With no finite values min/max/mean/std are 0; with std = 0 kurtosis is 0 (JSON has no NaN).
 * - A -0 minimum or maximum is reported as 0.
 * - Histogram bin of a finite x: floor((x − lo)·scale) clamped to [0, bins−1], scale =
 *   bins / (hi − lo) in float64 (0 when hi = lo), lo = min, hi = max.
 * - Top-k: largest |x| first, ties by smaller flat index.
 * - Heatmap: row r lies in band floor(r·hr/rows), column c in cell floor(c·hc/cols), with
 *   hr = min(rows, heatmapSize), hc = min(cols, heatmapSize); a cell holds mean |x| over its
 *   finite values (0 if none).
 */
export interface StatsAccumulator {
  readonly rows: number
  readonly cols: number
  /** Pass 1: rows [rowStart, rowStart + values.length / cols), in order, no gaps. */
  addRows(values: Float32Array, rowStart: number): void
  /**
   * After pass 1: true when the histogram needs a second pass over all rows (values are not
   * all exactly representable in 16-bit floats, so the fine bins cannot be rebinned exactly).
   */
  needsHistogramPass(): boolean
  /** Pass 2 (only when needsHistogramPass()): any rows, each exactly once. */
  addHistogramRows(values: Float32Array): void
  finish(tensor: string): TensorStats
  /** finish() with typed arrays (see PackedTensorStats). */
  finishPacked(tensor: string): PackedTensorStats
  /** Releases kernel memory; the accumulator is unusable afterwards. */
  dispose(): void
}

export type StatsKernelKind = 'wasm' | 'ts'

/** Fine histogram key: the top 19 bits of the float32 (sign, exponent, 10 mantissa bits). */
export const FINE_SHIFT = 13
export const FINE_BINS = 1 << (32 - FINE_SHIFT)
/** Mantissa bits below the fine key; all zero for F16/BF16/FP8/small-integer values. */
export const FINE_LOW_MASK = (1 << FINE_SHIFT) - 1

const LIMITS = { bins: [1, 1 << 20], topK: [0, 100_000], heatmapSize: [1, 4096] } as const

export function resolveStatsOptions(partial: Partial<StatsOptions> = {}): StatsOptions {
  const out = { ...DEFAULT_STATS_OPTIONS, ...partial }
  for (const key of ['bins', 'topK', 'heatmapSize'] as const) {
    const v = out[key]
    const [lo, hi] = LIMITS[key]
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new RangeError(`stats option ${key} must be an integer in [${lo}, ${hi}], got ${v}`)
    }
  }
  return { bins: out.bins, topK: out.topK, heatmapSize: out.heatmapSize }
}

export interface HeatmapGeometry {
  rows: number
  cols: number
  /** Column cell of each column. */
  colCell: Int32Array
}

export function heatmapGeometry(rows: number, cols: number, size: number): HeatmapGeometry {
  const hc = Math.min(cols, size)
  const colCell = new Int32Array(cols)
  for (let c = 0; c < cols; c++) colCell[c] = Math.floor((c * hc) / cols)
  return { rows: Math.min(rows, size), cols: hc, colCell }
}

/** Heatmap row band of tensor row r (same float64 formula in both kernels). */
export function bandOf(r: number, hr: number, rows: number): number {
  return Math.floor((r * hr) / rows)
}

/** Elements in band/cell k of n items split into m parts by floor(i·m/n): first(k+1) − first(k). */
function partSize(k: number, m: number, n: number): number {
  // No inner closure: tsx (keepNames) wraps every closure creation in a defineProperty call.
  return Math.ceil(((k + 1) * n) / m) - Math.ceil((k * n) / m)
}

export function histogramScale(lo: number, hi: number, bins: number): number {
  return hi > lo ? bins / (hi - lo) : 0
}

/** Running central moments of the finite values (Pébay 2008 pairwise formulas). */
export interface Moments {
  n: number
  mean: number
  m2: number
  m3: number
  m4: number
}

export function mergeMoments(a: Moments, n: number, mean: number, m2: number, m3: number, m4: number): void {
  if (n === 0) return
  if (a.n === 0) {
    Object.assign(a, { n, mean, m2, m3, m4 })
    return
  }
  const na = a.n
  const nb = n
  const nn = na + nb
  const delta = mean - a.mean
  const dn = delta / nn
  const dn2 = dn * dn
  const t = delta * dn * na * nb
  const m4n =
    a.m4 + m4 + t * dn2 * (na * na - na * nb + nb * nb) + 6 * dn2 * (na * na * m2 + nb * nb * a.m2) + 4 * dn * (na * m3 - nb * a.m3)
  const m3n = a.m3 + m3 + t * dn * (na - nb) + 3 * dn * (na * m2 - nb * a.m2)
  a.m2 = a.m2 + m2 + t
  a.m3 = m3n
  a.m4 = m4n
  a.mean = a.mean + dn * nb
  a.n = nn
}

/** Everything a kernel hands over at the end; finalizeStats turns it into PackedTensorStats. */
export interface RawStats {
  rows: number
  cols: number
  options: StatsOptions
  min: number
  max: number
  nan: number
  inf: number
  zeros: number
  moments: Moments
  /** Typed arrays owned by the caller from here on (they are transferred, not copied). */
  histogram: Float64Array
  /** Float64Array for F64 tensors, whose magnitudes float32 cannot hold. */
  rowAbsmax: Float32Array | Float64Array
  colAbsmax: Float32Array | Float64Array
  /**
   * The moments are those of x / momentScale (a power of two, 1 unless given): F64 values
   * near 1e300 have squares beyond float64, so their moments are taken of scaled values.
   */
  momentScale?: number
  /** Kept top-k entries in any order. */
  top: { value: number; index: number }[]
  heatmap: HeatmapGeometry
  cellSum: ArrayLike<number>
  cellBad: ArrayLike<number>
  /**
   * The cell means already computed from cellSum/cellBad by the rule below (the WASM kernel
   * does this loop itself: in a fresh worker the JS loop runs unoptimised for many tensors).
   */
  heatmapMeans?: Float64Array
}

/**
 * TensorStats with its long arrays still typed: what a stats worker posts (the buffers are
 * transferred, where number[] would be cloned element by element) and what unpackTensorStats
 * turns into the plain-JSON TensorStats.
 */
export interface PackedTensorStats {
  head: Omit<TensorStats, 'histogram' | 'rowAbsmax' | 'colAbsmax' | 'heatmap'>
  histogram: { lo: number; hi: number; counts: Float64Array }
  rowAbsmax: Float32Array | Float64Array
  colAbsmax: Float32Array | Float64Array
  heatmap: { rows: number; cols: number; values: Float64Array }
}

export function unpackTensorStats(p: PackedTensorStats): TensorStats {
  return {
    ...p.head,
    histogram: { lo: p.histogram.lo, hi: p.histogram.hi, counts: toArray(p.histogram.counts) },
    rowAbsmax: toArray(p.rowAbsmax),
    colAbsmax: toArray(p.colAbsmax),
    heatmap: { rows: p.heatmap.rows, cols: p.heatmap.cols, values: toArray(p.heatmap.values) },
  }
}

/** The buffers of a packed result, for postMessage's transfer list. */
export function packedTransferList(p: PackedTensorStats): ArrayBuffer[] {
  const all = [p.histogram.counts.buffer, p.rowAbsmax.buffer, p.colAbsmax.buffer, p.heatmap.values.buffer] as ArrayBuffer[]
  return [...new Set(all)]
}

function byMagnitude(a: { value: number; index: number }, b: { value: number; index: number }): number {
  return Math.abs(b.value) - Math.abs(a.value) || a.index - b.index
}

export function finalizeStats(tensor: string, raw: RawStats): PackedTensorStats {
  const { rows, cols, moments } = raw
  const finite = moments.n
  const none = finite === 0
  const scale = raw.momentScale ?? 1
  // Kurtosis is scale-free; mean and std scale back (a power of two: exact).
  const std = none ? 0 : Math.sqrt(moments.m2 / finite) * scale
  const kurtosis = none || moments.m2 === 0 ? 0 : (finite * moments.m4) / (moments.m2 * moments.m2)
  const min = none ? 0 : raw.min + 0 // + 0 turns -0 into 0
  const max = none ? 0 : raw.max + 0
  const sorted = raw.top.slice().sort(byMagnitude)
  const topK = new Array<TensorStats['topK'][number]>(sorted.length)
  for (let i = 0; i < sorted.length; i++) {
    const { value, index } = sorted[i]!
    topK[i] = { index, row: Math.floor(index / cols), col: index % cols, value }
  }
  const { rows: hr, cols: hc } = raw.heatmap
  const values = raw.heatmapMeans ?? heatmapMeans(raw, hr, hc)
  return {
    head: {
      tensor,
      rows,
      cols,
      count: rows * cols,
      min,
      max,
      mean: none ? 0 : moments.mean * scale,
      std,
      absmax: none ? 0 : Math.max(Math.abs(min), Math.abs(max)),
      kurtosis,
      nan: raw.nan,
      inf: raw.inf,
      zeros: raw.zeros,
      topK,
    },
    histogram: { lo: min, hi: max, counts: raw.histogram },
    rowAbsmax: raw.rowAbsmax,
    colAbsmax: raw.colAbsmax,
    heatmap: { rows: hr, cols: hc, values },
  }
}

function heatmapMeans(raw: RawStats, hr: number, hc: number): Float64Array {
  const { rows, cols, cellSum, cellBad } = raw
  const values = new Float64Array(hr * hc)
  const cellCols = new Float64Array(hc)
  for (let c = 0; c < hc; c++) cellCols[c] = partSize(c, hc, cols)
  for (let b = 0; b < hr; b++) {
    const bandRows = partSize(b, hr, rows)
    for (let c = 0, k = b * hc; c < hc; c++, k++) {
      const n = bandRows * cellCols[c]! - cellBad[k]!
      values[k] = n > 0 ? cellSum[k]! / n : 0
    }
  }
  return values
}

/** Typed array → number[]: a plain loop is several times faster than Array.from here. */
function toArray(a: ArrayLike<number>): number[] {
  const out = new Array<number>(a.length)
  for (let i = 0; i < a.length; i++) out[i] = a[i]!
  return out
}

/** Checks the pass-1 row order contract shared by both kernels. */
export function checkRowChunk(values: Float32Array | Float64Array, rowStart: number, nextRow: number, rows: number, cols: number): number {
  if (cols === 0 || values.length % cols !== 0) {
    throw new RangeError(`stats chunk of ${values.length} values is not a whole number of rows of ${cols}`)
  }
  const n = values.length / cols
  if (rowStart !== nextRow) throw new RangeError(`stats rows must arrive in order: expected row ${nextRow}, got ${rowStart}`)
  if (rowStart + n > rows) throw new RangeError(`stats chunk ends at row ${rowStart + n}, tensor has ${rows}`)
  return n
}
