/**
 * Weighted 1-D k-means (Lloyd) on sorted data, shared by anyN and KLLM k-means.
 *
 * In one dimension the clusters of sorted centroids are contiguous runs of the sorted data,
 * split at the midpoints between neighbouring centroids. So after one sort (and merging equal
 * values into one point with the summed weight), an iteration is K binary searches plus K
 * differences of prefix sums of s and s·x: O(K log n), no n×K distance matrix.
 *
 * Conventions (the brute-force reference in the tests uses the same):
 * - A value exactly on a midpoint belongs to the lower centroid.
 * - A cluster left without weight keeps its previous centroid.
 * - Stop after `maxIter` iterations or when the squared centroid shift Σ(c' − c)² is at most
 *   `tol` × the weighted variance of the data (scikit-learn's rule, its variance weighted).
 * - k-means++ is scikit-learn's greedy variant with sample weights: first centre drawn ∝ s,
 *   then 2 + ⌊ln K⌋ candidates drawn ∝ s·D², keeping the one that lowers Σ s·D² most;
 *   random numbers from the project's seeded mulberry32 (worker/inference/sampler.ts).
 */
import { seededRandom } from '../inference/sampler'
import { NF4_VALUES } from './nf4'

export type KMeansInit = 'kmeans++' | 'quantile' | 'uniform' | 'nf4' | 'random'
export const KMEANS_INITS: readonly KMeansInit[] = Object.freeze(['kmeans++', 'quantile', 'uniform', 'nf4', 'random'])

/** Distinct values ascending with their total weight (> 0). */
export interface SortedPoints {
  x: Float64Array
  w: Float64Array
}

export interface LloydOptions {
  maxIter: number
  tol: number
}

export interface KMeansResult {
  /** K centroids, ascending. */
  centroids: Float64Array
  iterations: number
}

const INDEX_BITS = 21
const INDEX_SCALE = 2 ** INDEX_BITS

/** float32 bits → an unsigned key with the same order as the float. */
function orderKey(bits: number): number {
  return bits & 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0
}

/**
 * Sorts values (read as float32) with optional weights and merges equal values. Points of zero
 * weight are dropped: they do not move centroids (they are still coded afterwards).
 */
export function sortPoints(values: Float32Array, weights: ArrayLike<number> | null): SortedPoints {
  const n = values.length
  let xs = new Float64Array(0)
  let ws = new Float64Array(0)
  let m = 0
  const push = (x: number, w: number) => {
    if (!(w > 0)) return
    if (m > 0 && xs[m - 1] === x) ws[m - 1] += w
    else {
      xs[m] = x
      ws[m++] = w
    }
  }
  if (!weights) {
    // Unweighted (possibly a whole tensor): size the output by the distinct count first.
    const sorted = values.slice().sort()
    let distinct = 0
    for (let i = 0; i < n; i++) if (i === 0 || sorted[i] !== sorted[i - 1]) distinct++
    const x = new Float64Array(distinct)
    const w = new Float64Array(distinct)
    let d = -1
    for (let i = 0; i < n; i++) {
      if (i === 0 || sorted[i] !== sorted[i - 1]) x[++d] = sorted[i]!
      w[d]++
    }
    return { x, w }
  }
  xs = new Float64Array(n)
  ws = new Float64Array(n)
  if (n <= INDEX_SCALE) {
    // Sort (order key, index) packed into one float64: a native numeric sort, no comparator.
    const bits = new Uint32Array(values.buffer, values.byteOffset, n)
    const keys = new Float64Array(n)
    for (let i = 0; i < n; i++) keys[i] = orderKey(bits[i]!) * INDEX_SCALE + i
    keys.sort()
    for (let i = 0; i < n; i++) {
      const idx = keys[i]! % INDEX_SCALE
      push(values[idx]!, weights[idx]!)
    }
  } else {
    const order = Uint32Array.from({ length: n }, (_, i) => i).sort((a, b) => values[a]! - values[b]!)
    for (const idx of order) push(values[idx]!, weights[idx]!)
  }
  return { x: xs.slice(0, m), w: ws.slice(0, m) }
}

