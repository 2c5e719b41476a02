/**
 * KLLM's Orizuru outlier detector in software (arXiv 2507.23035, shared/papers.md §2): for every
 * token vector (one row of a [tokens, cols] activation matrix) the k largest and the k smallest
 * entries, values and column indices. Orizuru is a hardware unit; here it is two bounded heaps
 * per row, O(cols·log k) in the worst case and close to O(cols) on activations, where almost
 * every entry fails the single comparison against the root of each heap.
 *
 * Order and ties. Entries are ranked by (value, column) ascending — the order of a *stable*
 * ascending sort — so the k smallest are the first k of that sort and the k largest its last k.
 * Among equal values the k smallest therefore prefer lower columns and the k largest prefer
 * higher ones; with 2k ≤ cols the two sets are disjoint even when every value is equal (ranking
 * ties the same way on both sides would take the same columns twice). −0 and +0 are equal
 * values; ±Infinity are ordinary values.
 *
 * NaN is refused: a NaN has no rank, and an activation vector holding one is a bug upstream
 * (overflowed fp16, a bad capture) that a quantizer must not quietly code. The error names the
 * tensor (when given), the row and the column.
 */

export interface TopKOutliers {
  rows: number
  k: number
  /** rows × k, each row's largest first (descending in the (value, column) order). */
  maxValues: Float32Array
  maxCols: Int32Array
  /** rows × k, each row's smallest first (ascending). */
  minValues: Float32Array
  minCols: Int32Array
}

/** A NaN (or another value the detector cannot rank) in an activation row. */
export class ActivationValueError extends Error {
  constructor(
    readonly tensor: string | null,
    readonly row: number,
    readonly col: number,
    problem: string,
  ) {
    super(`${tensor ? `${tensor}: ` : ''}row ${row}, column ${col}: ${problem}`)
    this.name = 'ActivationValueError'
  }
}

export function checkTopKArgs(x: ArrayLike<number>, rows: number, cols: number, k: number): void {
  if (!Number.isInteger(rows) || rows < 0) throw new RangeError(`top-k outliers: rows must be a non-negative integer, got ${rows}`)
  if (!Number.isInteger(cols) || cols < 1) throw new RangeError(`top-k outliers: cols must be a positive integer, got ${cols}`)
  if (x.length !== rows * cols) throw new RangeError(`top-k outliers: ${x.length} values do not make [${rows}, ${cols}]`)
  if (!Number.isInteger(k) || k < 0 || 2 * k > cols) {
    throw new RangeError(`top-k outliers: k must be an integer with 0 ≤ 2k ≤ cols (${cols}) so the largest and smallest sets do not overlap, got ${k}`)
  }
}

export function allocTopK(rows: number, k: number): TopKOutliers {
  return {
    rows,
    k,
    maxValues: new Float32Array(rows * k),
    maxCols: new Int32Array(rows * k),
    minValues: new Float32Array(rows * k),
    minCols: new Int32Array(rows * k),
  }
}

/**
 * The heaps hold (value, column) pairs in two parallel arrays. `sign` = +1 makes a heap whose
 * root is the *smallest* pair (the k largest are kept: a newcomer has to beat the root),
 * −1 one whose root is the largest (the k smallest are kept).
 */
function below(vs: Float64Array, cs: Int32Array, a: number, b: number, sign: number): boolean {
  // Is slot a "nearer the root" than slot b? For sign +1: (v_a, c_a) < (v_b, c_b).
  const va = vs[a]!
  const vb = vs[b]!
  if (va !== vb) return sign > 0 ? va < vb : va > vb
  return sign > 0 ? cs[a]! < cs[b]! : cs[a]! > cs[b]!
}

function siftDown(vs: Float64Array, cs: Int32Array, n: number, i: number, sign: number): void {
  for (;;) {
    const l = 2 * i + 1
    if (l >= n) return
    const r = l + 1
    const m = r < n && below(vs, cs, r, l, sign) ? r : l
    if (!below(vs, cs, m, i, sign)) return
    const tv = vs[i]!
    vs[i] = vs[m]!
    vs[m] = tv
    const tc = cs[i]!
    cs[i] = cs[m]!
    cs[m] = tc
    i = m
  }
}

