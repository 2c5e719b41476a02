/**
 * The scale searches behind llama.cpp's ggml quantization types, re-implemented from
 * ggml/src/ggml-quants.c (llama.cpp; see test/fixtures/ggml/README.md for the release checked):
 * `nearest_int`, `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`, `make_qkx3_quants` and
 * `make_qp_quants`.
 *
 * Why every operation goes through `f` (Math.fround): ggml computes in float32, and the
 * reference routines feed those floats into round-to-nearest and `>`/`<` comparisons, so a
 * float64 evaluation picks different codes near ties and different search winners. ggml-base
 * is built without -march flags (no FMA contraction) and without -ffast-math, so each C
 * operator is one correctly rounded float32 operation, in source order; a float64 operation
 * on float32 inputs followed by fround gives exactly that result for + − × ÷ and sqrt.
 * Loops keep ggml's summation order for the same reason.
 */

export const f = Math.fround

/** ggml's GROUP_MAX_EPS: a group whose largest |x| is below this is all zero. */
export const GROUP_MAX_EPS = f(1e-15)

const MAGIC = 12582912 // 1.5·2²³: adding it leaves the rounded integer in the low mantissa bits
const bitsView = new Float32Array(1)
const intView = new Int32Array(bitsView.buffer)

/**
 * ggml's nearest_int: round half to even through the float32 magic-number trick. ggml only
 * asserts |x| ≤ 4194303 in debug builds; outside that range the trick's bit pattern is kept
 * so that even garbage codes match llama.cpp's.
 */
export function nearestInt(x: number): number {
  const v = f(x + MAGIC)
  if (x >= -4194303 && x <= 4194303) return v - MAGIC
  bitsView[0] = v
  return (intView[0]! & 0x007fffff) - 0x00400000
}

/** C's roundf: half away from zero. */
export function roundAway(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5)
}

/** The value of x[xo … xo+n) with the largest magnitude, sign kept (the first on ties; 0 when none is non-zero). */
function largestMagnitude(x: ArrayLike<number>, xo: number, n: number): number {
  let max = 0
  let amax = 0
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xo + i]!)
    if (ax > amax) {
      amax = ax
      max = x[xo + i]!
    }
  }
  return max
}

/**
 * make_qx_quants: symmetric codes L ∈ [0, 2·nmax) (stored as l + nmax) and the scale that
 * minimises Σ w·(x − scale·l)², trying 18 scales around nmax/max. Weights: `qw`, else by
 * rmseType (1: x², 2: 1, 3: |x|, else √|x|). rmseType 0 = plain rounding; negative = one pass.
 */
export function makeQxQuants(n: number, nmax: number, x: ArrayLike<number>, xo: number, L: Int8Array | Uint8Array, lo: number, rmseType: number, qw: ArrayLike<number> | null, qo = 0): number {
  const max = largestMagnitude(x, xo, n)
  if (Math.abs(max) < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    return 0
  }
  let iscale = f(-nmax / max)
  if (rmseType === 0) {
    for (let i = 0; i < n; i++) L[lo + i] = nmax + clamp(nearestInt(f(iscale * x[xo + i]!)), -nmax, nmax - 1)
    return f(1 / iscale)
  }
  let returnEarly = false
  if (rmseType < 0) {
    rmseType = -rmseType
    returnEarly = true
  }
  const weight = qxWeights(n, x, xo, rmseType, qw, qo)
  let sumlx = 0
  let suml2 = 0
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    const l = clamp(nearestInt(f(iscale * xi)), -nmax, nmax - 1)
    L[lo + i] = l + nmax
    const w = weight[i]!
    sumlx = f(sumlx + f(f(w * xi) * l))
    suml2 = f(suml2 + f(f(w * l) * l))
  }
  let scale = suml2 ? f(sumlx / suml2) : 0
  if (returnEarly) return suml2 > 0 ? f(f(0.5) * f(scale + f(1 / iscale))) : f(1 / iscale)
  let best = f(scale * sumlx)
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue
    iscale = f(-f(nmax + f(f(0.1) * is)) / max)
    sumlx = 0
    suml2 = 0
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!
      const l = clamp(nearestInt(f(iscale * xi)), -nmax, nmax - 1)
      const w = weight[i]!
      sumlx = f(sumlx + f(f(w * xi) * l))
      suml2 = f(suml2 + f(f(w * l) * l))
    }
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      for (let i = 0; i < n; i++) L[lo + i] = nmax + clamp(nearestInt(f(iscale * x[xo + i]!)), -nmax, nmax - 1)
      scale = f(sumlx / suml2)
      best = f(scale * sumlx)
    }
  }
  return scale
}

const qxScratch = new Float32Array(256)