/** Number of sorted x at or below t (upper bound). */
function countAtOrBelow(x: Float64Array, t: number, lo: number, hi: number): number {
  while (lo < hi) {
    const m = (lo + hi) >>> 1
    if (x[m]! <= t) lo = m + 1
    else hi = m
  }
  return lo
}

function weightedVariance(p: SortedPoints): number {
  let sw = 0
  let sx = 0
  for (let i = 0; i < p.x.length; i++) {
    sw += p.w[i]!
    sx += p.w[i]! * p.x[i]!
  }
  const mean = sx / sw
  let v = 0
  for (let i = 0; i < p.x.length; i++) v += p.w[i]! * (p.x[i]! - mean) ** 2
  return v / sw
}

/** Lloyd iterations from `init` (any order). Needs at least one point. */
export function lloyd1D(p: SortedPoints, init: ArrayLike<number>, opts: LloydOptions): KMeansResult {
  const n = p.x.length
  const K = init.length
  const P0 = new Float64Array(n + 1)
  const P1 = new Float64Array(n + 1)
  for (let i = 0; i < n; i++) {
    P0[i + 1] = P0[i]! + p.w[i]!
    P1[i + 1] = P1[i]! + p.w[i]! * p.x[i]!
  }
  const threshold = opts.tol * weightedVariance(p)
  let c = Float64Array.from(init).sort()
  let next = new Float64Array(K)
  let it = 0
  while (it < opts.maxIter) {
    it++
    let start = 0
    let shift = 0
    for (let k = 0; k < K; k++) {
      const end = k === K - 1 ? n : countAtOrBelow(p.x, (c[k]! + c[k + 1]!) / 2, start, n)
      const mass = P0[end]! - P0[start]!
      next[k] = mass > 0 ? (P1[end]! - P1[start]!) / mass : c[k]!
      shift += (next[k]! - c[k]!) ** 2
      start = end
    }
    next.sort()
    ;[c, next] = [next, c]
    if (shift <= threshold) break
  }
  return { centroids: c, iterations: it }
}

/** Greedy weighted k-means++ (scikit-learn's `_kmeans_plusplus`) over sorted points. */
export function kmeansPlusPlus(p: SortedPoints, K: number, seed: number): Float64Array {
  const n = p.x.length
  const rand = seededRandom(seed)
  const trials = 2 + Math.floor(Math.log(K))
  const centers = new Float64Array(K)
  const cum = new Float64Array(n)
  // Cumulative weights, then the first index whose cumulative value reaches r (searchsorted).
  const cumulate = (weights: (i: number) => number): number => {
    let acc = 0
    for (let i = 0; i < n; i++) cum[i] = acc += weights(i)
    return acc
  }
  const draw = (total: number): number => {
    const r = rand() * total
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const m = (lo + hi) >>> 1
      if (cum[m]! < r) lo = m + 1
      else hi = m
    }
    return lo
  }
  // In 1-D a new centre c only captures the points between the midpoints to its existing
  // neighbours: walking out from c while (x − c)² < D² visits exactly those, so scoring a
  // candidate costs its captured run, not a pass over all points.
  const capture = (idx: number, apply: boolean): number => {
    const c = p.x[idx]!
    let gain = 0
    for (let i = idx; i < n; i++) {
      const d = (p.x[i]! - c) ** 2
      if (d >= d2[i]!) break
      gain += p.w[i]! * (d2[i]! - d)
      if (apply) d2[i] = d
    }
    for (let i = idx - 1; i >= 0; i--) {
      const d = (p.x[i]! - c) ** 2
      if (d >= d2[i]!) break
      gain += p.w[i]! * (d2[i]! - d)
      if (apply) d2[i] = d
    }
    return gain
  }
  const d2 = new Float64Array(n).fill(Infinity)
  const first = draw(cumulate((i) => p.w[i]!))
  centers[0] = p.x[first]!
  for (let i = 0; i < n; i++) d2[i] = (p.x[i]! - centers[0]!) ** 2
  for (let k = 1; k < K; k++) {
    // Σ s·D² is the last cumulative value: recomputed exactly each round, no drift.
    const total = cumulate((i) => p.w[i]! * d2[i]!)
    if (!(total > 0)) {
      centers.fill(centers[k - 1]!, k)
      break
    }
    let best = -1
    let bestGain = -Infinity
    for (let t = 0; t < trials; t++) {
      const idx = draw(total)
      const gain = capture(idx, false)
      if (gain > bestGain) {
        bestGain = gain
        best = idx
      }
    }
    centers[k] = p.x[best]!
    capture(best, true)
  }
  return centers
}

