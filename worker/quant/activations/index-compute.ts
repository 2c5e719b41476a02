/**
 * KLLM's index-based compute (arXiv 2507.23035, shared/papers.md §2) in software, as a
 * reference that can be checked, not as a fast path: a CPU gains nothing from it.
 *
 * With a k-means-coded weight (codes a_ij into a table per row — or per row and group) and a
 * k-means-coded activation token (codes b_j into the layer's codebook C_A, normaliser n, 2k
 * outliers x_j kept aside):
 *
 *   y_i = n · Σ_q C_A[q] · S_iq  +  Σ_{j ∈ outliers} Ŵ_ij · x_j,   S_iq = Σ_{j inlier, b_j = q} Ŵ_ij
 *
 * where Ŵ_ij = C_W[a_ij] (or the weight's own sparse outlier value). The inner sums are additions
 * grouped by activation code; a token then costs 2^ba (+ 2k + 1) multiplies per output instead
 * of cols. SiLU (and any other elementwise function) of a coded vector is evaluated once per
 * centroid, a LUT of 2^ba values per token (per layer with norm 'none'), plus once per outlier.
 *
 * Arithmetic is float64 throughout; it equals dequantise-then-compute (dequantizeKMeansActivations
 * into a Float64Array, then a float64 dot product) up to the order of summation.
 */
import { unpackCodes } from '../packing'
import type { KMeansTensor } from '../kmeans'
import type { AnyNTensor } from '../anyn'
import type { KMeansActCoded } from './kmeans-act'

/** A weight whose every value is a table entry, plus sparse exceptions. */
export interface IndexCodedWeight {
  rows: number
  cols: number
  /** Entries per table (2^bw). */
  K: number
  /** Columns sharing one table within a row (cols when the table is per row). */
  groupCols: number
  /** rows × (cols / groupCols) × K decoded weight values: exactly what dequantisation yields. */
  tables: Float64Array
  /** rows × cols unpacked codes. */
  codes: Uint8Array
  /** Sparse exceptions (weight outliers), CSR: row i's are sparseCols[sparsePtr[i] … sparsePtr[i+1]), ascending. */
  sparsePtr: Int32Array
  sparseCols: Int32Array
  sparseValues: Float64Array
}

/** Multiplies and additions actually performed (the counts op-counts.ts predicts). */
export interface OpCounter {
  mul: number
  add: number
}

function unpackAll(packed: Uint8Array, bits: number, n: number): Uint8Array {
  return unpackCodes(packed, bits, 0, n, new Uint8Array(n))
}

/** A KLLM k-means weight (../kmeans.ts) as tables + codes + its fp16 outliers. */
export function indexWeightFromKMeans(t: KMeansTensor): IndexCodedWeight {
  const K = 1 << t.params.bits
  const tables = new Float64Array(t.rows * K)
  for (let r = 0; r < t.rows; r++) tables.set(t.codebook(r), r * K)
  const per = t.outlierCols.length / t.rows
  const sparsePtr = Int32Array.from({ length: t.rows + 1 }, (_, i) => i * per)
  return {
    rows: t.rows,
    cols: t.cols,
    K,
    groupCols: t.cols,
    tables,
    codes: unpackAll(t.codes, t.codeBits, t.rows * t.cols),
    sparsePtr,
    sparseCols: Int32Array.from(t.outlierCols),
    sparseValues: Float64Array.from(t.outlierValues.values),
  }
}

/** An anyN weight (../anyn.ts): per (row, group) table f32(f32(LUT·α) + m), as its decodeRow computes. */
export function indexWeightFromAnyN(t: AnyNTensor): IndexCodedWeight {
  const K = 1 << t.codeBits
  const g = t.groupCols
  const perRow = t.cols / g
  const tables = new Float64Array(t.rows * perRow * K)
  const f = Math.fround
  for (let r = 0; r < t.rows; r++) {
    const lut = t.table(r)
    for (let k = 0; k < perRow; k++) {
      const a = t.alphas.values[r * perRow + k]!
      const m = t.mins.values[r * perRow + k]!
      for (let q = 0; q < K; q++) tables[(r * perRow + k) * K + q] = f(f(lut[q]! * a) + m)
    }
  }
  return { rows: t.rows, cols: t.cols, K, groupCols: g, tables, codes: unpackAll(t.codes, t.codeBits, t.rows * t.cols), sparsePtr: new Int32Array(t.rows + 1), sparseCols: new Int32Array(0), sparseValues: new Float64Array(0) }
}

/** The dense weight the tables stand for (float64): the reference side of the tests. */
export function dequantizeIndexWeight(w: IndexCodedWeight): Float64Array {
  const out = new Float64Array(w.rows * w.cols)
  const perRow = w.cols / w.groupCols
  for (let i = 0; i < w.rows; i++) {
    for (let j = 0; j < w.cols; j++) out[i * w.cols + j] = w.tables[(i * perRow + Math.floor(j / w.groupCols)) * w.K + w.codes[i * w.cols + j]!]!
    for (let p = w.sparsePtr[i]!; p < w.sparsePtr[i + 1]!; p++) out[i * w.cols + w.sparseCols[p]!] = w.sparseValues[p]!
  }
  return out
}

