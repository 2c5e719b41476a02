/**
 * Damage of a quantized weight, in float64, streaming over blocks of rows (the dequantised
 * tensor never exists whole):
 * - weight MSE = Σ(w − ŵ)²/(rows·cols), SQNR = 10·log10(Σw² / Σ(w − ŵ)²) dB, max |w − ŵ|;
 * - with calibration XᵀX (G = Σ_tokens xᵀx over `count` tokens): the layer-output error
 *   ‖X·Eᵀ‖² = tr(E·G·Eᵀ) for E = W − Ŵ, reported per token (tr/count) and as an output MSE
 *   per element (tr/(count·rows)), the latter comparable across layers of different width.
 */
import { QuantParamError, type LayerCalibration, type QuantizeHooks, type QuantizedTensor } from './contract'

export interface QuantErrorMetrics {
  mse: number
  /** +Infinity when the error is 0. */
  sqnrDb: number
  maxAbsError: number
  /** tr(E·G·Eᵀ)/count: summed squared output error per token; null without XᵀX. */
  outputErrorPerToken: number | null
  /** tr(E·G·Eᵀ)/(count·rows): mean squared error of one output element; null without XᵀX. */
  outputMse: number | null
}

/** Rows per block: about a million values of the dequantised weight at a time. */
const BLOCK_VALUES = 1 << 20

export function quantErrorMetrics(
  weight: Float32Array,
  quantized: QuantizedTensor,
  calibration?: Pick<LayerCalibration, 'gram' | 'count'>,
  hooks?: QuantizeHooks,
): QuantErrorMetrics {
  const { rows, cols } = quantized
  if (weight.length !== rows * cols) throw new QuantParamError(null, `metrics: weight has ${weight.length} values, the quantized tensor is [${rows}, ${cols}]`)
  const gram = calibration?.gram ?? null
  if (gram) {
    if (gram.length !== cols * cols) throw new QuantParamError(null, `metrics: XᵀX has ${gram.length} values, [${cols} × ${cols}] needed`)
    if (!(calibration!.count > 0)) throw new QuantParamError(null, `metrics: calibration token count must be positive, got ${calibration!.count}`)
  }
  let sumW2 = 0
  let sumE2 = 0
  let maxAbs = 0
  let trace = 0
  const e = new Float64Array(cols)
  const step = Math.max(1, Math.floor(BLOCK_VALUES / cols))
  for (let r0 = 0; r0 < rows; r0 += step) {
    hooks?.signal?.throwIfAborted()
    const r1 = Math.min(rows, r0 + step)
    const deq = quantized.dequantizeRows(r0, r1)
    for (let r = r0; r < r1; r++) {
      const base = r * cols
      const dbase = (r - r0) * cols
      for (let j = 0; j < cols; j++) {
        const w = weight[base + j]!
        const d = w - deq[dbase + j]!
        e[j] = d
        sumW2 += w * w
        sumE2 += d * d
        const a = Math.abs(d)
        if (a > maxAbs) maxAbs = a
      }
      if (gram) {
        // eᵀ G e with G symmetric: diagonal plus twice the strict upper triangle.
        let q = 0
        for (let j = 0; j < cols; j++) {
          const ej = e[j]!
          if (ej === 0) continue
          const gRow = j * cols
          let acc = 0.5 * gram[gRow + j]! * ej
          for (let k = j + 1; k < cols; k++) acc += gram[gRow + k]! * e[k]!
          q += 2 * ej * acc
        }
        trace += q
      }
    }
    hooks?.onProgress?.(r1, rows)
  }
  return {
    mse: sumE2 / (rows * cols),
    sqnrDb: sumE2 === 0 ? Infinity : 10 * Math.log10(sumW2 / sumE2),
    maxAbsError: maxAbs,
    outputErrorPerToken: gram ? trace / calibration!.count : null,
    outputMse: gram ? trace / (calibration!.count * rows) : null,
  }
}
