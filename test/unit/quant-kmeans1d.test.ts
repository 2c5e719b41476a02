import { describe, it, expect } from 'vitest'
import { initCentroids, kmeans1D, kmeansPlusPlus, lloyd1D, sortPoints } from '../../worker/quant/kmeans-1d'
import { seededRandom } from '../../worker/inference/sampler'
import { gaussianWeights } from '../helpers/quant-random'

/**
 * The sorted prefix-sum k-means against the textbook algorithm: every point against every
 * centroid, float64, same initial centroids and the same stopping rule.
 */
function bruteLloyd(x: Float32Array, w: Float64Array, init: Float64Array, maxIter: number, tol: number) {
  let sw = 0
  let sx = 0
  for (let i = 0; i < x.length; i++) ((sw += w[i]!), (sx += w[i]! * x[i]!))
  let variance = 0
  for (let i = 0; i < x.length; i++) variance += w[i]! * (x[i]! - sx / sw) ** 2
  variance /= sw
  let c = Float64Array.from(init).sort()
  let it = 0
  while (it < maxIter) {
    it++
    const num = new Float64Array(c.length)
    const den = new Float64Array(c.length)
    for (let i = 0; i < x.length; i++) {
      let best = 0
      for (let k = 1; k < c.length; k++) if (Math.abs(x[i]! - c[k]!) < Math.abs(x[i]! - c[best]!)) best = k
      num[best] += w[i]! * x[i]!
      den[best] += w[i]!
    }
    const next = c.map((ck, k) => (den[k]! > 0 ? num[k]! / den[k]! : ck))
    let shift = 0
    for (let k = 0; k < c.length; k++) shift += (next[k]! - c[k]!) ** 2
    c = next.sort()
    if (shift <= tol * variance) break
  }
  return { centroids: c, iterations: it }
}