function siftUp(vs: Float64Array, cs: Int32Array, i: number, sign: number): void {
  while (i > 0) {
    const p = (i - 1) >> 1
    if (!below(vs, cs, i, p, sign)) return
    const tv = vs[i]!
    vs[i] = vs[p]!
    vs[p] = tv
    const tc = cs[i]!
    cs[i] = cs[p]!
    cs[p] = tc
    i = p
  }
}

/** Pops the heap into out[off + k − 1 … off]: the root (the k-th best) goes last, the best first. */
function drain(vs: Float64Array, cs: Int32Array, k: number, sign: number, outV: Float32Array, outC: Int32Array, off: number): void {
  for (let n = k; n > 0; n--) {
    outV[off + n - 1] = vs[0]!
    outC[off + n - 1] = cs[0]!
    vs[0] = vs[n - 1]!
    cs[0] = cs[n - 1]!
    siftDown(vs, cs, n - 1, 0, sign)
  }
}

/**
 * The k largest and k smallest entries of every row of x ([rows, cols], row-major), sorted
 * (largest first / smallest first). `tensor` names the input in errors. Plain TypeScript; the
 * WASM SIMD kernel (orizuru-wasm.ts) returns the same arrays.
 */
export function topKOutliers(x: Float32Array, rows: number, cols: number, k: number, tensor: string | null = null, out?: TopKOutliers): TopKOutliers {
  checkTopKArgs(x, rows, cols, k)
  const res = out ?? allocTopK(rows, k)
  if (res.rows !== rows || res.k !== k) throw new RangeError(`top-k outliers: output holds [${res.rows}, ${res.k}], need [${rows}, ${k}]`)
  const hv = new Float64Array(Math.max(1, k))
  const hc = new Int32Array(Math.max(1, k))
  const lv = new Float64Array(Math.max(1, k))
  const lc = new Int32Array(Math.max(1, k))
  for (let r = 0; r < rows; r++) {
    const base = r * cols
    if (k === 0) {
      for (let j = 0; j < cols; j++) if (x[base + j] !== x[base + j]) throw new ActivationValueError(tensor, r, j, 'NaN in the activations (the top-k outlier detector cannot rank it)')
      continue
    }
    // The first k columns fill both heaps.
    for (let j = 0; j < k; j++) {
      const v = x[base + j]!
      if (v !== v) throw new ActivationValueError(tensor, r, j, 'NaN in the activations (the top-k outlier detector cannot rank it)')
      hv[j] = v
      hc[j] = j
      siftUp(hv, hc, j, 1)
      lv[j] = v
      lc[j] = j
      siftUp(lv, lc, j, -1)
    }
    let hiRoot = hv[0]!
    let loRoot = lv[0]!
    for (let j = k; j < cols; j++) {
      const v = x[base + j]!
      // A later column ranks above an equal value already held, so ≥ enters the max heap and
      // only a strictly smaller value enters the min heap. Both tests run: while j < 2k the
      // heaps overlap and one value can belong to both. NaN fails both comparisons.
      if (v >= hiRoot) {
        hv[0] = v
        hc[0] = j
        siftDown(hv, hc, k, 0, 1)
        hiRoot = hv[0]!
      } else if (v !== v) throw new ActivationValueError(tensor, r, j, 'NaN in the activations (the top-k outlier detector cannot rank it)')
      if (v < loRoot) {
        lv[0] = v
        lc[0] = j
        siftDown(lv, lc, k, 0, -1)
        loRoot = lv[0]!
      }
    }
    drain(hv, hc, k, 1, res.maxValues, res.maxCols, r * k)
    drain(lv, lc, k, -1, res.minValues, res.minCols, r * k)
  }
  return res
}

/** Sets mask[j] = 1 for the 2k outlier columns of `row` (0 elsewhere). */
export function markOutliers(res: TopKOutliers, row: number, mask: Uint8Array): Uint8Array {
  mask.fill(0)
  for (let t = row * res.k; t < (row + 1) * res.k; t++) {
    mask[res.maxCols[t]!] = 1
    mask[res.minCols[t]!] = 1
  }
  return mask
}
