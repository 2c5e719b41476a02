/**
 * The input Gram matrix G = Σ xᵀx of a layer's calibration activations, as GPTQ and AWQ use it:
 * checked once, and the exact output error it gives without keeping any activation:
 * Σ_tokens ‖(Ŵ − W)·x‖² = tr(E·G·Eᵀ) = Σ_rows e·G·eᵀ.
 */
import { type LayerCalibration, QuantParamError } from './contract'

/** The gram of `calibration`, or a clear error naming what is missing or malformed. */
export function requireGram(calibration: LayerCalibration | undefined, cols: number, method: string): { gram: Float64Array; count: number } {
  if (!calibration) throw new QuantParamError(null, `${method} needs calibration activations (the input Gram matrix XᵀX); none were given`)
  const { gram, count } = calibration
  if (!gram) throw new QuantParamError(null, `${method} needs the input Gram matrix XᵀX (calibration.gram); the calibration has only per-channel statistics — capture with gram enabled`)
  if (gram.length !== cols * cols) throw new QuantParamError(null, `${method}: calibration.gram has ${gram.length} entries, expected ${cols}×${cols} for a weight with ${cols} input columns`)
  if (!(Number.isFinite(count) && count > 0)) throw new QuantParamError(null, `${method}: calibration.count must be a positive token count, got ${count}`)
  for (let i = 0; i < gram.length; i++) {
    if (!Number.isFinite(gram[i]!)) throw new QuantParamError(null, `${method}: calibration.gram is not finite at (${Math.floor(i / cols)}, ${i % cols})`)
  }
  return { gram, count }
}

/**
 * e·G_SS·eᵀ over the columns S = [c0, c1) of one error row (e indexed by absolute column, from
 * `off`): the output error of that row restricted to S. G symmetric, so the upper triangle twice.
 */
export function quadraticForm(e: Float64Array, off: number, gram: Float64Array, cols: number, c0: number, c1: number): number {
  let total = 0
  for (let i = c0; i < c1; i++) {
    const ei = e[off + i]!
    if (ei === 0) continue
    const gi = i * cols
    let t = 0.5 * gram[gi + i]! * ei
    for (let j = i + 1; j < c1; j++) t += gram[gi + j]! * e[off + j]!
    total += ei * t
  }
  return 2 * total
}

/**
 * e·G·eᵀ of each of `rows` error rows of E (rows × cols) over all columns, into out[r]: AWQ's
 * scale search, where it is the hot loop. The inner sum runs in two lanes (j − i − 1 even,
 * odd) added after the loop, the order of the WASM SIMD kernel (kernels/assembly/quant.ts
 * quadraticRows), so the two give the same bits; it differs from quadraticForm only in
 * rounding.
 */
export function rowsQuadraticForm(E: Float64Array, rows: number, cols: number, gram: Float64Array, out: Float64Array): void {
  for (let r = 0; r < rows; r++) {
    const off = r * cols
    let total = 0
    for (let i = 0; i < cols; i++) {
      const ei = E[off + i]!
      if (ei === 0) continue
      const gi = i * cols
      let a0 = 0
      let a1 = 0
      let j = i + 1
      for (; j + 1 < cols; j += 2) {
        a0 += gram[gi + j]! * E[off + j]!
        a1 += gram[gi + j + 1]! * E[off + j + 1]!
      }
      if (j < cols) a0 += gram[gi + j]! * E[off + j]!
      const t = 0.5 * gram[gi + i]! * ei + (a0 + a1)
      total += ei * t
    }
    out[r] = 2 * total
  }
}