/**
 * y = Ŵ · x̂ for every token of a coded activation, index-based: out is tokens × rows
 * (row-major). `count` accumulates the multiplies and additions performed.
 */
export function indexMatmul(w: IndexCodedWeight, a: KMeansActCoded, count?: OpCounter): Float64Array {
  if (a.cols !== w.cols) throw new RangeError(`index-based matmul: activation has ${a.cols} columns, weight has ${w.cols}`)
  const { rows, cols, K, groupCols } = w
  const perRow = cols / groupCols
  const C = a.codebook.centroids
  const KA = C.length
  const k = a.outliers.k
  const normalised = a.codebook.params.norm !== 'none'
  const out = new Float64Array(a.rows * rows)
  const S = new Float64Array(KA)
  const isOutlier = new Uint8Array(cols)
  const inl = new Int32Array(cols)
  let mul = 0
  let add = 0
  for (let t = 0; t < a.rows; t++) {
    // The token's inlier columns, ascending.
    isOutlier.fill(0)
    for (let s = t * k; s < (t + 1) * k; s++) {
      isOutlier[a.outliers.maxCols[s]!] = 1
      isOutlier[a.outliers.minCols[s]!] = 1
    }
    let nIn = 0
    for (let j = 0; j < cols; j++) if (!isOutlier[j]) inl[nIn++] = j
    const b = a.codes.subarray(t * cols, (t + 1) * cols)
    const n = a.norms[t]!
    for (let i = 0; i < rows; i++) {
      const codes = w.codes.subarray(i * cols, (i + 1) * cols)
      const tab = i * perRow * K
      S.fill(0)
      let p = w.sparsePtr[i]!
      const pEnd = w.sparsePtr[i + 1]!
      for (let s = 0; s < nIn; s++) {
        const j = inl[s]!
        while (p < pEnd && w.sparseCols[p]! < j) p++
        const wv = p < pEnd && w.sparseCols[p] === j ? w.sparseValues[p]! : w.tables[tab + Math.floor(j / groupCols) * K + codes[j]!]!
        S[b[j]!] += wv
      }
      add += nIn
      let acc = 0
      for (let q = 0; q < KA; q++) acc += C[q]! * S[q]!
      mul += KA
      add += KA - 1
      if (normalised) {
        acc *= n
        mul++
      }
      // Outliers: the sparse side path, one multiply-add each, with Ŵ_ij looked up the same way.
      for (let s = t * k; s < (t + 1) * k; s++) {
        acc += weightAt(w, i, a.outliers.maxCols[s]!) * a.outliers.maxValues[s]!
        acc += weightAt(w, i, a.outliers.minCols[s]!) * a.outliers.minValues[s]!
      }
      mul += 2 * k
      add += 2 * k
      out[t * rows + i] = acc
    }
  }
  if (count) {
    count.mul += mul
    count.add += add
  }
  return out
}

function weightAt(w: IndexCodedWeight, i: number, j: number): number {
  for (let p = w.sparsePtr[i]!; p < w.sparsePtr[i + 1]!; p++) if (w.sparseCols[p] === j) return w.sparseValues[p]!
  return w.tables[(i * (w.cols / w.groupCols) + Math.floor(j / w.groupCols)) * w.K + w.codes[i * w.cols + j]!]!
}

/** SiLU in float64: x·σ(x). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x))
}

/** f(C_A[q]·n) for every centroid q: the per-token LUT (n = 1 for norm 'none': one LUT per layer). */
export function centroidLut(centroids: Float32Array, norm: number, f: (x: number) => number = silu): Float64Array {
  return Float64Array.from(centroids, (c) => f(c * norm))
}

/**
 * f(x̂) of a coded activation through per-centroid LUTs: tokens × cols, float64. `evals` counts
 * the evaluations of f (K per token, or K once with norm 'none', plus 2k outliers per token).
 */
export function lutApply(a: KMeansActCoded, f: (x: number) => number = silu, evals?: { count: number }): Float64Array {
  const { rows, cols, codes, norms, outliers } = a
  const k = outliers.k
  const C = a.codebook.centroids
  const perToken = a.codebook.params.norm !== 'none'
  const out = new Float64Array(rows * cols)
  let lut = perToken ? null : centroidLut(C, 1, f)
  let n = perToken ? 0 : C.length
  // A token whose inliers are all 0 (n = 0) needs f(0) only: evaluated once, shared.
  let atZero: number | null = null
  for (let t = 0; t < rows; t++) {
    const row = out.subarray(t * cols, (t + 1) * cols)
    if (perToken && norms[t] === 0) {
      if (atZero === null) ((atZero = f(0)), n++)
      row.fill(atZero)
    } else {
      if (perToken) ((lut = centroidLut(C, norms[t]!, f)), (n += C.length))
      for (let j = 0; j < cols; j++) row[j] = lut![codes[t * cols + j]!]!
    }
    for (let s = t * k; s < (t + 1) * k; s++) {
      row[outliers.maxCols[s]!] = f(outliers.maxValues[s]!)
      row[outliers.minCols[s]!] = f(outliers.minValues[s]!)
    }
    n += 2 * k
  }
  if (evals) evals.count += n
  return out
}
