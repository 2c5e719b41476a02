/**
 * KLLM-style k-means weight quantization (arXiv 2507.23035, shared/papers.md §2), with
 * SqueezeLLM-style dense-and-sparse outliers.
 *
 * Unweighted 1-D k-means (kmeans-1d.ts) into a codebook of 2^bits fp16 values, one per output
 * row (`per: 'row'`) or one for the whole tensor (`per: 'tensor'`); each weight takes the code
 * of the nearest stored codebook value. Whether KLLM's weight codebooks are per tensor or per
 * channel is open in the paper, hence the parameter (default per row).
 *
 * Outliers: per row the ⌈fraction·cols⌉ largest |w| (ties: lower column first) are kept as
 * (column index, fp16 value) and left out of the clustering. Column indices are uint16 when
 * cols ≤ 65536, else uint32; the count per row is fixed by the shape, so no row pointers are
 * stored. Their dense codes still exist (nearest codebook value, overwritten on dequantisation).
 */
import * as v from 'valibot'
import { packedBytes, type QuantMethod, type QuantizeHooks, type StorageBreakdown } from './contract'
import { F16Array, bitsSchema, checkShape, checkWeight, forEachRow, seedSchema, sortedUnique } from './common'
import { KMEANS_INITS, kmeans1D, midpoints, nearestLevel, rowSeed, sortPoints, type SortedPoints } from './kmeans-1d'
import { packCodes } from './packing'
import { PackedCodesTensor } from './packed-tensor'

const KMEANS_INITS_NO_NF4 = KMEANS_INITS.filter((i) => i !== 'nf4') as Exclude<(typeof KMEANS_INITS)[number], 'nf4'>[]

export const kmeansSchema = v.strictObject({
  bits: bitsSchema(2, 8, 4),
  per: v.optional(v.picklist(['row', 'tensor'], "per must be 'row' or 'tensor'"), 'row'),
  outliers: v.optional(v.pipe(v.number('outliers must be a number'), v.minValue(0, 'outliers must be a fraction in [0, 0.5]'), v.maxValue(0.5, 'outliers must be a fraction in [0, 0.5]')), 0),
  init: v.optional(v.picklist(KMEANS_INITS_NO_NF4, `init must be one of ${KMEANS_INITS_NO_NF4.join(', ')}`), 'kmeans++'),
  seed: seedSchema(),
  maxIter: v.optional(v.pipe(v.number(), v.integer('maxIter must be an integer ≥ 1'), v.minValue(1, 'maxIter must be an integer ≥ 1')), 300),
  tol: v.optional(v.pipe(v.number('tol must be a number'), v.minValue(0, 'tol must be ≥ 0')), 1e-4),
})
export type KMeansParams = v.InferOutput<typeof kmeansSchema>

/** Outliers kept per row: ⌈fraction·cols⌉ (the epsilon keeps 0.005·1000 at 5, not 6). */
export function outliersPerRow(cols: number, fraction: number): number {
  // `+ 0` turns ceil's −0 (for fraction 0) into 0, so byte counts are never −0.
  return Math.min(cols, Math.max(0, Math.ceil(fraction * cols - 1e-9)) + 0)
}

export function outlierIndexBytes(cols: number): number {
  return cols <= 65536 ? 2 : 4
}

export function kmeansStorage(rows: number, cols: number, params: Pick<KMeansParams, 'bits' | 'per' | 'outliers'>): StorageBreakdown {
  checkShape(rows, cols)
  const K = 1 << params.bits
  return {
    codes: packedBytes(rows * cols, params.bits),
    scales: 0,
    zeros: 0,
    tables: (params.per === 'row' ? rows : 1) * K * 2,
    outliers: rows * outliersPerRow(cols, params.outliers) * (outlierIndexBytes(cols) + 2),
  }
}

export class KMeansTensor extends PackedCodesTensor {
  constructor(
    rows: number,
    cols: number,
    readonly params: KMeansParams,
    codes: Uint8Array,
    /** Codebooks, ascending: rows × 2^bits (per row) or 2^bits (per tensor), fp16. */
    readonly codebooks: F16Array,
    /** Outlier columns, rows × outliersPerRow, ascending within a row. */
    readonly outlierCols: Uint16Array | Uint32Array,
    readonly outlierValues: F16Array,
  ) {
    super('kmeans', rows, cols, params.bits, codes, kmeansStorage(rows, cols, params))
  }

  /** The codebook that codes of `row` index. */
  codebook(row: number): Float32Array {
    const K = 1 << this.params.bits
    const r = this.params.per === 'row' ? row : 0
    return this.codebooks.values.subarray(r * K, (r + 1) * K)
  }

