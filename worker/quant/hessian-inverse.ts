/**
 * GPTQ's inverse-Hessian factor: the upper-triangular U with UᵀU = H⁻¹ (positive diagonal),
 * which IST-DASLab/gptq gptq.py computes as cholesky(cholesky_inverse(cholesky(H)), upper=True).
 *
 * Here in two triangular passes instead of three (float64, row-major, no allocation in loops):
 * 1. "reverse" Cholesky H = V·Vᵀ with V upper triangular (the ordinary algorithm run from the
 *    last column to the first); 2. U = V⁻¹, again upper triangular. Then
 *    UᵀU = V⁻ᵀV⁻¹ = (VVᵀ)⁻¹ = H⁻¹, and U is the unique such factor, so it equals the reference's.
 * Both passes take ~n³/6 multiply-adds; every inner loop walks two rows contiguously.
 */
import { QuantParamError } from './contract'
import { inverseHessianFactorWasm, useWasmKernels, type QuantKernelKind } from './wasm-kernels'

/** Checks the signal every this many rows of a pass (a 4864² pass takes tens of seconds in TS). */
const CANCEL_EVERY = 32

/**
 * Returns U (n×n row-major; lower triangle zero). `H` is read only. Throws QuantParamError when H
 * is not positive definite (after the caller's dampening).
 */
export function inverseHessianFactor(H: Float64Array, n: number, signal?: AbortSignal, kernel?: QuantKernelKind): Float64Array {
  if (H.length !== n * n) throw new QuantParamError(null, `Hessian has ${H.length} entries, expected ${n}×${n}`)
  if (useWasmKernels(kernel)) {
    // The same two passes in WASM, bit-identical (quant/wasm-kernels.ts).
    const U = inverseHessianFactorWasm(H, n, signal)
    if (U instanceof Float64Array) return U
    throw notPositiveDefinite(U.column, U.pivot)
  }
  const A = new Float64Array(H)
  // Pass 1: A's upper triangle becomes V (H = V·Vᵀ). Row j of V right of the diagonal is
  // finished before column j is computed, so each entry is one dot product over columns > j.
  for (let j = n - 1; j >= 0; j--) {
    if (signal && (n - 1 - j) % CANCEL_EVERY === 0) signal.throwIfAborted()
    const rj = j * n
    let s = A[rj + j]!
    for (let k = j + 1; k < n; k++) s -= A[rj + k]! * A[rj + k]!
    if (!(s > 0)) throw notPositiveDefinite(j, s)
    const d = Math.sqrt(s)
    A[rj + j] = d
    for (let i = 0; i < j; i++) {
      const ri = i * n
      let t = A[ri + j]!
      for (let k = j + 1; k < n; k++) t -= A[ri + k]! * A[rj + k]!
      A[ri + j] = t / d
    }
  }
  // Pass 2: U = V⁻¹ row by row from the bottom: row i of V·U = e_i gives
  // U[i,·] = (e_i − Σ_{k>i} V[i,k]·U[k,·]) / V[i,i], with rows k > i already U.
  const v = new Float64Array(n)
  for (let i = n - 1; i >= 0; i--) {
    if (signal && (n - 1 - i) % CANCEL_EVERY === 0) signal.throwIfAborted()
    const ri = i * n
    const d = A[ri + i]!
    for (let k = i + 1; k < n; k++) {
      v[k] = A[ri + k]!
      A[ri + k] = 0
    }
    for (let k = i + 1; k < n; k++) {
      const a = v[k]!
      if (a === 0) continue
      const rk = k * n
      for (let j = k; j < n; j++) A[ri + j] = A[ri + j]! - a * A[rk + j]!
    }
    const inv = 1 / d
    A[ri + i] = inv
    for (let j = i + 1; j < n; j++) A[ri + j] = A[ri + j]! * inv
    for (let j = 0; j < i; j++) A[ri + j] = 0
  }
  return A
}

function notPositiveDefinite(column: number, pivot: number): QuantParamError {
  return new QuantParamError(null, `Hessian is not positive definite at column ${column} (pivot ${pivot}); raise damp`)
}