describe('1-D k-means on sorted data', () => {
  it.each([
    ['unweighted, 16 clusters', 16, false],
    ['weighted, 16 clusters', 16, true],
    ['weighted, 8 clusters', 8, true],
    ['unweighted, 4 clusters', 4, false],
  ] as const)('%s: same centroids and iterations as brute-force Lloyd', (_name, K, weighted) => {
    for (const seed of [1, 2, 3]) {
      const x = gaussianWeights(777, seed, 1, 17)
      const rand = seededRandom(seed + 100)
      const w = Float64Array.from({ length: x.length }, () => (weighted ? rand() * 2 : 1))
      const p = sortPoints(x, weighted ? w : null)
      const init = kmeansPlusPlus(p, K, seed)
      const ours = lloyd1D(p, init, { maxIter: 300, tol: 1e-4 })
      const ref = bruteLloyd(x, w, init, 300, 1e-4)
      expect(ours.iterations).toBe(ref.iterations)
      for (let k = 0; k < K; k++) expect(ours.centroids[k]!).toBeCloseTo(ref.centroids[k]!, 10)
      // …and at a tight tolerance both run much longer and still agree.
      const long = lloyd1D(p, init, { maxIter: 40, tol: 0 })
      const longRef = bruteLloyd(x, w, init, 40, 0)
      for (let k = 0; k < K; k++) expect(long.centroids[k]!).toBeCloseTo(longRef.centroids[k]!, 9)
    }
  })

  it('sortPoints merges equal values (summing weights) and drops zero weights', () => {
    const x = Float32Array.of(3, -1, 3, 2, -1, 0, -0, 5)
    const w = [1, 2, 0.5, 0, 1, 1, 1, 0]
    const p = sortPoints(x, w)
    expect(Array.from(p.x, (v) => v + 0)).toEqual([-1, 0, 3]) // −0 and 0 are one value
    expect(Array.from(p.w)).toEqual([3, 2, 1.5])
    const u = sortPoints(x, null)
    expect(Array.from(u.x, (v) => v + 0)).toEqual([-1, 0, 2, 3, 5])
    expect(Array.from(u.w)).toEqual([2, 2, 1, 2, 1])
  })

  it('k-means++ is deterministic for a seed, picks distinct data points, and the seed matters', () => {
    const p = sortPoints(gaussianWeights(500, 8), null)
    const a = kmeansPlusPlus(p, 16, 42)
    expect(kmeansPlusPlus(p, 16, 42)).toEqual(a)
    expect(kmeansPlusPlus(p, 16, 43)).not.toEqual(a)
    expect(new Set(a).size).toBe(16)
    for (const c of a) expect(p.x.includes(c)).toBe(true)
  })

  it('k-means++ equals scikit-learn\'s greedy algorithm written out with full passes', () => {
    // _kmeans_plusplus: first centre ∝ s, then 2 + ⌊ln K⌋ candidates ∝ s·D², keep the lowest Σ s·D².
    const brute = (x: Float64Array, w: Float64Array, K: number, seed: number) => {
      const rand = seededRandom(seed)
      const pick = (weights: number[]) => {
        const total = weights.reduce((a, b) => a + b, 0)
        const r = rand() * total
        let acc = 0
        for (let i = 0; i < weights.length; i++) if ((acc += weights[i]!) >= r) return i
        return weights.length - 1
      }
      const c = [x[pick(Array.from(w))]!]
      let d2 = Array.from(x, (xi) => (xi - c[0]!) ** 2)
      for (let k = 1; k < K; k++) {
        const probs = d2.map((d, i) => d * w[i]!)
        const total = probs.reduce((a, b) => a + b, 0)
        let best: number[] | null = null
        let bestPot = Infinity
        let bestX = 0
        for (let t = 0; t < 2 + Math.floor(Math.log(K)); t++) {
          let acc = 0
          const r = rand() * total
          let idx = probs.length - 1
          for (let i = 0; i < probs.length; i++) if ((acc += probs[i]!) >= r) ((idx = i), (i = probs.length))
          const nd = d2.map((d, i) => Math.min(d, (x[i]! - x[idx]!) ** 2))
          const pot = nd.reduce((a, d, i) => a + d * w[i]!, 0)
          if (pot < bestPot) ((bestPot = pot), (best = nd), (bestX = x[idx]!))
        }
        c.push(bestX)
        d2 = best!
      }
      return c
    }
    for (const seed of [1, 2, 3, 4]) {
      const rand = seededRandom(seed)
      const p = sortPoints(gaussianWeights(300, seed), Float64Array.from({ length: 300 }, () => rand()))
      expect(Array.from(kmeansPlusPlus(p, 16, seed))).toEqual(brute(p.x, p.w, 16, seed))
    }
  })

  it('k-means++ draws ∝ weight: a point holding almost all weight is the first centre', () => {
    const x = Float32Array.from({ length: 100 }, (_, i) => i)
    const w = new Float64Array(100).fill(1e-9)
    w[37] = 1
    for (let seed = 0; seed < 10; seed++) expect(kmeansPlusPlus(sortPoints(x, w), 4, seed)[0]).toBe(37)
  })

  it('other initialisations: uniform spans the range, quantile splits the mass, nf4 maps the table, random picks points', () => {
    const x = Float32Array.from({ length: 160 }, (_, i) => i % 16)
    const p = sortPoints(x, null)
    expect(Array.from(initCentroids(p, 16, 'uniform', 0))).toEqual(Array.from({ length: 16 }, (_, i) => i))
    expect(Array.from(initCentroids(p, 4, 'quantile', 0))).toEqual([1, 5, 9, 13])
    const nf = initCentroids(p, 16, 'nf4', 0)
    expect([nf[0], nf[7], nf[15]]).toEqual([0, 7.5, 15])
    const r = initCentroids(p, 8, 'random', 5)
    expect(new Set(r).size).toBe(8)
    expect(() => initCentroids(p, 8, 'nf4', 0)).toThrow(/16 clusters/)
  })

  it('fewer distinct values than clusters: each value is its own centroid', () => {
    const p = sortPoints(Float32Array.of(1, 1, 2, 7, 7, 7), null)
    expect(Array.from(kmeans1D(p, 4, 'kmeans++', 0, { maxIter: 300, tol: 1e-4 }).centroids)).toEqual([1, 2, 7, 7])
  })
})
