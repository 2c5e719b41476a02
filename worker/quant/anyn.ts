/**
 * anyN (any4 / any3 / any2, arXiv 2507.04610; recipe in shared/papers.md §1): a learned
 * per-row lookup table of 2ⁿ values in group-normalised space.
 *
 * Per row i and group G: m = min, α = max(M − m, 1e-6)/(2ⁿ − 1); normalised values
 * w_S = (w − m)/α in [0, 2ⁿ − 1], not rounded (computed in float64, held as float32 for the
 * sort). Weighted 1-D k-means over the row's w_S with 2ⁿ clusters and sample weights
 *   'weights'            s = 1
 *   'activations'        s = |x̄_j|          (x̄ = signed mean input activation, calibration.mean)
 *   'activations-scale'  s = |x̄_j · α_i,G|  (the paper's best variant, default)
 * (a row whose weights are all 0 falls back to s = 1). Storage: n-bit codes, a per-row LUT of
 * 2ⁿ fp16 values (ascending), fp16 (α, m) per group. ŵ = LUT_i[q]·α + m from the stored fp16
 * values; each weight takes the code of the stored LUT value nearest to (w − m₁₆)/α₁₆, i.e. the
 * nearest dequantised level.
 */
import * as v from 'valibot'
import { QuantParamError, groupColumns, packedBytes, type LayerCalibration, type QuantMethod, type QuantizeHooks, type StorageBreakdown } from './contract'
import { F16Array, checkShape, checkWeight, forEachRow, groupSchema, requireActivationMeans, seedSchema, sortedUnique } from './common'
import { KMEANS_INITS, kmeans1D, midpoints, nearestLevel, rowSeed, sortPoints } from './kmeans-1d'
import { packCodes } from './packing'
import { PackedCodesTensor } from './packed-tensor'

export const ANYN_WEIGHTINGS = ['weights', 'activations', 'activations-scale'] as const

export const anynSchema = v.strictObject({
  group: groupSchema(128),
  weighting: v.optional(v.picklist(ANYN_WEIGHTINGS, `weighting must be one of ${ANYN_WEIGHTINGS.join(', ')}`), 'activations-scale'),
  init: v.optional(v.picklist(KMEANS_INITS, `init must be one of ${KMEANS_INITS.join(', ')}`), 'kmeans++'),
  seed: seedSchema(),
  maxIter: v.optional(v.pipe(v.number(), v.integer('maxIter must be an integer ≥ 1'), v.minValue(1, 'maxIter must be an integer ≥ 1')), 300),
  tol: v.optional(v.pipe(v.number('tol must be a number'), v.minValue(0, 'tol must be ≥ 0')), 1e-4),
})
export type AnyNParams = v.InferOutput<typeof anynSchema>

const f = Math.fround

export function anynStorage(bits: number, rows: number, cols: number, params: { group: number }): StorageBreakdown {
  checkShape(rows, cols)
  const g = groupColumns(cols, params.group)
  return { codes: packedBytes(rows * cols, bits), scales: rows * (cols / g) * 4, zeros: 0, tables: rows * (1 << bits) * 2, outliers: 0 }
}

export class AnyNTensor extends PackedCodesTensor {
  constructor(
    method: string,
    bits: number,
    rows: number,
    cols: number,
    readonly groupCols: number,
    codes: Uint8Array,
    /** Per-row LUT, rows × 2ⁿ fp16, ascending within a row. */
    readonly lut: F16Array,
    readonly alphas: F16Array,
    readonly mins: F16Array,
  ) {
    super(method, rows, cols, bits, codes, anynStorage(bits, rows, cols, { group: groupCols }))
  }

  protected decodeRow(row: number, codes: Uint8Array, out: Float32Array): void {
    const g = this.groupCols
    const perRow = this.cols / g
    const K = 1 << this.codeBits
    const lut = this.lut.values.subarray(row * K, (row + 1) * K)
    for (let k = 0; k < perRow; k++) {
      const a = this.alphas.values[row * perRow + k]!
      const m = this.mins.values[row * perRow + k]!
      for (let j = k * g; j < (k + 1) * g; j++) out[j] = f(lut[codes[j]!]! * a) + m
    }
  }

