/**
 * The uniform baseline of KLLM's activation experiments: per-token asymmetric b-bit INT
 * fake-quantization, optionally with Orizuru's top-k outliers per side kept in full precision.
 *
 * Per token (row) over its non-outlier values: m = min, M = max, s = (M − m)/(2^b − 1),
 * q = clamp(⌊(x − m)/s + ½⌋, 0, 2^b − 1), x̂ = q·s + m — the asymmetric grid of ../rtn.ts,
 * but dynamic: s and m are computed per token at run time in float64 and never stored, so they
 * are not rounded to fp16. The output is rounded to float32 once. A token whose inliers are all
 * equal (s = 0) comes back as m. The outliers are excluded from m and M and pass through
 * unchanged (the dense path would carry them in fp16; float32 here is the "full precision" of
 * the fake-quant graph).
 */
import type { IntActParams } from './spec'
import { ActivationValueError, markOutliers, type TopKOutliers } from './orizuru'
import { detectTopK, type OrizuruKernel } from './orizuru-wasm'

export interface IntActResult {
  /** Fake-quantized activations, [rows, cols]. */
  values: Float32Array
  /** The detector's output (k = params.outliers). */
  outliers: TopKOutliers
}

/** Throws when an inlier is ±Infinity: no finite grid can hold it. */
export function nonFiniteInlier(tensor: string | null, row: number, col: number, value: number): ActivationValueError {
  return new ActivationValueError(tensor, row, col, `${value} among the non-outlier values (no finite grid holds it: raise outliers or fix the input)`)
}

export function fakeQuantIntPerToken(x: Float32Array, rows: number, cols: number, params: IntActParams, tensor: string | null = null, kernel?: OrizuruKernel): IntActResult {
  const k = params.outliers
  const outliers = detectTopK(x, rows, cols, k, tensor, kernel)
  if (2 * k >= cols) throw new RangeError(`${tensor ? `${tensor}: ` : ''}int activations: ${2 * k} outliers per token leave no value of the ${cols} to quantize`)
  const qmax = 2 ** params.bits - 1
  const values = new Float32Array(rows * cols)
  const mask = new Uint8Array(cols)
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(r * cols, (r + 1) * cols)
    const out = values.subarray(r * cols, (r + 1) * cols)
    markOutliers(outliers, r, mask)
    let lo = Infinity
    let hi = -Infinity
    for (let j = 0; j < cols; j++) {
      if (mask[j]) continue
      const v = row[j]!
      if (!Number.isFinite(v)) throw nonFiniteInlier(tensor, r, j, v)
      if (v < lo) lo = v
      if (v > hi) hi = v
    }
    const s = (hi - lo) / qmax
    for (let j = 0; j < cols; j++) {
      if (mask[j]) out[j] = row[j]!
      else if (s === 0) out[j] = lo
      else {
        const q = Math.min(qmax, Math.max(0, Math.floor((row[j]! - lo) / s + 0.5)))
        out[j] = q * s + lo
      }
    }
  }
  return { values, outliers }
}
