/**
 * Per-tensor statistics: the shape shared by the stats kernels, the stats service, the API
 * contract and the views. Plain JSON-serialisable data (arrays, not typed arrays), so it
 * crosses worker, IPC and WebSocket boundaries unchanged and can be cached on disk.
 */
export interface StatsOptions {
  /** Histogram bins over [min, max] of the finite values. Default 256. */
  bins: number
  /** How many largest-magnitude entries to keep. Default 32. */
  topK: number
  /** Downsampled |w| heatmap size (cells per side, at most). Default 128. */
  heatmapSize: number
}

export const DEFAULT_STATS_OPTIONS: Readonly<StatsOptions> = Object.freeze({ bins: 256, topK: 32, heatmapSize: 128 })

export interface TensorStats {
  tensor: string
  /** Matrix view the per-channel arrays refer to: rows = output channels, cols = input channels. */
  rows: number
  cols: number
  count: number
  min: number
  max: number
  mean: number
  std: number
  absmax: number
  /** Excess-free (Pearson) kurtosis: E[(x-μ)^4]/σ^4; a normal distribution gives 3. */
  kurtosis: number
  nan: number
  inf: number
  zeros: number
  histogram: { lo: number; hi: number; counts: number[] }
  /** absmax of each row (output channel), length rows; empty when the tensor has no elements. */
  rowAbsmax: number[]
  /** absmax of each column (input channel), length cols; empty when the tensor has no elements. */
  colAbsmax: number[]
  /** Largest |value| entries, descending, with flat index and (row, col). */
  topK: { index: number; row: number; col: number; value: number }[]
  /** Mean |w| over blocks of the matrix: heatmap.rows × heatmap.cols cells, row-major. */
  heatmap: { rows: number; cols: number; values: number[] }
}

/**
 * How the matrix the statistics describe relates to the tensor as stored. Every linear weight
 * is shown in Hugging Face's [out, in] orientation with HF's row order, whatever the format
 * stored (worker/stats/orientation.ts makes it so).
 */
export interface StatsOrientation {
  /** ONNX MatMul initializers are stored [in, out]; their statistics were transposed. */
  transposed: boolean
  /** GGUF llama q/k rows were stored in llama.cpp's RoPE order and are shown in HF order. */
  rowsUnpermuted: boolean
  /**
   * The heatmap keeps llama.cpp's row order: its row bands straddle attention heads, so it
   * cannot be reordered without the full matrix. Per-row absmax and top-k are in HF order.
   */
  heatmapRowsPermuted: boolean
  /** One line for the UI, or null when the tensor is shown as stored. */
  note: string | null
}

/** TensorStats as the API returns them: in HF orientation, saying what was changed. */
export interface OrientedTensorStats extends TensorStats {
  orientation: StatsOrientation
}
