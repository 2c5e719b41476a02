/**
 * A streaming version of fitActivationCodebook (kmeans-act.ts) for calibration that arrives in
 * batches — one evaluation window at a time, from several worker threads — where holding every
 * activation of every layer input is out of the question (a 0.5B model's 96 layer inputs over
 * 100k tokens would be tens of GB).
 *
 * Each batch is split by the Orizuru detector and normalised exactly as the one-shot fit does;
 * the normalised non-outliers are then counted per fp16 value: 65,536 float64 counters
 * (512 KiB) per layer input, whatever the number of tokens. Fitters of the same params merge by
 * adding counts, so the result does not depend on how the tokens were split into batches or
 * threads. The fit is the same weighted 1-D Lloyd over the distinct fp16 values.
 *
 * What the fp16 rounding costs: a normalised value in [−1, 1] moves by at most 2⁻¹² of its
 * magnitude (2⁻²⁵ absolute near 0), far below a 2^8-entry codebook's spacing; the test checks
 * the centroids against the one-shot fit. With norm 'none' raw values beyond ±65504 cannot be
 * counted and are refused, naming the row and column.
 */
import { f16ToF32, f32ToF16 } from '../../formats/dtypes'
import { kmeans1D, type SortedPoints } from '../kmeans-1d'
import { ActivationValueError, markOutliers } from './orizuru'
import { detectTopK } from './orizuru-wasm'
import { checkOutlierRoom, tokenNorm, type ActivationCodebook, type FitHooks } from './kmeans-act'
import { formatActivationSpec, type KMeansActParams } from './spec'

const F16_MAX = 65504

export class ActivationCodebookFitter {
  /** Count of normalised non-outliers per fp16 bit pattern (−0 counted as +0). */
  readonly counts = new Float64Array(65536)
  tokens = 0
  samples = 0

  constructor(
    readonly params: KMeansActParams,
    /** The layer input's name, for errors. */
    readonly tensor: string | null = null,
  ) {}

  /** Adds a batch [rows, cols] of the layer input's activations (rows = tokens). */
  add(x: Float32Array, rows: number, cols: number, hooks?: FitHooks): this {
    const k = this.params.outliers
    const outliers = detectTopK(x, rows, cols, k, this.tensor, hooks?.kernel)
    checkOutlierRoom(k, cols, this.tensor)
    const mask = new Uint8Array(cols)
    for (let r = 0; r < rows; r++) {
      if (r % 256 === 0) hooks?.signal?.throwIfAborted()
      const row = x.subarray(r * cols, (r + 1) * cols)
      markOutliers(outliers, r, mask)
      const norm = tokenNorm(row, mask, this.params.norm, this.tensor, this.tokens + r)
      if (norm === 0) continue
      for (let j = 0; j < cols; j++) {
        if (mask[j]) continue
        const v = row[j]! / norm
        if (Math.abs(v) > F16_MAX) throw new ActivationValueError(this.tensor, this.tokens + r, j, `${row[j]} is beyond the fp16 range the streaming codebook fit counts in (use norm=absmax-non-outlier)`)
        const h = f32ToF16(v)
        this.counts[h === 0x8000 ? 0 : h]++ // −0 (and values that round to it) with +0
      }
      this.samples += cols - 2 * k
    }
    this.tokens += rows
    return this
  }

  /** Adds another fitter's counts (same params): batches from other threads or windows. */
  merge(other: ActivationCodebookFitter): this {
    if (formatActivationSpec({ kind: 'kmeans', params: other.params }) !== formatActivationSpec({ kind: 'kmeans', params: this.params })) {
      throw new RangeError(`${this.tensor ? `${this.tensor}: ` : ''}cannot merge codebook fitters of different params`)
    }
    for (let i = 0; i < 65536; i++) this.counts[i]! += other.counts[i]!
    this.tokens += other.tokens
    this.samples += other.samples
    return this
  }

  /** The distinct counted values ascending with their counts. */
  points(): SortedPoints {
    const xs: number[] = []
    const ws: number[] = []
    // Negative patterns from the largest magnitude down, then +0 and the positives up.
    for (let h = 0xfbff; h > 0x8000; h--) if (this.counts[h]! > 0) (xs.push(f16ToF32(h)), ws.push(this.counts[h]!))
    for (let h = 0; h <= 0x7bff; h++) if (this.counts[h]! > 0) (xs.push(f16ToF32(h)), ws.push(this.counts[h]!))
    return { x: Float64Array.from(xs), w: Float64Array.from(ws) }
  }

  fit(): ActivationCodebook {
    const p = this.points()
    if (p.x.length === 0) throw new RangeError(`${this.tensor ? `${this.tensor}: ` : ''}k-means activations: no non-zero calibration value to fit a codebook on (${this.tokens} tokens)`)
    const { centroids, iterations } = kmeans1D(p, 2 ** this.params.bits, this.params.init, this.params.seed, { maxIter: this.params.maxIter, tol: this.params.tol })
    return { params: this.params, centroids: Float32Array.from(centroids), samples: this.samples, iterations }
  }
}
