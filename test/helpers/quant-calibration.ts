/**
 * Synthetic calibration for the calibrated quantizers' tests: activations X = Z·M from a random
 * mixing matrix M (so XᵀX is far from diagonal), optional per-channel gains (AWQ's salient
 * channels), and the float64 output error tr(E·G·Eᵀ) computed the plain way.
 */
import type { LayerCalibration } from '../../worker/quant/contract'
import { seededRandom } from '../../worker/inference/sampler'

/** The project's one seeded PRNG (mulberry32), re-exported for the quantizer tests. */
export { seededRandom }

export function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand())
}

export function randomWeight(rows: number, cols: number, rand: () => number, std = 0.05): Float32Array {
  return Float32Array.from({ length: rows * cols }, () => std * gaussian(rand))
}

/** Activations [tokens × cols] = Z·M (Z standard normal), then column j times gains[j]. */
export function correlatedActivations(tokens: number, cols: number, rand: () => number, gains?: ArrayLike<number>): Float64Array {
  const M = Float64Array.from({ length: cols * cols }, () => gaussian(rand) / Math.sqrt(cols))
  const X = new Float64Array(tokens * cols)
  const z = new Float64Array(cols)
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < cols; k++) z[k] = gaussian(rand)
    for (let j = 0; j < cols; j++) {
      let s = 0
      for (let k = 0; k < cols; k++) s += z[k]! * M[k * cols + j]!
      X[t * cols + j] = s * (gains ? gains[j]! : 1)
    }
  }
  return X
}

/** The LayerCalibration that activation capture would produce for X. */
export function calibrationOf(X: Float64Array, tokens: number, cols: number): LayerCalibration {
  const gram = new Float64Array(cols * cols)
  const mean = new Float64Array(cols)
  const meanAbs = new Float64Array(cols)
  const meanSq = new Float64Array(cols)
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < cols; i++) {
      const xi = X[t * cols + i]!
      mean[i] += xi / tokens
      meanAbs[i] += Math.abs(xi) / tokens
      meanSq[i] += (xi * xi) / tokens
      for (let j = 0; j < cols; j++) gram[i * cols + j] += xi * X[t * cols + j]!
    }
  }
  return { count: tokens, mean, meanAbs, meanSq, gram }
}

/** tr((Ŵ − W)·G·(Ŵ − W)ᵀ), the summed squared output error over the calibration tokens. */
export function outputError(w: Float32Array, wq: Float32Array, rows: number, cols: number, gram: Float64Array): number {
  let total = 0
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < cols; i++) {
      const ei = wq[r * cols + i]! - w[r * cols + i]!
      for (let j = 0; j < cols; j++) total += ei * gram[i * cols + j]! * (wq[r * cols + j]! - w[r * cols + j]!)
    }
  }
  return total
}

/** Same error measured directly on the activations: Σ_tokens ‖(Ŵ − W)·x‖². */
export function outputErrorOnActivations(w: Float32Array, wq: Float32Array, rows: number, cols: number, X: Float64Array, tokens: number): number {
  let total = 0
  for (let t = 0; t < tokens; t++) {
    for (let r = 0; r < rows; r++) {
      let d = 0
      for (let j = 0; j < cols; j++) d += (wq[r * cols + j]! - w[r * cols + j]!) * X[t * cols + j]!
      total += d * d
    }
  }
  return total
}
