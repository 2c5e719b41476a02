import { seededRandom } from '../../worker/inference/sampler'

/** Seeded N(0, σ²) float32 values (Box–Muller), with a few heavy outliers if `outlierEvery` > 0. */
export function gaussianWeights(n: number, seed: number, sigma = 0.02, outlierEvery = 0): Float32Array {
  const rand = seededRandom(seed)
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    const u = 1 - rand()
    const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand())
    out[i] = z * sigma * (outlierEvery > 0 && i % outlierEvery === 7 ? 8 : 1)
  }
  return out
}
