import type { StatsOptions, TensorStats } from './stats-types'
import {
  FINE_BINS,
  FINE_LOW_MASK,
  FINE_SHIFT,
  bandOf,
  checkRowChunk,
  finalizeStats,
  heatmapGeometry,
  histogramScale,
  mergeMoments,
  unpackTensorStats,
  type HeatmapGeometry,
  type PackedTensorStats,
  type Moments,
  type StatsAccumulator,
} from './stats-accumulator'

/**
 * The plain-TypeScript stats kernel: the readable definition of every statistic, and the
 * reference the WASM kernel is tested against. One scalar loop per chunk of rows; all sums
 * in float64 (JS numbers); moments by an exact two-pass per chunk merged with Pébay's
 * formulas, so a large mean next to a small spread loses nothing.
 */
export class ReferenceStatsAccumulator implements StatsAccumulator {
  private nextRow = 0
  private histRows = 0
  private min = Infinity
  private max = -Infinity
  private nan = 0
  private inf = 0
  private zeros = 0
  private lowBits = 0
  private readonly moments: Moments = { n: 0, mean: 0, m2: 0, m3: 0, m4: 0 }
  private readonly fine = new Uint32Array(FINE_BINS)
  private histogram: Float64Array | null = null
  private readonly rowAbsmax: Float32Array | Float64Array
  private readonly colAbsmax: Float32Array | Float64Array
  /** float64 mode: moments are taken in pass 2, of x / momentScale (see addHistogramRows). */
  private momentScale = 1
  private readonly heat: HeatmapGeometry
  private readonly cellSum: Float64Array
  private readonly cellBad: Float64Array
  private readonly top: TopKHeap

  /**
   * `float64`: values arrive as Float64Array (F64 tensors, OpenedModel.readRows64) and are
   * counted in float64 throughout: extremes, per-channel absmax, top-k, histogram, and moments
   * scaled by a power of two so that values near 1e300 neither overflow nor become Inf.
   */
  constructor(
    readonly rows: number,
    readonly cols: number,
    private readonly options: StatsOptions,
    private readonly float64 = false,
  ) {
    this.rowAbsmax = float64 ? new Float64Array(rows) : new Float32Array(rows)
    this.colAbsmax = float64 ? new Float64Array(cols) : new Float32Array(cols)
    // No fine 16-bit-key histogram for doubles: always a second, exact histogram pass.
    if (float64) this.lowBits = 1
    this.heat = heatmapGeometry(rows, cols, options.heatmapSize)
    this.cellSum = new Float64Array(this.heat.rows * this.heat.cols)
    this.cellBad = new Float64Array(this.heat.rows * this.heat.cols)
    this.top = new TopKHeap(options.topK)
  }

  addRows(values: Float32Array | Float64Array, rowStart: number): void {
    if ((values instanceof Float64Array) !== this.float64) throw new TypeError(`stats accumulator expects ${this.float64 ? 'Float64Array' : 'Float32Array'} rows`)
    const { cols, rows, float64 } = this
    const n = checkRowChunk(values, rowStart, this.nextRow, rows, cols)
    if (!float64) this.chunkMoments(values, 1)
    // Float32 bit patterns feed the fine histogram; float64 mode has none (a dummy view).
    const bits = float64 ? new Uint32Array(0) : new Uint32Array(values.buffer, values.byteOffset, values.length)
    const { colAbsmax, cellSum, cellBad, fine, top } = this
    const colCell = this.heat.colCell
    const hr = this.heat.rows
    const hc = this.heat.cols
    let { min, max, nan, inf, zeros, lowBits } = this
    for (let i = 0; i < n; i++) {
      const r = rowStart + i
      const cellBase = bandOf(r, hr, rows) * hc
      const off = i * cols
      let rowMax = 0
      for (let c = 0; c < cols; c++) {
        const x = values[off + c]!
        const a = Math.abs(x)
        if (!(a < Infinity)) {
          if (x !== x) nan++
          else inf++
          cellBad[cellBase + colCell[c]!]!++
          continue
        }
        if (x < min) min = x
        if (x > max) max = x
        if (a > rowMax) rowMax = a
        if (a > colAbsmax[c]!) colAbsmax[c] = a
        cellSum[cellBase + colCell[c]!]! += a
        if (x === 0) zeros++
        if (!float64) {
          const b = bits[off + c]!
          lowBits |= b & FINE_LOW_MASK
          fine[b >>> FINE_SHIFT]!++
        }
        if (a > top.threshold) top.offer(x, r * cols + c)
      }
      this.rowAbsmax[r] = rowMax
    }
    this.min = min
    this.max = max
    this.nan = nan
    this.inf = inf
    this.zeros = zeros
    this.lowBits = lowBits
    this.nextRow = rowStart + n
  }

  /** Two-pass central moments of the chunk's finite values (divided by `scale`), merged into the running ones. */
  private chunkMoments(values: Float32Array | Float64Array, scale: number): void {
    let sum = 0
    let n = 0
    for (let i = 0; i < values.length; i++) {
      const x = values[i]! / scale
      if (x - x === 0) {
        sum += x
        n++
      }
    }
    if (n === 0) return
    const mean = sum / n
    let m2 = 0
    let m3 = 0
    let m4 = 0
    for (let i = 0; i < values.length; i++) {
      const x = values[i]! / scale
      if (x - x === 0) {
        const d = x - mean
        const d2 = d * d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
      }
    }
    mergeMoments(this.moments, n, mean, m2, m3, m4)
  }