  /** The row's LUT in normalised space (what the paper plots), ascending. */
  table(row: number): Float32Array {
    const K = 1 << this.codeBits
    return this.lut.values.slice(row * K, (row + 1) * K)
  }

  levels(row: number, col = 0): Float32Array {
    this.checkLevelsArgs(row, col)
    const idx = row * (this.cols / this.groupCols) + Math.floor(col / this.groupCols)
    const a = this.alphas.values[idx]!
    const m = this.mins.values[idx]!
    return sortedUnique(Array.from(this.table(row), (l) => f(f(l * a) + m)))
  }
}

export function quantizeAnyN(
  method: string,
  bits: number,
  weight: Float32Array,
  rows: number,
  cols: number,
  params: AnyNParams,
  calibration?: LayerCalibration,
  hooks?: QuantizeHooks,
): AnyNTensor {
  checkWeight(weight, rows, cols)
  const g = groupColumns(cols, params.group)
  if (params.init === 'nf4' && bits !== 4) throw new QuantParamError(null, `${method}: init 'nf4' needs 4 bits (16 levels); use kmeans++, quantile, uniform or random`)
  const means = params.weighting === 'weights' ? null : requireActivationMeans(method, cols, calibration)
  const perRow = cols / g
  const K = 1 << bits
  const lut = new F16Array(rows * K)
  const alphas = new F16Array(rows * perRow)
  const mins = new F16Array(rows * perRow)
  const codes = new Uint8Array(rows * cols)
  const ws = new Float32Array(cols)
  const alpha = new Float64Array(perRow)
  const sw = new Float64Array(cols)
  const opts = { maxIter: params.maxIter, tol: params.tol }

  forEachRow(rows, hooks, (r) => {
    const row = weight.subarray(r * cols, (r + 1) * cols)
    for (let k = 0; k < perRow; k++) {
      let lo = Infinity
      let hi = -Infinity
      for (let j = k * g; j < (k + 1) * g; j++) {
        lo = Math.min(lo, row[j]!)
        hi = Math.max(hi, row[j]!)
      }
      const a = (alpha[k] = Math.max(hi - lo, 1e-6) / (K - 1))
      for (let j = k * g; j < (k + 1) * g; j++) ws[j] = (row[j]! - lo) / a
      alphas.set(r * perRow + k, a, () => `α of row ${r} group ${k}`)
      mins.set(r * perRow + k, lo, () => `minimum of row ${r} group ${k}`)
    }
    let weights: Float64Array | null = null
    if (means) {
      let any = false
      for (let j = 0; j < cols; j++) {
        const s = Math.abs(means[j]!) * (params.weighting === 'activations-scale' ? alpha[Math.floor(j / g)]! : 1)
        sw[j] = s
        if (s > 0) any = true
      }
      if (any) weights = sw
    }
    const { centroids } = kmeans1D(sortPoints(ws, weights), K, params.init, rowSeed(params.seed, r), opts)
    const stored = new Float64Array(K)
    for (let q = 0; q < K; q++) stored[q] = lut.set(r * K + q, centroids[q]!, () => `LUT entry ${q} of row ${r}`)
    const mids = midpoints(stored)
    for (let k = 0; k < perRow; k++) {
      const a = alphas.values[r * perRow + k]!
      const m = mins.values[r * perRow + k]!
      for (let j = k * g; j < (k + 1) * g; j++) codes[r * cols + j] = a > 0 ? nearestLevel(mids, (row[j]! - m) / a) : 0
    }
  })
  return new AnyNTensor(method, bits, rows, cols, g, packCodes(codes, bits), lut, alphas, mins)
}

export function anynMethod(bits: 2 | 3 | 4): QuantMethod<AnyNParams> {
  const id = `any${bits}`
  return {
    id,
    label: `${id}: learned per-row ${1 << bits}-value tables (weighted 1-D k-means)`,
    schema: anynSchema,
    needs: (p) => (p.weighting === 'weights' ? 'none' : 'activation-stats'),
    bits: () => bits,
    storage: (rows, cols, p) => anynStorage(bits, rows, cols, p),
    quantize: (weight, rows, cols, params, calibration, hooks) => quantizeAnyN(id, bits, weight, rows, cols, params, calibration, hooks),
  }
}

export const any4Method = anynMethod(4)
export const any3Method = anynMethod(3)
export const any2Method = anynMethod(2)