/** make_qx_quants' weight of each value: qw when given, else by rmse_type (1: x², 2: 1, 3: |x|, else √|x|). */
function qxWeights(n: number, x: ArrayLike<number>, xo: number, rmseType: number, qw: ArrayLike<number> | null, qo: number): Float32Array {
  const out = qxScratch.subarray(0, n)
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    out[i] = qw ? qw[qo + i]! : rmseType === 1 ? f(xi * xi) : rmseType === 2 ? 1 : rmseType === 3 ? Math.abs(xi) : f(Math.sqrt(Math.abs(xi)))
  }
  return out
}

/**
 * make_q3_quants (Q3_K without an imatrix): symmetric codes, then up to five passes of
 * coordinate descent on each code with weights x², keeping a change when it raises
 * (Σwxl)²/Σwl². L ends as l + nmax.
 */
export function makeQ3Quants(n: number, nmax: number, x: ArrayLike<number>, xo: number, L: Int8Array, lo: number, doRmse: boolean): number {
  const max = largestMagnitude(x, xo, n)
  if (Math.abs(max) < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    return 0
  }
  const iscale = f(-nmax / max)
  if (!doRmse) {
    for (let i = 0; i < n; i++) L[lo + i] = clamp(nearestInt(f(iscale * x[xo + i]!)), -nmax, nmax - 1) + nmax
    return f(1 / iscale)
  }
  let sumlx = 0
  let suml2 = 0
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    const l = clamp(nearestInt(f(iscale * xi)), -nmax, nmax - 1)
    L[lo + i] = l
    const w = f(xi * xi)
    sumlx = f(sumlx + f(f(w * xi) * l))
    suml2 = f(suml2 + f(f(w * l) * l))
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!
      const w = f(xi * xi)
      const li = L[lo + i]!
      let slx = f(sumlx - f(f(w * xi) * li))
      if (slx > 0) {
        let sl2 = f(suml2 - f(f(w * li) * li))
        const nl = clamp(nearestInt(f(f(xi * sl2) / slx)), -nmax, nmax - 1)
        if (nl !== li) {
          slx = f(slx + f(f(w * xi) * nl))
          sl2 = f(sl2 + f(f(w * nl) * nl))
          if (sl2 > 0 && f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[lo + i] = nl
            sumlx = slx
            suml2 = sl2
            changed++
          }
        }
      }
    }
    if (!changed) break
  }
  for (let i = 0; i < n; i++) L[lo + i] = L[lo + i]! + nmax
  return suml2 > 0 ? f(sumlx / suml2) : 0
}

/** Output of the asymmetric searches: codes in L, the scale, and the positive offset `theMin` (x ≈ scale·l − theMin). */
export interface AffineFit {
  scale: number
  theMin: number
}

/**
 * make_qkx2_quants (the K-types' and legacy types' asymmetric search, no imatrix) and
 * make_qkx3_quants (its imatrix twin) share one body: codes l ∈ [0, nmax] for x ≈ scale·l + min
 * with min ≤ 0, refined by a weighted least-squares fit over nstep+1 trial scales. They differ
 * in the weights when none are given (qkx3: x²) and in the empty-range test (qkx2: max == min,
 * qkx3: max ≤ min, the same after min is clamped to ≤ 0 but kept literal).
 */
function makeQkxQuants(
  variant: 2 | 3,
  n: number,
  nmax: number,
  x: ArrayLike<number>,
  xo: number,
  weights: ArrayLike<number> | null,
  L: Uint8Array,
  lo: number,
  Laux: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
  useMad: boolean,
): AffineFit {
  // qkx3 without weights uses x²; filled once so the hot loops read one array.
  const w = weights ?? scratchSquares(x, xo, n)
  let min = x[xo]!
  let max = x[xo]!
  let sumW = w[0]!
  let sumX = f(sumW * x[xo]!)
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i]!
    if (xi < min) min = xi
    if (xi > max) max = xi
    const wi = w[i]!
    sumW = f(sumW + wi)
    sumX = f(sumX + f(wi * xi))
  }
  if (min > 0) min = 0
  if (variant === 2 ? max === min : max <= min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    return { scale: 0, theMin: -min }
  }
  // min moves to each better fit's offset, and later trial scales use the moved range (as ggml does).
  let iscale = f(nmax / f(max - min))
  let scale = f(1 / iscale)
  let bestError = 0
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i]!
    const l = clamp(nearestInt(f(iscale * f(xi - min))), 0, nmax)
    L[lo + i] = l
    let diff = f(f(f(scale * l) + min) - xi)
    diff = useMad ? Math.abs(diff) : f(diff * diff)
    bestError = f(bestError + f(w[i]! * diff))
  }
  if (nstep < 1) return { scale, theMin: -min }
  for (let is = 0; is <= nstep; is++) {
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min))
    let sumL = 0
    let sumL2 = 0
    let sumXL = 0
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i]!
      const l = clamp(nearestInt(f(iscale * f(xi - min))), 0, nmax)
      Laux[i] = l
      const wi = w[i]!
      const wl = f(wi * l)
      sumL = f(sumL + wl)
      sumL2 = f(sumL2 + f(wl * l))
      sumXL = f(sumXL + f(wl * xi))
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL))
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D)
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D)
      if (thisMin > 0) {
        thisMin = 0
        thisScale = f(sumXL / sumL2)
      }
      let err = 0
      for (let i = 0; i < n; i++) {
        let diff = f(f(f(thisScale * Laux[i]!) + thisMin) - x[xo + i]!)
        diff = useMad ? Math.abs(diff) : f(diff * diff)
        err = f(err + f(w[i]! * diff))
      }
      if (err < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i]!
        bestError = err
        scale = thisScale
        min = thisMin
      }
    }
  }
  return { scale, theMin: -min }
}

