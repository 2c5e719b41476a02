/**
 * KLLM's k-means activation quantization (arXiv 2507.23035, shared/papers.md §2), fake-quant.
 *
 * One codebook of 2^b centroids per layer input, fitted offline: every calibration token is
 * split by the Orizuru detector into its 2k outliers (k largest, k smallest) and the rest; the
 * rest is divided by the token's normaliser and pooled; 1-D k-means (../kmeans-1d.ts, the
 * weights' own Lloyd) fits the pool. At run time each token is split the same way, its inliers
 * are divided by *its own* normaliser, coded to the nearest centroid (a value on a midpoint goes
 * to the lower one) and decoded as C[q]·n; the outliers pass through in full precision.
 *
 * The paper does not spell out the normalisation (open in papers.md), hence the parameter:
 * - 'absmax-non-outlier' (default): n = max |x_j| over the token's non-outliers, so the pool
 *   and every token live in [−1, 1] and one codebook serves tokens of any magnitude. A token
 *   whose inliers are all 0 has n = 0 and decodes to 0.
 * - 'none': n = 1, the codebook is fitted on raw values.
 * Centroids are kept as float32 (the fit runs in float64 on float32-rounded normalised values).
 */
import { kmeans1D, midpoints, nearestLevel, sortPoints } from '../kmeans-1d'
import type { KMeansActParams } from './spec'
import { markOutliers, type TopKOutliers } from './orizuru'
import { detectTopK, type OrizuruKernel } from './orizuru-wasm'
import { nonFiniteInlier } from './int-per-token'

export interface ActivationCodebook {
  params: KMeansActParams
  /** 2^bits centroids, ascending, float32. */
  centroids: Float32Array
  /** Normalised inlier values the codebook was fitted on. */
  samples: number
  iterations: number
}

/** A coded activation matrix: what the index-based compute consumes. */
export interface KMeansActCoded {
  rows: number
  cols: number
  codebook: ActivationCodebook
  /** rows × cols centroid indices; at outlier positions 0 and unused. */
  codes: Uint8Array
  /** Per-token normaliser n (1 for norm 'none'), float32. */
  norms: Float32Array
  outliers: TopKOutliers
}

export interface FitHooks {
  signal?: AbortSignal
  onProgress?(done: number, total: number): void
  /** Which detector runs (same result either way); unset: WASM when it loads. */
  kernel?: OrizuruKernel
}

export function checkOutlierRoom(k: number, cols: number, tensor: string | null): void {
  if (2 * k >= cols) throw new RangeError(`${tensor ? `${tensor}: ` : ''}k-means activations: ${2 * k} outliers per token leave no value of the ${cols} to code`)
}

/** The token's normaliser over its non-outliers (checks that they are finite). */
export function tokenNorm(row: Float32Array, mask: Uint8Array, mode: KMeansActParams['norm'], tensor: string | null, r: number): number {
  let absmax = 0
  for (let j = 0; j < row.length; j++) {
    if (mask[j]) continue
    const v = row[j]!
    if (!Number.isFinite(v)) throw nonFiniteInlier(tensor, r, j, v)
    const a = Math.abs(v)
    if (a > absmax) absmax = a
  }
  return mode === 'none' ? 1 : absmax
}

/**
 * Fits the layer input's codebook on calibration activations [rows, cols] (rows = tokens).
 * Tokens whose inliers are all zero under 'absmax-non-outlier' add nothing to the pool.
 */
export function fitActivationCodebook(calib: Float32Array, rows: number, cols: number, params: KMeansActParams, tensor: string | null = null, hooks?: FitHooks): ActivationCodebook {
  const k = params.outliers
  const outliers = detectTopK(calib, rows, cols, k, tensor, hooks?.kernel)
  checkOutlierRoom(k, cols, tensor)
  const pool = new Float32Array(rows * (cols - 2 * k))
  const mask = new Uint8Array(cols)
  let n = 0
  for (let r = 0; r < rows; r++) {
    if (r % 256 === 0) {
      hooks?.signal?.throwIfAborted()
      hooks?.onProgress?.(r, rows)
    }
    const row = calib.subarray(r * cols, (r + 1) * cols)
    markOutliers(outliers, r, mask)
    const norm = tokenNorm(row, mask, params.norm, tensor, r)
    if (norm === 0) continue
    for (let j = 0; j < cols; j++) if (!mask[j]) pool[n++] = row[j]! / norm
  }
  hooks?.onProgress?.(rows, rows)
  if (n === 0) throw new RangeError(`${tensor ? `${tensor}: ` : ''}k-means activations: no non-zero calibration value to fit a codebook on (${rows} tokens)`)
  const K = 2 ** params.bits
  const { centroids, iterations } = kmeans1D(sortPoints(pool.subarray(0, n), null), K, params.init, params.seed, { maxIter: params.maxIter, tol: params.tol })
  return { params, centroids: Float32Array.from(centroids), samples: n, iterations }
}

/** Codes x [rows, cols] against the codebook: indices, per-token normalisers and outliers. */
export function encodeKMeansActivations(x: Float32Array, rows: number, cols: number, codebook: ActivationCodebook, tensor: string | null = null, kernel?: OrizuruKernel): KMeansActCoded {
  const { params } = codebook
  const k = params.outliers
  const outliers = detectTopK(x, rows, cols, k, tensor, kernel)
  checkOutlierRoom(k, cols, tensor)
  const mids = midpoints(codebook.centroids)
  const codes = new Uint8Array(rows * cols)
  const norms = new Float32Array(rows)
  const mask = new Uint8Array(cols)
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(r * cols, (r + 1) * cols)
    markOutliers(outliers, r, mask)
    const norm = tokenNorm(row, mask, params.norm, tensor, r)
    norms[r] = norm
    if (norm === 0) continue // every inlier is 0: decodes to 0 whatever the code
    for (let j = 0; j < cols; j++) if (!mask[j]) codes[r * cols + j] = nearestLevel(mids, row[j]! / norm)
  }
  return { rows, cols, codebook, codes, norms, outliers }
}

/**
 * x̂ = C[q]·n at inliers (computed in float64, rounded to the output's type), the original value
 * at outliers. A Float64Array output is the exact product, what the index-based compute equals.
 */
export function dequantizeKMeansActivations<T extends Float32Array | Float64Array>(coded: KMeansActCoded, out: T): T {
  const { rows, cols, codes, norms, outliers } = coded
  const c = coded.codebook.centroids
  if (out.length !== rows * cols) throw new RangeError(`dequantize activations: output holds ${out.length} values, need ${rows * cols}`)
  for (let r = 0; r < rows; r++) {
    const n = norms[r]!
    for (let j = r * cols; j < (r + 1) * cols; j++) out[j] = n === 0 ? 0 : c[codes[j]!]! * n
    for (let t = r * outliers.k; t < (r + 1) * outliers.k; t++) {
      out[r * cols + outliers.maxCols[t]!] = outliers.maxValues[t]!
      out[r * cols + outliers.minCols[t]!] = outliers.minValues[t]!
    }
  }
  return out
}

/** Fake-quant in one call: encode then decode to float32. */
export function fakeQuantKMeans(x: Float32Array, rows: number, cols: number, codebook: ActivationCodebook, tensor: string | null = null, kernel?: OrizuruKernel): Float32Array {
  return dequantizeKMeansActivations(encodeKMeansActivations(x, rows, cols, codebook, tensor, kernel), new Float32Array(rows * cols))
}
