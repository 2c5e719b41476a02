/**
 * Results of the activation and KV views (actkv-views.ts), as the API returns them. No imports:
 * contract.ts re-exports these to the UI, whose typecheck must not reach Node modules.
 */

export type ActNorm = 'absmax-non-outlier' | 'none'

/** A histogram of `counts.length` equal bins over [lo, hi]. */
export interface Histogram {
  lo: number
  hi: number
  counts: number[]
}

/** One decoder linear input of the layer, as the activation view draws it. */
export interface ActivationInputView {
  /** Capture point id: 'L3.attn_in'. */
  id: string
  site: string
  /** The linear layers this activation feeds. */
  linears: string[]
  channels: number
  tokens: number
  /**
   * k-means units: each token's values divided by the absmax of its non-outliers (norm
   * 'absmax-non-outlier'; raw values for 'none'). Inliers and outliers in separate counts over
   * the same bins; inliers + outliers sum to tokens × channels.
   */
  kmeans: { inliers: Histogram; outliers: Histogram; centroids: number[] }
  /** INT units: (x − min)/(max − min) over each token's non-outliers, in [0, 1]; the grid is q/(2^b − 1). */
  int: { inliers: Histogram; levels: number[] }
  /** Fraction of the values held as top-k outliers, and their share of Σx². */
  outlierShare: { values: number; energy: number }
  /** Channels by max |x| over the tokens, largest first. */
  topChannels: { channel: number; maxAbs: number; meanAbs: number; outlierRate: number }[]
}

export interface ActivationViewResult {
  layer: number
  bits: number
  outliers: number
  norm: ActNorm
  windows: number
  ctx: number
  inputs: ActivationInputView[]
  seconds: number
}

/** One of K or V of a kv head: channel-major [headDim][tokens] before and after smoothing. */
export interface KvHeatmap {
  raw: number[][]
  smoothed: number[][]
  /** Per channel of the head: shift δ and scale s of the smoothing, X̃ = (X − δ)/s. */
  shift: number[]
  scale: number[]
}

export interface KvViewResult {
  layer: number
  kvHead: number
  headDim: number
  numKvHeads: number
  numLayers: number
  tokens: number
  key: KvHeatmap
  value: KvHeatmap
  calibration: { tokens: number; windows: number }
  /** plan/memory-model.ts kvCacheBytes (batch 1, no groups) per bits, per context length. */
  memory: { contexts: number[]; bits: number[]; bytes: number[][] }
  seconds: number
}