/**
 * The k-means++ seed of one row: every row its own stream, still a pure function of (seed, row).
 * One shared stream for all rows makes every row's draws alike, so one unlucky sequence hits
 * them all: on the default model any4's weight MSE spread 1.26–1.29e-5 over seeds that way,
 * 1.2576–1.2594e-5 with per-row streams.
 */
export function rowSeed(seed: number, row: number): number {
  return (seed + Math.imul(row, 0x9e3779b9)) >>> 0
}

/** Initial centroids by method; K distinct points or fewer only when the data has fewer. */
export function initCentroids(p: SortedPoints, K: number, init: KMeansInit, seed: number): Float64Array {
  const n = p.x.length
  const lo = p.x[0]!
  const hi = p.x[n - 1]!
  switch (init) {
    case 'kmeans++':
      return kmeansPlusPlus(p, K, seed)
    case 'uniform':
      return Float64Array.from({ length: K }, (_, k) => lo + ((hi - lo) * k) / (K - 1))
    case 'nf4': {
      if (K !== 16) throw new RangeError(`init 'nf4' needs 16 clusters (4 bits), got ${K}`)
      return Float64Array.from(NF4_VALUES, (t) => lo + ((t + 1) / 2) * (hi - lo))
    }
    case 'quantile': {
      // Weighted quantiles at the centres of K equal-mass bins.
      let total = 0
      for (let i = 0; i < n; i++) total += p.w[i]!
      const out = new Float64Array(K)
      let acc = 0
      let i = 0
      for (let k = 0; k < K; k++) {
        const target = ((k + 0.5) / K) * total
        while (i < n - 1 && acc + p.w[i]! < target) acc += p.w[i++]!
        out[k] = p.x[i]!
      }
      return out
    }
    case 'random': {
      // K distinct points, uniformly (partial Fisher–Yates over indices).
      const rand = seededRandom(seed)
      const idx = Uint32Array.from({ length: n }, (_, i) => i)
      const out = new Float64Array(K)
      for (let k = 0; k < K; k++) {
        if (k >= n) {
          out[k] = out[k - 1]!
          continue
        }
        const j = k + Math.floor(rand() * (n - k))
        ;[idx[k], idx[j]] = [idx[j]!, idx[k]!]
        out[k] = p.x[idx[k]!]!
      }
      return out
    }
  }
}

/** k-means of sorted points into K centroids (ascending); fewer distinct points than K: those points, padded. */
export function kmeans1D(p: SortedPoints, K: number, init: KMeansInit, seed: number, opts: LloydOptions): KMeansResult {
  if (p.x.length === 0) return { centroids: new Float64Array(K), iterations: 0 }
  if (p.x.length <= K) {
    const c = new Float64Array(K)
    c.set(p.x)
    c.fill(p.x[p.x.length - 1]!, p.x.length)
    return { centroids: c, iterations: 0 }
  }
  return lloyd1D(p, initCentroids(p, K, init, seed), opts)
}

/** Midpoints between ascending levels; `nearestLevel` codes against them (ties → lower). */
export function midpoints(levels: ArrayLike<number>): Float64Array {
  const m = new Float64Array(levels.length - 1)
  for (let i = 0; i < m.length; i++) m[i] = (levels[i]! + levels[i + 1]!) / 2
  return m
}

/** Index of the nearest of the levels whose midpoints are `mids`. */
export function nearestLevel(mids: Float64Array, x: number): number {
  return countAtOrBelowExclusive(mids, x)
}

/** Number of mids strictly below x: a value on a midpoint stays with the lower level. */
function countAtOrBelowExclusive(mids: Float64Array, x: number): number {
  let lo = 0
  let hi = mids.length
  while (lo < hi) {
    const m = (lo + hi) >>> 1
    if (mids[m]! < x) lo = m + 1
    else hi = m
  }
  return lo
}