  needsHistogramPass(): boolean {
    return this.lowBits !== 0
  }

  addHistogramRows(values: Float32Array | Float64Array): void {
    if (!this.needsHistogramPass()) throw new Error('addHistogramRows: this tensor needs no histogram pass')
    if (this.nextRow !== this.rows) throw new Error('addHistogramRows: pass 1 is not complete')
    const { bins } = this.options
    const hist = (this.histogram ??= new Float64Array(bins))
    // float64 mode: dividing by a power of two near max |x| is exact and keeps max − min
    // (up to 2 × 1.8e308) finite; float32 values never need it (s = 1).
    const s = this.float64 ? this.scaleFor() : 1
    if (this.float64) {
      this.momentScale = s
      this.chunkMoments(values, s)
    }
    const lo = this.min / s
    const scale = histogramScale(lo, this.max / s, bins)
    const last = bins - 1
    for (let i = 0; i < values.length; i++) {
      const x = values[i]! / s
      if (x - x !== 0) continue
      const b = Math.floor((x - lo) * scale)
      hist[b < 0 ? 0 : b > last ? last : b]!++
    }
    this.histRows += values.length / this.cols
  }

  /** 2^floor(log2(max |x|)) (1 when there are no finite values or all are 0). */
  private scaleFor(): number {
    const absmax = Math.max(Math.abs(this.min), Math.abs(this.max))
    return absmax > 0 && absmax < Infinity ? 2 ** Math.floor(Math.log2(absmax)) : 1
  }

  finish(tensor: string): TensorStats {
    return unpackTensorStats(this.finishPacked(tensor))
  }

  finishPacked(tensor: string): PackedTensorStats {
    if (this.nextRow !== this.rows) throw new Error(`stats of '${tensor}': only ${this.nextRow} of ${this.rows} rows were added`)
    const { bins } = this.options
    let histogram: Float64Array
    if (this.needsHistogramPass()) {
      if (this.histRows !== this.rows) throw new Error(`stats of '${tensor}': histogram pass saw ${this.histRows} of ${this.rows} rows`)
      histogram = this.histogram!.slice()
    } else {
      histogram = rebinFine(this.fine, this.min, histogramScale(this.min, this.max, bins), bins)
    }
    return finalizeStats(tensor, {
      rows: this.rows,
      cols: this.cols,
      options: this.options,
      min: this.min,
      max: this.max,
      nan: this.nan,
      inf: this.inf,
      zeros: this.zeros,
      moments: this.moments,
      histogram,
      rowAbsmax: this.rowAbsmax.slice(),
      colAbsmax: this.colAbsmax.slice(),
      momentScale: this.momentScale,
      top: this.top.entries(),
      heatmap: this.heat,
      cellSum: this.cellSum,
      cellBad: this.cellBad,
    })
  }

  dispose(): void {}
}

/** Exact histogram from fine bins whose members all equal the bin's lower edge. */
function rebinFine(fine: Uint32Array, lo: number, scale: number, bins: number): Float64Array {
  const out = new Float64Array(bins)
  const asFloat = new Float32Array(1)
  const asBits = new Uint32Array(asFloat.buffer)
  const last = bins - 1
  for (let k = 0; k < fine.length; k++) {
    const cnt = fine[k]!
    if (cnt === 0) continue
    asBits[0] = k << FINE_SHIFT
    const b = Math.floor((asFloat[0]! - lo) * scale)
    out[b < 0 ? 0 : b > last ? last : b]! += cnt
  }
  return out
}

/**
 * Bounded min-heap of the k largest |x|; the root is the worst kept entry (smallest |x|,
 * then largest index). Callers offer only when |x| > threshold.
 */
class TopKHeap {
  private readonly values: number[] = []
  private readonly indices: number[] = []
  threshold: number

  constructor(private readonly k: number) {
    this.threshold = k > 0 ? -1 : Infinity
  }

  private worse(i: number, j: number): boolean {
    const ai = Math.abs(this.values[i]!)
    const aj = Math.abs(this.values[j]!)
    return ai < aj || (ai === aj && this.indices[i]! > this.indices[j]!)
  }

  private swap(i: number, j: number): void {
    const { values: v, indices: x } = this
    ;[v[i], v[j]] = [v[j]!, v[i]!]
    ;[x[i], x[j]] = [x[j]!, x[i]!]
  }

  offer(value: number, index: number): void {
    const size = this.values.length
    if (size < this.k) {
      this.values.push(value)
      this.indices.push(index)
      let i = size
      while (i > 0) {
        const parent = (i - 1) >> 1
        if (!this.worse(i, parent)) break
        this.swap(i, parent)
        i = parent
      }
      if (this.values.length === this.k) this.threshold = Math.abs(this.values[0]!)
      return
    }
    // Elements arrive in increasing index order, so a tie in |x| never beats the root.
    this.values[0] = value
    this.indices[0] = index
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      if (l >= size) break
      const c = l + 1 < size && this.worse(l + 1, l) ? l + 1 : l
      if (!this.worse(c, i)) break
      this.swap(c, i)
      i = c
    }
    this.threshold = Math.abs(this.values[0]!)
  }

  entries(): { value: number; index: number }[] {
    return this.values.map((value, i) => ({ value, index: this.indices[i]! }))
  }
}