  protected decodeRow(row: number, codes: Uint8Array, out: Float32Array): void {
    const book = this.codebook(row)
    for (let j = 0; j < out.length; j++) out[j] = book[codes[j]!]!
    const per = this.outlierCols.length / this.rows
    for (let t = row * per; t < (row + 1) * per; t++) out[this.outlierCols[t]!] = this.outlierValues.values[t]!
  }

  levels(row: number, col = 0): Float32Array {
    this.checkLevelsArgs(row, col)
    return sortedUnique(this.codebook(row))
  }
}

/** Marks the row's `count` largest |w| (ties → lower column) in `mask` and returns their columns ascending. */
function selectOutliers(row: Float32Array, count: number, mask: Uint8Array): number[] {
  mask.fill(0)
  if (count === 0) return []
  const abs = Float32Array.from(row, Math.abs).sort()
  const threshold = abs[row.length - count]!
  let taken = 0
  for (let j = 0; j < row.length; j++) if (Math.abs(row[j]!) > threshold) ((mask[j] = 1), taken++)
  for (let j = 0; j < row.length && taken < count; j++) if (!mask[j] && Math.abs(row[j]!) === threshold) ((mask[j] = 1), taken++)
  const cols: number[] = []
  for (let j = 0; j < row.length; j++) if (mask[j]) cols.push(j)
  return cols
}

function inliers(row: Float32Array, mask: Uint8Array, out: Float32Array): Float32Array {
  let n = 0
  for (let j = 0; j < row.length; j++) if (!mask[j]) out[n++] = row[j]!
  return out.subarray(0, n)
}

export function quantizeKMeans(weight: Float32Array, rows: number, cols: number, params: KMeansParams, hooks?: QuantizeHooks): KMeansTensor {
  checkWeight(weight, rows, cols)
  const K = 1 << params.bits
  const per = outliersPerRow(cols, params.outliers)
  const codebooks = new F16Array((params.per === 'row' ? rows : 1) * K)
  const outlierCols = outlierIndexBytes(cols) === 2 ? new Uint16Array(rows * per) : new Uint32Array(rows * per)
  const outlierValues = new F16Array(rows * per)
  const codes = new Uint8Array(rows * cols)
  const mask = new Uint8Array(cols)
  const opts = { maxIter: params.maxIter, tol: params.tol }
  const cluster = (p: SortedPoints, book: number) => {
    const { centroids } = kmeans1D(p, K, params.init, rowSeed(params.seed, book), opts)
    for (let q = 0; q < K; q++) codebooks.set(book * K + q, centroids[q]!, () => `codebook entry ${q}${params.per === 'row' ? ` of row ${book}` : ''}`)
  }
  const encodeRow = (r: number, book: number) => {
    const mids = midpoints(codebooks.values.subarray(book * K, (book + 1) * K))
    for (let j = r * cols; j < (r + 1) * cols; j++) codes[j] = nearestLevel(mids, weight[j]!)
  }
  const keepOutliers = (r: number, row: Float32Array) => {
    selectOutliers(row, per, mask).forEach((c, t) => {
      outlierCols[r * per + t] = c
      outlierValues.set(r * per + t, row[c]!, () => `outlier [${r}, ${c}]`)
    })
  }

  if (params.per === 'row') {
    const buf = new Float32Array(cols)
    forEachRow(rows, hooks, (r) => {
      const row = weight.subarray(r * cols, (r + 1) * cols)
      keepOutliers(r, row)
      cluster(sortPoints(inliers(row, mask, buf), null), r)
      encodeRow(r, r)
    })
  } else {
    // One codebook: gather every row's inliers, cluster once, then code row by row.
    const all = new Float32Array(rows * (cols - per))
    const buf = new Float32Array(cols)
    for (let r = 0; r < rows; r++) {
      hooks?.signal?.throwIfAborted()
      const row = weight.subarray(r * cols, (r + 1) * cols)
      keepOutliers(r, row)
      all.set(inliers(row, mask, buf), r * (cols - per))
    }
    cluster(sortPoints(all, null), 0)
    forEachRow(rows, hooks, (r) => encodeRow(r, 0))
  }
  return new KMeansTensor(rows, cols, params, packCodes(codes, params.bits), codebooks, outlierCols, outlierValues)
}

export const kmeansMethod: QuantMethod<KMeansParams> = {
  id: 'kmeans',
  label: 'k-means codebooks (KLLM) with dense-and-sparse outliers',
  schema: kmeansSchema,
  needs: () => 'none',
  bits: (p) => p.bits,
  storage: kmeansStorage,
  quantize: (weight, rows, cols, params, _calibration, hooks) => quantizeKMeans(weight, rows, cols, params, hooks),
}
