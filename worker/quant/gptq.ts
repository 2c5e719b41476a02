/**
 * GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
 * Pre-trained Transformers"), following the reference IST-DASLab/gptq gptq.py `fasterquant`:
 * - H = 2·XᵀX / tokens; dead inputs (H_jj = 0) get H_jj = 1 and a zeroed weight column;
 *   dampening λ = damp·mean(diag H) on the diagonal; U = upper Cholesky factor of H⁻¹.
 * - Columns are quantized in order; each column's rounding error, divided by U_ii, is spread
 *   over the columns not yet quantized along U's row i. Within a block of `blocksize` columns
 *   the update is applied at once; the rest of the matrix receives the block's errors in one
 *   lazy batch at the block's end (the paper's "lazy batch updates").
 * - Groups: a group's grid is fitted when its first column is reached, from the weights as
 *   updated by every earlier column. The block size is rounded up to a multiple of the group
 *   when neither divides the other, so that all those updates have landed when the group is
 *   fitted and the result does not depend on the block size (the reference fits a group that
 *   starts inside a block from weights lacking that block's pending updates).
 * - actorder: columns in descending order of diag(H), then un-permuted. With groups this uses
 *   the reference's `static_groups`: every group's grid is fitted up front from the original
 *   weights in natural column order, so the storage needs no per-column group index (g_idx).
 * Rows are independent given U, so each block walks row by row over contiguous row-major
 * memory; all math is float64. Output: integer codes, fp16 scales and packed zero points
 * (asymmetric) per group, dequantized from those stored values (see int-grid.ts).
 */
import * as v from 'valibot'
import { type LayerCalibration, type QuantMethod, type QuantizeHooks, groupColumns } from './contract'
import { requireGram } from './gram'
import { inverseHessianFactor } from './hessian-inverse'
import { F16Array, bitsSchema, checkWeight, groupSchema } from './common'
import { IntGroupTensor, fitIntGrid, intGroupStorage, newGroupGrid, quantizeToGrid, scaleOverflowError, storeGridScale } from './int-grid'
import { gptqColumnsWasm, useWasmKernels } from './wasm-kernels'

export const gptqParamsSchema = v.strictObject({
  bits: bitsSchema(2, 8, 4),
  group: groupSchema(128),
  sym: v.optional(v.boolean('sym must be true or false'), false),
  /** Fraction of the mean Hessian diagonal added to the diagonal (the reference's percdamp). */
  damp: v.optional(v.pipe(v.number('damp must be a number'), v.minValue(0, 'damp must be in [0, 1]'), v.maxValue(1, 'damp must be in [0, 1]')), 0.01),
  blocksize: v.optional(v.pipe(v.number('blocksize must be a number'), v.integer('blocksize must be a positive integer'), v.minValue(1, 'blocksize must be a positive integer')), 128),
  actorder: v.optional(v.boolean('actorder must be true or false'), false),
})
export type GptqParams = v.InferOutput<typeof gptqParamsSchema>

/** The column order: identity, or by descending diag(H) (ties by index, so it is deterministic). */
function columnOrder(H: Float64Array, n: number, actorder: boolean): Int32Array | null {
  if (!actorder) return null
  const perm = Int32Array.from({ length: n }, (_, i) => i)
  return perm.sort((a, b) => H[b * n + b]! - H[a * n + a]! || a - b)
}

/** Fits the grid of weights W[off, off + len) into group slot gi. */
function fitGroup(W: Float64Array, off: number, len: number, p: GptqParams, gi: number, scales: F16Array, zeroOf: Uint8Array, grid = newGroupGrid()): void {
  let lo = Infinity
  let hi = -Infinity
  for (let k = off; k < off + len; k++) {
    const w = W[k]!
    if (w < lo) lo = w
    if (w > hi) hi = w
  }
  fitIntGrid(lo, hi, p.bits, p.sym, 'gptq', grid)
  storeGridScale(scales, gi, grid)
  zeroOf[gi] = grid.zero
}

