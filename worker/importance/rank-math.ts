/**
 * The small exact pieces of layer importance, kept apart from the graph so a test can hold
 * them against a brute force: Jaccard similarity of top-k id sets, and Spearman's rank
 * correlation between two importance vectors.
 */

/**
 * Σ over rows of |A ∩ B| / |A ∪ B| for row-major [rows, k] id sets (each row holds k distinct
 * ids, as TopK returns). Returned as a sum so windows accumulate in float64 before the mean.
 */
export function jaccardSum(a: ArrayLike<bigint | number>, b: ArrayLike<bigint | number>, rows: number, k: number): number {
  if (a.length !== rows * k || b.length !== rows * k) throw new RangeError(`jaccardSum: expected ${rows}×${k} ids, got ${a.length} and ${b.length}`)
  let sum = 0
  for (let r = 0; r < rows; r++) {
    let inter = 0
    const o = r * k
    // k is small (default 10): k² comparisons beat building a set per row.
    for (let i = 0; i < k; i++) {
      const x = a[o + i]
      for (let j = 0; j < k; j++) {
        if (b[o + j] === x) {
          inter++
          break
        }
      }
    }
    sum += inter / (2 * k - inter)
  }
  return sum
}

/** Ranks 1 … n, ties sharing the mean of the ranks they span (the standard for Spearman's ρ). */
export function averageRanks(values: readonly number[]): number[] {
  const order = values.map((v, i) => ({ v, i })).sort((p, q) => p.v - q.v)
  const ranks = new Array<number>(values.length)
  for (let s = 0; s < order.length; ) {
    let e = s
    while (e + 1 < order.length && order[e + 1]!.v === order[s]!.v) e++
    const rank = (s + e) / 2 + 1
    for (let t = s; t <= e; t++) ranks[order[t]!.i] = rank
    s = e + 1
  }
  return ranks
}

/**
 * Spearman's ρ: Pearson's correlation of the average ranks (so ties are handled exactly, not
 * by the 1 − 6Σd²/(n(n²−1)) shortcut, which holds only without ties). null when either vector
 * is constant (ρ undefined) or shorter than 2.
 */
export function spearman(a: readonly number[], b: readonly number[]): number | null {
  if (a.length !== b.length) throw new RangeError(`spearman: vectors of lengths ${a.length} and ${b.length}`)
  const n = a.length
  if (n < 2) return null
  const ra = averageRanks(a)
  const rb = averageRanks(b)
  const mean = (n + 1) / 2
  let sab = 0
  let saa = 0
  let sbb = 0
  for (let i = 0; i < n; i++) {
    const da = ra[i]! - mean
    const db = rb[i]! - mean
    sab += da * db
    saa += da * da
    sbb += db * db
  }
  if (saa === 0 || sbb === 0) return null
  return sab / Math.sqrt(saa * sbb)
}