function scratchSquares(x: ArrayLike<number>, xo: number, n: number): Float32Array {
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) out[i] = f(x[xo + i]! * x[xo + i]!)
  return out
}

export function makeQkx2Quants(n: number, nmax: number, x: ArrayLike<number>, xo: number, weights: ArrayLike<number>, L: Uint8Array, lo: number, Laux: Uint8Array, rmin: number, rdelta: number, nstep: number, useMad: boolean): AffineFit {
  return makeQkxQuants(2, n, nmax, x, xo, weights, L, lo, Laux, f(rmin), f(rdelta), nstep, useMad)
}

export function makeQkx3Quants(n: number, nmax: number, x: ArrayLike<number>, xo: number, weights: ArrayLike<number> | null, L: Uint8Array, lo: number, Laux: Uint8Array, rmin: number, rdelta: number, nstep: number, useMad: boolean): AffineFit {
  return makeQkxQuants(3, n, nmax, x, xo, weights, L, lo, Laux, f(rmin), f(rdelta), nstep, useMad)
}

/**
 * make_qp_quants: non-negative codes l ∈ [0, nmax] for non-negative x (the K-types' sub-block
 * scales and mins under an imatrix), weighted by quantWeights: best of 9 trial scales, then
 * up to five passes of coordinate descent. Returns the scale.
 */
export function makeQpQuants(n: number, nmax: number, x: ArrayLike<number>, L: Uint8Array, quantWeights: ArrayLike<number>): number {
  let max = 0
  for (let i = 0; i < n; i++) max = Math.max(max, x[i]!)
  if (max < GROUP_MAX_EPS) {
    L.fill(0, 0, n)
    return 0
  }
  let iscale = f(nmax / max)
  // ggml stores these into uint8_t before clamping; nearest_int of a non-negative x·nmax/max fits.
  for (let i = 0; i < n; i++) L[i] = nearestInt(f(iscale * x[i]!))
  const scale = f(1 / iscale)
  let bestMse = 0
  for (let i = 0; i < n; i++) {
    const diff = f(x[i]! - f(scale * L[i]!))
    bestMse = f(bestMse + f(f(quantWeights[i]! * diff) * diff))
  }
  for (let is = -4; is <= 4; is++) {
    if (is === 0) continue
    const iscaleIs = f(f(f(f(0.1) * is) + nmax) / max)
    const scaleIs = f(1 / iscaleIs)
    let mse = 0
    for (let i = 0; i < n; i++) {
      const l = Math.min(nmax, nearestInt(f(iscaleIs * x[i]!)))
      const diff = f(x[i]! - f(scaleIs * l))
      mse = f(mse + f(f(quantWeights[i]! * diff) * diff))
    }
    if (mse < bestMse) {
      bestMse = mse
      iscale = iscaleIs
    }
  }
  let sumlx = 0
  let suml2 = 0
  for (let i = 0; i < n; i++) {
    const l = Math.min(nmax, nearestInt(f(iscale * x[i]!)))
    L[i] = l
    const w = quantWeights[i]!
    sumlx = f(sumlx + f(f(w * x[i]!) * l))
    suml2 = f(suml2 + f(f(w * l) * l))
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0
    for (let i = 0; i < n; i++) {
      const w = quantWeights[i]!
      const li = L[i]!
      let slx = f(sumlx - f(f(w * x[i]!) * li))
      let sl2 = f(suml2 - f(f(w * li) * li))
      if (slx > 0 && sl2 > 0) {
        const nl = Math.min(nmax, nearestInt(f(f(x[i]! * sl2) / slx)))
        if (nl !== li) {
          slx = f(slx + f(f(w * x[i]!) * nl))
          sl2 = f(sl2 + f(f(w * nl) * nl))
          if (f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[i] = nl
            sumlx = slx
            suml2 = sl2
            changed++
          }
        }
      }
    }
    if (!changed) break
  }
  return suml2 > 0 ? f(sumlx / suml2) : 0
}

export function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v
}