export function gptqQuantize(weight: Float32Array, rows: number, cols: number, p: GptqParams, calibration?: LayerCalibration, hooks: QuantizeHooks = {}): IntGroupTensor {
  const g = groupColumns(cols, p.group)
  checkWeight(weight, rows, cols)
  const { gram, count } = requireGram(calibration, cols, 'gptq')
  const { signal, onProgress } = hooks
  const n = cols
  const maxq = 2 ** p.bits - 1
  const groupsPerRow = n / g

  const H = new Float64Array(n * n)
  const f = 2 / count
  for (let i = 0; i < H.length; i++) H[i] = gram[i]! * f
  const Wn = Float64Array.from(weight)
  for (let j = 0; j < n; j++) {
    if (H[j * n + j] !== 0) continue
    H[j * n + j] = 1
    for (let r = 0; r < rows; r++) Wn[r * n + j] = 0
  }

  // Grids per (row, group) in natural column order; static ones are fitted now.
  const scales = new F16Array(rows * groupsPerRow)
  const scaleOf = scales.values
  const zeroOf = new Uint8Array(rows * groupsPerRow)
  const perm = columnOrder(H, n, p.actorder)
  const staticGroups = perm !== null
  if (staticGroups) {
    const grid = newGroupGrid()
    for (let r = 0; r < rows; r++) for (let k = 0; k < groupsPerRow; k++) fitGroup(Wn, r * n + k * g, g, p, r * groupsPerRow + k, scales, zeroOf, grid)
  }

  let W = Wn
  let Hp = H
  if (perm) {
    W = new Float64Array(rows * n)
    for (let r = 0; r < rows; r++) for (let i = 0; i < n; i++) W[r * n + i] = Wn[r * n + perm[i]!]!
    Hp = new Float64Array(n * n)
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) Hp[i * n + j] = H[perm[i]! * n + perm[j]!]!
  }
  let meanDiag = 0
  for (let i = 0; i < n; i++) meanDiag += Hp[i * n + i]!
  const lambda = (p.damp * meanDiag) / n
  for (let i = 0; i < n; i++) Hp[i * n + i] = Hp[i * n + i]! + lambda
  const U = inverseHessianFactor(Hp, n, signal, hooks.kernel)

  let bs = Math.min(p.blocksize, n)
  if (g < n && bs % g !== 0 && g % bs !== 0) bs = Math.ceil(bs / g) * g
  const codes = new Uint8Array(rows * n)
  if (useWasmKernels(hooks.kernel)) {
    // The same block loop in WASM SIMD (bit-identical; quant/wasm-kernels.ts).
    const input = { W, U, rows, n, perm, groupCols: g, bits: p.bits, sym: p.sym, blocksize: bs, staticGroups }
    const bad = gptqColumnsWasm(input, scales, zeroOf, codes, hooks)
    if (bad !== null) throw scaleOverflowError(bad)
    return new IntGroupTensor('gptq', rows, cols, p.bits, g, codes, scales, p.sym ? null : zeroOf, null, hooks.kernel)
  }
  const err = new Float64Array(rows * bs)
  const grid = newGroupGrid()

  for (let i1 = 0; i1 < n; i1 += bs) {
    signal?.throwIfAborted()
    const i2 = Math.min(i1 + bs, n)
    for (let r = 0; r < rows; r++) {
      const row = r * n
      const eRow = r * bs - i1
      for (let i = i1; i < i2; i++) {
        const c = perm ? perm[i]! : i
        const gi = r * groupsPerRow + ((c / g) | 0)
        if (!staticGroups && i % g === 0) fitGroup(W, row + i, g, p, gi, scales, zeroOf, grid)
        const s = scaleOf[gi]!
        const z = zeroOf[gi]!
        const w = W[row + i]!
        const q = quantizeToGrid(w, s, z, maxq)
        codes[row + c] = q
        const ui = i * n
        const e = (w - s * (q - z)) / U[ui + i]!
        err[eRow + i] = e
        if (e === 0) continue
        for (let j = i + 1; j < i2; j++) W[row + j] = W[row + j]! - e * U[ui + j]!
      }
    }
    if (i2 < n) {
      for (let r = 0; r < rows; r++) {
        const row = r * n
        for (let k = 0; k < i2 - i1; k++) {
          const e = err[r * bs + k]!
          if (e === 0) continue
          const ub = (i1 + k) * n
          for (let j = i2; j < n; j++) W[row + j] = W[row + j]! - e * U[ub + j]!
        }
      }
    }
    onProgress?.(Math.round((rows * i2) / n), rows)
  }

  return new IntGroupTensor('gptq', rows, cols, p.bits, g, codes, scales, p.sym ? null : zeroOf, null, hooks.kernel)
}

export const gptqMethod: QuantMethod<GptqParams> = {
  id: 'gptq',
  label: 'GPTQ: error-compensating integer rounding from XᵀX',
  schema: gptqParamsSchema,
  needs: () => 'gram',
  bits: (p) => p.bits,
  storage: (rows, cols, p) => intGroupStorage(rows, cols, p.bits, groupColumns(cols, p.group), p.sym, false),
  quantize: (weight, rows, cols, p, calibration, hooks) => gptqQuantize(weight, rows, cols, p, calibration, hooks),
}
