/**
 * What the tensor inspector draws for one (tensor, method): the levels a chosen weight can
 * take (its group's grid or its row's lookup table) with that group's original and
 * dequantised weights, a histogram of the error w − ŵ, and a downsampled mean |w − ŵ| heatmap.
 *
 * Everything is in HF orientation [out, in] with HF's row order. The quantizer sees the weight
 * as readOrientedWeight gives it (transposes undone); for a GGUF llama q/k weight its rows are
 * still in llama.cpp's RoPE order, so `hfRowOf` maps a stored row to its HF row (identity
 * otherwise). Unlike the streaming statistics, the whole error matrix is at hand here, so the
 * heatmap is binned by HF row and never keeps the stored row order.
 *
 * Geometry and binning follow the statistics (stats/stats-accumulator.ts): heatmap row r in
 * band floor(r·hr/rows), column c in cell floor(c·hc/cols), hr = min(rows, size), hc =
 * min(cols, size), cell = mean |e|; histogram bin floor((e − lo)·bins/(hi − lo)) clamped, over
 * [lo, hi] = [min e, max e].
 */
import { groupColumnsOrZero, type QuantizedTensor } from '../quant/contract'
import { hfRowOfGgufRow } from '../stats/orientation'

export interface PreviewOptions {
  /** HF row (output channel) whose levels and group weights are returned. */
  row: number
  /** Column picking the group within the row. */
  col: number
  /** Error histogram bins. */
  bins: number
  /** Error heatmap cells per side at most. */
  heatmapSize: number
}

export interface TensorPreview {
  levels: { row: number; col: number; group: { index: number; col0: number; col1: number }; values: number[] }
  groupWeights: { original: number[]; dequantized: number[] }
  errorHistogram: { lo: number; hi: number; counts: number[] }
  errorHeatmap: { rows: number; cols: number; values: number[] }
}

/** Stored row ↔ HF row of a weight (identity, or llama.cpp's q/k permutation of head size d). */
export interface RowOrder {
  hfRowOf(stored: number): number
  storedRowOf(hf: number): number
}

export const IDENTITY_ROWS: RowOrder = { hfRowOf: (r) => r, storedRowOf: (r) => r }

/** llama.cpp permutes q/k rows per head: stored h·d + 2i + j holds HF h·d + j·d/2 + i. */
export function ggufQkRows(d: number): RowOrder {
  return {
    hfRowOf: (r) => hfRowOfGgufRow(r, d),
    storedRowOf: (hf) => {
      const h = Math.floor(hf / d)
      const within = hf - h * d
      const j = within >= d / 2 ? 1 : 0
      const i = within - (j * d) / 2
      return h * d + 2 * i + j
    },
  }
}

/** Rows dequantised per block while the error is binned (~1M values). */
const BLOCK_VALUES = 1 << 20

export function tensorPreview(
  weight: Float32Array,
  q: QuantizedTensor,
  params: Record<string, unknown>,
  options: PreviewOptions,
  rows: RowOrder = IDENTITY_ROWS,
  signal?: AbortSignal,
): TensorPreview {
  const R = q.rows
  const C = q.cols
  if (!(options.row >= 0 && options.row < R)) throw new RangeError(`row ${options.row} is outside the weight's ${R} output channels`)
  if (!(options.col >= 0 && options.col < C)) throw new RangeError(`column ${options.col} is outside the weight's ${C} input channels`)

  // Levels and weights of the chosen (row, group).
  const storedRow = rows.storedRowOf(options.row)
  const g = typeof params.group === 'number' ? groupColumnsOrZero(C, params.group) || C : C
  const index = Math.floor(options.col / g)
  const col0 = index * g
  const col1 = col0 + g
  const deqRow = q.dequantizeRows(storedRow, storedRow + 1)
  const original = Array.from(weight.subarray(storedRow * C + col0, storedRow * C + col1))
  const dequantized = Array.from(deqRow.subarray(col0, col1))
  const levels = Array.from(q.levels(storedRow, options.col))

  // Error: the extremes first (for the histogram's range), then bins and heatmap cells.
  const step = Math.max(1, Math.floor(BLOCK_VALUES / C))
  const error = new Float32Array(R * C)
  let lo = Infinity
  let hi = -Infinity
  for (let r0 = 0; r0 < R; r0 += step) {
    signal?.throwIfAborted()
    const r1 = Math.min(R, r0 + step)
    const deq = q.dequantizeRows(r0, r1)
    const base = r0 * C
    for (let i = 0; i < deq.length; i++) {
      const e = weight[base + i]! - deq[i]!
      error[base + i] = e
      if (e < lo) lo = e
      if (e > hi) hi = e
    }
  }
  if (!(lo <= hi)) lo = hi = 0
  const bins = options.bins
  const counts = new Array<number>(bins).fill(0)
  const scale = hi > lo ? bins / (hi - lo) : 0
  const hr = Math.min(R, options.heatmapSize)
  const hc = Math.min(C, options.heatmapSize)
  const colCell = new Int32Array(C)
  for (let c = 0; c < C; c++) colCell[c] = Math.floor((c * hc) / C)
  const sums = new Float64Array(hr * hc)
  const cellCounts = new Float64Array(hr * hc)
  for (let r = 0; r < R; r++) {
    if ((r & 255) === 0) signal?.throwIfAborted()
    const band = Math.floor((rows.hfRowOf(r) * hr) / R) * hc
    const base = r * C
    for (let c = 0; c < C; c++) {
      const e = error[base + c]!
      const b = Math.min(bins - 1, Math.max(0, Math.floor((e - lo) * scale)))
      counts[b] = counts[b]! + 1
      const cell = band + colCell[c]!
      sums[cell] = sums[cell]! + Math.abs(e)
      cellCounts[cell] = cellCounts[cell]! + 1
    }
  }
  const values = Array.from(sums, (s, i) => (cellCounts[i]! > 0 ? s / cellCounts[i]! : 0))
  return {
    levels: { row: options.row, col: options.col, group: { index, col0, col1 }, values: levels },
    groupWeights: { original, dequantized },
    errorHistogram: { lo, hi, counts },
    errorHeatmap: { rows: hr, cols: hc, values },
  }
}
