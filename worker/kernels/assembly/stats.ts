// Per-tensor statistics kernel (AssemblyScript → WASM SIMD). Semantics mirror
// worker/stats/stats-reference.ts exactly; the JS side (worker/kernels/stats-wasm.ts) owns the
// memory layout and passes every region as a pointer to `init`. No managed objects are used, so
// the stub runtime never allocates.
//
// Per element, pass 1 keeps: min/max, per-row and per-column absmax, per-column |w| sums that are
// folded into heatmap cells when the heatmap row band changes, zero/NaN/Inf counts, a top-k heap
// of magnitudes, an OR of the low 13 mantissa bits, and a "fine" histogram keyed by the top 19
// bits of the float. When those low bits are all zero (values that came from F16/BF16/FP8/small
// ints) every fine bin holds a single value, so re-binning it into [min, max] later is exact and
// no second read of the tensor is needed. Moments: a two-pass per 4096-value block (central
// moments of the block around its own mean, float32 sums over groups of 32 widened to float64;
// see chunkMoments) merged across blocks with Pébay's formulas in float64.
//
// Stored F16/BF16 bytes take a faster path (addRaw16): each value is counted in a 65536-entry
// table keyed by its 16-bit pattern, from which min/max/NaN/Inf/zeros, the moments (in
// float64, exactly per pattern) and the histogram all follow at the end. The row pass then
// only keeps row/column absmax (compared as integers on the 15 magnitude bits, which order
// like the values for finite floats), the heatmap column sums and the top-k threshold test.

const BLOCK: i32 = 4096
/** Rows summed in float32 per column before they are folded into the float64 band sums. */
const FOLD_ROWS: i32 = 32
const FINE_SHIFT: u32 = 13
const LOW_MASK: u32 = 0x1fff

// Regions (byte pointers), set by init().
let colMaxPtr: usize = 0 // f32[cols]
let colSumPtr: usize = 0 // f64[cols]: |w| per column in the current heatmap row band
let colAccPtr: usize = 0 // f32[cols]: |w| per column over the last < FOLD_ROWS rows of the band
let colCellPtr: usize = 0 // i32[cols]: heatmap column cell of each column
let cellSumPtr: usize = 0 // f64[hr*hc]
let cellBadPtr: usize = 0 // f64[hr*hc]: non-finite values per cell
let finePtr: usize = 0 // u32[1 << 19]
let heapValPtr: usize = 0 // f32[k]
let heapIdxPtr: usize = 0 // f64[k]
let rowMaxPtr: usize = 0 // f32[rows of the current chunk]
let countPtr: usize = 0 // u32[65536]: values per 16-bit pattern (raw 16-bit path)
let colMax16Ptr: usize = 0 // u16[cols]: column absmax as magnitude bits (raw 16-bit path)
let distinctPtr: usize = 0 // (f32 value, u32 count)[≤ 65536]: distinct finite values (raw 16-bit path)
let distinctCount: i32 = -1 // -1: not listed yet

let nCols: i32 = 0
let nRows: f64 = 0
let hRows: i32 = 0
let hCols: i32 = 0
let topK: i32 = 0
let heapSize: i32 = 0
let threshold: f32 = 0 // an element enters the top-k heap only if |x| > threshold
let band: i32 = -1
let accRows: i32 = 0
let fineDirty = false
let finePtrCleared: usize = 0
/** 0: values arrive as f32 (addRows); 1: F16 / 2: BF16 patterns (addRaw16). */
let raw16Kind: i32 = 0
/** threshold as 16-bit magnitude bits (raw 16-bit path): -1 takes every value, 0x7fff none. */
let thrBits: i32 = -1

let gMin: f32 = Infinity
let gMax: f32 = -Infinity
let gNan: f64 = 0
let gInf: f64 = 0
let gZeros: f64 = 0
let gLowBits: u32 = 0

let mN: f64 = 0
let mMean: f64 = 0
let mM2: f64 = 0
let mM3: f64 = 0
let mM4: f64 = 0

export function init(
  cols: i32,
  rows: f64,
  hr: i32,
  hc: i32,
  k: i32,
  colMax: usize,
  colSum: usize,
  colAcc: usize,
  colCell: usize,
  cellSum: usize,
  cellBad: usize,
  fine: usize,
  heapVal: usize,
  heapIdx: usize,
  rowMax: usize,
): void {
  nCols = cols
  nRows = rows
  hRows = hr
  hCols = hc
  topK = k
  colMaxPtr = colMax
  colSumPtr = colSum
  colAccPtr = colAcc
  colCellPtr = colCell
  cellSumPtr = cellSum
  cellBadPtr = cellBad
  finePtr = fine
  heapValPtr = heapVal
  heapIdxPtr = heapIdx
  rowMaxPtr = rowMax
  memory.fill(colMax, 0, <usize>cols << 2)
  memory.fill(colSum, 0, <usize>cols << 3)
  memory.fill(colAcc, 0, <usize>cols << 2)
  accRows = 0
  memory.fill(cellSum, 0, <usize>(hr * hc) << 3)
  memory.fill(cellBad, 0, <usize>(hr * hc) << 3)
  // rebinFine leaves the fine bins zeroed behind it; only a tensor that took the second
  // histogram pass leaves them dirty (2 MB to clear).
  if (fineDirty || fine != finePtrCleared) memory.fill(fine, 0, <usize>1 << (34 - FINE_SHIFT))
  fineDirty = false
  finePtrCleared = fine
  raw16Kind = 0
  heapSize = 0
  threshold = k > 0 ? -1 : Infinity
  band = -1
  gMin = Infinity
  gMax = -Infinity
  gNan = 0
  gInf = 0
  gZeros = 0
  gLowBits = 0
  mN = 0
  mMean = 0
  mM2 = 0
  mM3 = 0
  mM4 = 0
}

// ---- moments ---------------------------------------------------------------------------

/** Pébay's pairwise update: merges (n, mean, M2, M3, M4) of a block into the running moments. */
function mergeMoments(n: f64, mean: f64, m2: f64, m3: f64, m4: f64): void {
  if (n == 0) return
  if (mN == 0) {
    mN = n
    mMean = mean
    mM2 = m2
    mM3 = m3
    mM4 = m4
    return
  }
  const na = mN
  const nb = n
  const nn = na + nb
  const delta = mean - mMean
  const dn = delta / nn
  const dn2 = dn * dn
  const t = delta * dn * na * nb
  const m4n =
    mM4 + m4 + t * dn2 * (na * na - na * nb + nb * nb) + 6 * dn2 * (na * na * m2 + nb * nb * mM2) + 4 * dn * (na * m3 - nb * mM3)
  const m3n = mM3 + m3 + t * dn * (na - nb) + 3 * dn * (na * m2 - nb * mM2)
  mM2 = mM2 + m2 + t
  mM3 = m3n
  mM4 = m4n
  mMean = mMean + dn * nb
  mN = nn
}

/** Moments of a block that holds non-finite values: scalar, finite values only. */
function dirtyBlockMoments(p: usize, n: i32): void {
  let sum: f64 = 0
  let cnt: f64 = 0
  for (let i = 0; i < n; i++) {
    const x = <f64>load<f32>(p + (<usize>i << 2))
    if (x - x == 0) {
      sum += x
      cnt += 1
    }
  }
  if (cnt == 0) return
  const mean = sum / cnt
  let s2: f64 = 0
  let s3: f64 = 0
  let s4: f64 = 0
  for (let i = 0; i < n; i++) {
    const x = <f64>load<f32>(p + (<usize>i << 2))
    if (x - x == 0) {
      const d = x - mean
      const d2 = d * d
      s2 += d2
      s3 += d2 * d
      s4 += d2 * d2
    }
  }
  mergeMoments(cnt, mean, s2, s3, s4)
}

/** acc (f64x2) + the four f32 lanes of v, widened. */
@inline function widenAdd(acc: v128, v: v128): v128 {
  return f64x2.add(acc, f64x2.add(f64x2.promote_low_f32x4(v), f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 0, 1))))
}

@inline function lanes64(v: v128): f64 {
  return f64x2.extract_lane(v, 0) + f64x2.extract_lane(v, 1)
}

/** Exact two-pass central moments of a finite block, all in float64. */
function exactBlockMoments(q: usize, len: i32): void {
  const len4 = len & ~3
  let s = f64x2.splat(0)
  for (let i = 0; i < len4; i += 4) s = widenAdd(s, v128.load(q + (<usize>i << 2)))
  let sum = lanes64(s)
  for (let i = len4; i < len; i++) sum += <f64>load<f32>(q + (<usize>i << 2))
  const mean = sum / <f64>len
  const mv = f64x2.splat(mean)
  let a2 = f64x2.splat(0)
  let a3 = f64x2.splat(0)
  let a4 = f64x2.splat(0)
  for (let i = 0; i < len4; i += 4) {
    const x = v128.load(q + (<usize>i << 2))
    const d0 = f64x2.sub(f64x2.promote_low_f32x4(x), mv)
    const d1 = f64x2.sub(f64x2.promote_low_f32x4(v128.shuffle<f32>(x, x, 2, 3, 0, 1)), mv)
    const e0 = f64x2.mul(d0, d0)
    const e1 = f64x2.mul(d1, d1)
    a2 = f64x2.add(a2, f64x2.add(e0, e1))
    a3 = f64x2.add(a3, f64x2.add(f64x2.mul(e0, d0), f64x2.mul(e1, d1)))
    a4 = f64x2.add(a4, f64x2.add(f64x2.mul(e0, e0), f64x2.mul(e1, e1)))
  }
  let m2 = lanes64(a2)
  let m3 = lanes64(a3)
  let m4 = lanes64(a4)
  for (let i = len4; i < len; i++) {
    const d = <f64>load<f32>(q + (<usize>i << 2)) - mean
    const d2 = d * d
    m2 += d2
    m3 += d2 * d
    m4 += d2 * d2
  }
  mergeMoments(<f64>len, mean, m2, m3, m4)
}

/**
 * Moments over n floats at p, block by block; returns true if any value may be NaN or ±Inf.
 *
 * Per block: pass 1 sums in float32 over groups of 32 values, widened to float64 per group
 * (a non-finite group sum also flags NaN/Inf, or a finite overflow; either way the exact
 * scalar path takes the block). Pass 2 takes d = x − m (m = the block mean rounded to f32,
 * so d is exact or nearly so), sums d, d², d³, d⁴ in float32 over groups of 32 and widens
 * them to float64, then corrects to the true block mean with the Σd term. Each group sum has
 * a relative error of a few 1e-8, so moments agree with the float64 reference to ~1e-7. When
 * d⁴ could overflow or underflow float32, the block is redone exactly in float64.
 */
function chunkMoments(p: usize, n: i32): bool {
  let anyBad = false
  for (let b = 0; b < n; b += BLOCK) {
    const len = min(BLOCK, n - b)
    const q = p + (<usize>b << 2)
    const len32 = len & ~31
    let s = f64x2.splat(0)
    for (let i = 0; i < len32; i += 32) {
      const g = q + (<usize>i << 2)
      const t0 = f32x4.add(f32x4.add(v128.load(g), v128.load(g, 16)), f32x4.add(v128.load(g, 32), v128.load(g, 48)))
      const t1 = f32x4.add(f32x4.add(v128.load(g, 64), v128.load(g, 80)), f32x4.add(v128.load(g, 96), v128.load(g, 112)))
      s = widenAdd(s, f32x4.add(t0, t1))
    }
    let sum = lanes64(s)
    for (let i = len32; i < len; i++) sum += <f64>load<f32>(q + (<usize>i << 2))
    if (sum - sum != 0) {
      anyBad = true
      dirtyBlockMoments(q, len)
      continue
    }
    const mean = sum / <f64>len
    const m32 = <f32>mean
    const mv = f32x4.splat(m32)
    let a1 = f64x2.splat(0)
    let a2 = f64x2.splat(0)
    let a3 = f64x2.splat(0)
    let a4 = f64x2.splat(0)
    for (let i = 0; i < len32; i += 32) {
      let s1 = f32x4.splat(0)
      let s2 = f32x4.splat(0)
      let s3 = f32x4.splat(0)
      let s4 = f32x4.splat(0)
      const g = q + (<usize>i << 2)
      for (let j = 0; j < 128; j += 16) {
        const d = f32x4.sub(v128.load(g + j), mv)
        const e = f32x4.mul(d, d)
        s1 = f32x4.add(s1, d)
        s2 = f32x4.add(s2, e)
        s3 = f32x4.add(s3, f32x4.mul(e, d))
        s4 = f32x4.add(s4, f32x4.mul(e, e))
      }
      a1 = widenAdd(a1, s1)
      a2 = widenAdd(a2, s2)
      a3 = widenAdd(a3, s3)
      a4 = widenAdd(a4, s4)
    }
    let S1 = lanes64(a1)
    let S2 = lanes64(a2)
    let S3 = lanes64(a3)
    let S4 = lanes64(a4)
    const m = <f64>m32
    for (let i = len32; i < len; i++) {
      const d = <f64>load<f32>(q + (<usize>i << 2)) - m
      const d2 = d * d
      S1 += d
      S2 += d2
      S3 += d2 * d
      S4 += d2 * d2
    }
    const nn = <f64>len
    // d⁴ near the float32 limits (|d| above ~1e9 or all |d| below ~1e-9): exact path.
    if (S4 - S4 != 0 || (S2 < 1e-17 * nn && S2 != 0)) {
      exactBlockMoments(q, len)
      continue
    }
    const dl = S1 / nn
    const dl2 = dl * dl
    const m2 = S2 - nn * dl2
    const m3 = S3 - 3 * dl * S2 + 2 * nn * dl2 * dl
    const m4 = S4 - 4 * dl * S3 + 6 * dl2 * S2 - 3 * nn * dl2 * dl2
    mergeMoments(nn, m + dl, max(m2, 0), m3, max(m4, 0))
  }
  return anyBad
}

// ---- top-k heap (root = worst kept entry: smallest |v|, then largest index) ---------------

@inline function heapAbs(i: i32): f32 {
  return abs<f32>(load<f32>(heapValPtr + (<usize>i << 2)))
}
@inline function heapIdx(i: i32): f64 {
  return load<f64>(heapIdxPtr + (<usize>i << 3))
}
/** True when entry i ranks below entry j. */
@inline function worse(i: i32, j: i32): bool {
  const ai = heapAbs(i)
  const aj = heapAbs(j)
  return ai < aj || (ai == aj && heapIdx(i) > heapIdx(j))
}
function heapSwap(i: i32, j: i32): void {
  const pi = heapValPtr + (<usize>i << 2)
  const pj = heapValPtr + (<usize>j << 2)
  const v = load<f32>(pi)
  store<f32>(pi, load<f32>(pj))
  store<f32>(pj, v)
  const qi = heapIdxPtr + (<usize>i << 3)
  const qj = heapIdxPtr + (<usize>j << 3)
  const d = load<f64>(qi)
  store<f64>(qi, load<f64>(qj))
  store<f64>(qj, d)
}

/** Offers a finite value; called only when |x| > threshold. */
function topOffer(x: f32, idx: f64): void {
  if (heapSize < topK) {
    let i = heapSize++
    store<f32>(heapValPtr + (<usize>i << 2), x)
    store<f64>(heapIdxPtr + (<usize>i << 3), idx)
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!worse(i, parent)) break
      heapSwap(i, parent)
      i = parent
    }
    if (heapSize == topK) threshold = heapAbs(0)
    return
  }
  // Elements arrive in increasing index order, so a tie in |x| never beats the root.
  store<f32>(heapValPtr, x)
  store<f64>(heapIdxPtr, idx)
  let i = 0
  while (true) {
    const l = 2 * i + 1
    if (l >= heapSize) break
    let c = l
    if (l + 1 < heapSize && worse(l + 1, l)) c = l + 1
    if (!worse(c, i)) break
    heapSwap(c, i)
    i = c
  }
  threshold = heapAbs(0)
}

// ---- pass 1 ------------------------------------------------------------------------------

/**
 * Folds the float32 column accumulators into the float64 band sums. With at most FOLD_ROWS
 * non-negative terms each, their relative error stays below ~2e-6 (a heatmap is a picture),
 * and the row loop saves the widening of every value to float64.
 */
function foldColumns(): void {
  const cols = nCols
  const c4 = cols & ~3
  for (let c = 0; c < c4; c += 4) {
    const ap = colAccPtr + (<usize>c << 2)
    const a = v128.load(ap)
    const sp = colSumPtr + (<usize>c << 3)
    v128.store(sp, f64x2.add(v128.load(sp), f64x2.promote_low_f32x4(a)))
    v128.store(sp, f64x2.add(v128.load(sp, 16), f64x2.promote_low_f32x4(v128.shuffle<f32>(a, a, 2, 3, 0, 1))), 16)
    v128.store(ap, f32x4.splat(0))
  }
  for (let c = c4; c < cols; c++) {
    const ap = colAccPtr + (<usize>c << 2)
    const sp = colSumPtr + (<usize>c << 3)
    store<f64>(sp, load<f64>(sp) + <f64>load<f32>(ap))
    store<f32>(ap, 0)
  }
  accRows = 0
}

/** Adds the current band's column sums into its heatmap cells and clears them. */
function flushBand(): void {
  if (band < 0) return
  if (accRows > 0) foldColumns()
  const base = cellSumPtr + (<usize>(band * hCols) << 3)
  for (let c = 0; c < nCols; c++) {
    const sp = colSumPtr + (<usize>c << 3)
    const s = load<f64>(sp)
    if (s != 0) {
      const cp = base + (<usize>load<i32>(colCellPtr + (<usize>c << 2)) << 3)
      store<f64>(cp, load<f64>(cp) + s)
      store<f64>(sp, 0)
    }
  }
}

/** Scalar path for one element (row tails and rows holding NaN/Inf). Returns |x| or 0. */
@inline function scalarElement(x: f32, c: i32, idx: f64): f32 {
  if (x != x || abs<f32>(x) == Infinity) {
    if (x != x) gNan += 1
    else gInf += 1
    const cp = cellBadPtr + (<usize>(band * hCols + load<i32>(colCellPtr + (<usize>c << 2))) << 3)
    store<f64>(cp, load<f64>(cp) + 1)
    return 0
  }
  const a = abs<f32>(x)
  if (x < gMin) gMin = x
  if (x > gMax) gMax = x
  const mp = colMaxPtr + (<usize>c << 2)
  if (a > load<f32>(mp)) store<f32>(mp, a)
  const ap = colAccPtr + (<usize>c << 2)
  store<f32>(ap, load<f32>(ap) + a)
  if (x == 0) gZeros += 1
  const bits = reinterpret<u32>(x)
  gLowBits |= bits & LOW_MASK
  const hp = finePtr + (<usize>(bits >> FINE_SHIFT) << 2)
  store<u32>(hp, load<u32>(hp) + 1)
  if (a > threshold) topOffer(x, idx)
  return a
}

@inline function rowHasNonFinite(p: usize, cols: i32): bool {
  const expMask = i32x4.splat(0x7f800000)
  let bad = i32x4.splat(0)
  const c4 = cols & ~3
  for (let c = 0; c < c4; c += 4) {
    bad = v128.or(bad, i32x4.eq(v128.and(v128.load(p + (<usize>c << 2)), expMask), expMask))
  }
  if (v128.any_true(bad)) return true
  for (let c = c4; c < cols; c++) {
    const x = load<f32>(p + (<usize>c << 2))
    if (x - x != 0) return true
  }
  return false
}

/** Counts one value in the fine bin at byte offset `off` (= key · 4) of the fine table. */
@inline function bumpFine(off: u32): void {
  const hp = finePtr + <usize>off
  store<u32>(hp, load<u32>(hp) + 1)
}

/**
 * Pass 1 over `chunkRows` rows (row-major f32 at p) starting at tensor row `rowStart`.
 * Writes each row's absmax to the rowMax region.
 */
export function addRows(p: usize, chunkRows: i32, rowStart: f64): void {
  fineDirty = true
  const cols = nCols
  const n = chunkRows * cols
  const dirty = chunkMoments(p, n)
  const c4 = cols & ~3
  const signMask = i32x4.splat(0x7fffffff)
  const fineMask = i32x4.splat(<i32>(((1 << (32 - FINE_SHIFT)) - 1) << 2))
  const zero = f32x4.splat(0)
  let vmin = f32x4.splat(gMin)
  let vmax = f32x4.splat(gMax)
  let zeros = i32x4.splat(0)
  let low = i32x4.splat(0)
  let thr = f32x4.splat(threshold)
  for (let r = 0; r < chunkRows; r++) {
    const R = rowStart + <f64>r
    const b = <i32>Math.floor((R * <f64>hRows) / nRows)
    if (b != band) {
      flushBand()
      band = b
    }
    const rp = p + (<usize>(r * cols) << 2)
    const flatBase = R * <f64>cols
    let rowMax: f32 = 0
    if (!dirty || !rowHasNonFinite(rp, cols)) {
      let rm = f32x4.splat(0)
      for (let c = 0; c < c4; c += 4) {
        const x = v128.load(rp + (<usize>c << 2))
        const a = v128.and(x, signMask)
        vmin = f32x4.pmin(vmin, x)
        vmax = f32x4.pmax(vmax, x)
        rm = f32x4.pmax(rm, a)
        const mp = colMaxPtr + (<usize>c << 2)
        v128.store(mp, f32x4.pmax(v128.load(mp), a))
        const ap = colAccPtr + (<usize>c << 2)
        v128.store(ap, f32x4.add(v128.load(ap), a))
        zeros = i32x4.sub(zeros, f32x4.eq(x, zero))
        low = v128.or(low, x)
        // Byte offsets of the fine bins: (bits >> 13) << 2, for all four lanes at once.
        const offs = v128.and(i32x4.shr_u(x, FINE_SHIFT - 2), fineMask)
        bumpFine(i32x4.extract_lane(offs, 0))
        bumpFine(i32x4.extract_lane(offs, 1))
        bumpFine(i32x4.extract_lane(offs, 2))
        bumpFine(i32x4.extract_lane(offs, 3))
        if (v128.any_true(f32x4.gt(a, thr))) {
          for (let j = 0; j < 4; j++) {
            const xj = load<f32>(rp + (<usize>(c + j) << 2))
            if (abs<f32>(xj) > threshold) topOffer(xj, flatBase + <f64>(c + j))
          }
          thr = f32x4.splat(threshold)
        }
      }
      rowMax = max(max(f32x4.extract_lane(rm, 0), f32x4.extract_lane(rm, 1)), max(f32x4.extract_lane(rm, 2), f32x4.extract_lane(rm, 3)))
      for (let c = c4; c < cols; c++) {
        rowMax = max(rowMax, scalarElement(load<f32>(rp + (<usize>c << 2)), c, flatBase + <f64>c))
      }
    } else {
      for (let c = 0; c < cols; c++) {
        rowMax = max(rowMax, scalarElement(load<f32>(rp + (<usize>c << 2)), c, flatBase + <f64>c))
      }
    }
    thr = f32x4.splat(threshold)
    store<f32>(rowMaxPtr + (<usize>r << 2), rowMax)
    if (++accRows == FOLD_ROWS) foldColumns()
  }
  gMin = min(gMin, min(min(f32x4.extract_lane(vmin, 0), f32x4.extract_lane(vmin, 1)), min(f32x4.extract_lane(vmin, 2), f32x4.extract_lane(vmin, 3))))
  gMax = max(gMax, max(max(f32x4.extract_lane(vmax, 0), f32x4.extract_lane(vmax, 1)), max(f32x4.extract_lane(vmax, 2), f32x4.extract_lane(vmax, 3))))
  gZeros += <f64>(i32x4.extract_lane(zeros, 0) + i32x4.extract_lane(zeros, 1) + i32x4.extract_lane(zeros, 2) + i32x4.extract_lane(zeros, 3))
  gLowBits |= <u32>(i32x4.extract_lane(low, 0) | i32x4.extract_lane(low, 1) | i32x4.extract_lane(low, 2) | i32x4.extract_lane(low, 3)) & LOW_MASK
}

/** Folds the last heatmap band; call once after the last addRows. */
export function finishRows(): void {
  flushBand()
  band = -1
  if (raw16Kind != 0) finishColumns16()
}

// ---- histogram ---------------------------------------------------------------------------

@inline function binOf(x: f64, lo: f64, scale: f64, lastBin: i32): i32 {
  const b = <i32>Math.floor((x - lo) * scale)
  return b < 0 ? 0 : b > lastBin ? lastBin : b
}

/**
 * Exact histogram from the fine bins (valid when lowBits() == 0), zeroing them on the way.
 * Only keys between ±0 and the extremes can be set: [0, key(max)] for positive values and
 * [key(-0), key(min)] for negative ones; empty stretches are skipped 8 keys at a time.
 * out: f64[bins], zeroed.
 */
export function rebinFine(lo: f64, scale: f64, bins: i32, out: usize): void {
  const last = bins - 1
  if (raw16Kind != 0) {
    rebinCounts(lo, scale, last, out)
    return
  }
  const negBase: u32 = 1 << (31 - FINE_SHIFT)
  // ±0 compare equal, so either zero may be the extreme while the other one was seen too.
  if (gMax >= 0) rebinRange(0, gMax > 0 ? (reinterpret<u32>(gMax) >> FINE_SHIFT) + 1 : 1, lo, scale, last, out)
  if (gMin <= 0) rebinRange(negBase, gMin < 0 ? (reinterpret<u32>(gMin) >> FINE_SHIFT) + 1 : negBase + 1, lo, scale, last, out)
  fineDirty = false
}

function rebinRange(k0: u32, k1: u32, lo: f64, scale: f64, last: i32, out: usize): void {
  let k = k0
  for (; k < k1 && (k & 7) != 0; k++) rebinKey(k, lo, scale, last, out)
  for (; k + 8 <= k1; k += 8) {
    const p = finePtr + (<usize>k << 2)
    if (!v128.any_true(v128.or(v128.load(p), v128.load(p, 16)))) continue
    for (let j: u32 = 0; j < 8; j++) rebinKey(k + j, lo, scale, last, out)
  }
  for (; k < k1; k++) rebinKey(k, lo, scale, last, out)
}

@inline function rebinKey(k: u32, lo: f64, scale: f64, last: i32, out: usize): void {
  const p = finePtr + (<usize>k << 2)
  const cnt = load<u32>(p)
  if (cnt == 0) return
  store<u32>(p, 0)
  const x = <f64>reinterpret<f32>(k << FINE_SHIFT)
  const op = out + (<usize>binOf(x, lo, scale, last) << 3)
  store<f64>(op, load<f64>(op) + <f64>cnt)
}

/** Second-pass histogram over n floats at p (finite values only). out: f64[bins]. */
export function histogramRows(p: usize, n: i32, lo: f64, scale: f64, bins: i32, out: usize): void {
  const last = bins - 1
  for (let i = 0; i < n; i++) {
    const x = <f64>load<f32>(p + (<usize>i << 2))
    if (x - x != 0) continue
    const op = out + (<usize>binOf(x, lo, scale, last) << 3)
    store<f64>(op, load<f64>(op) + 1)
  }
}

// ---- decoding stored bytes ---------------------------------------------------------------
// The worker reads F16/BF16/F32 bytes straight into this memory and decodes them here, which
// saves the JS decode loop, a fresh Float32Array per chunk and one copy.

/** IEEE binary16 → binary32 on four u32 lanes, exact for every input (F. Giesen's method). */
@inline function halfToFloat4(h: v128): v128 {
  const shifted = i32x4.shl(v128.and(h, i32x4.splat(0x7fff)), 13)
  const exp = v128.and(shifted, i32x4.splat(0x0f800000))
  let o = i32x4.add(shifted, i32x4.splat((127 - 15) << 23))
  // Inf/NaN: move the exponent the rest of the way to 255.
  o = i32x4.add(o, v128.and(i32x4.eq(exp, i32x4.splat(0x0f800000)), i32x4.splat((128 - 16) << 23)))
  // Zero/subnormal: renormalise through an exact float subtraction.
  const sub = f32x4.sub(i32x4.add(o, i32x4.splat(1 << 23)), f32x4.splat(reinterpret<f32>(113 << 23)))
  o = v128.bitselect(sub, o, i32x4.eq(exp, i32x4.splat(0)))
  return v128.or(o, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16))
}

@inline function halfToFloat(h: u32): f32 {
  return f32x4.extract_lane(halfToFloat4(i32x4.splat(h)), 0)
}

/** Decodes n stored values at src (kind 0 = F32, 1 = F16, 2 = BF16) to f32 at dst. */
export function decodeRaw(kind: i32, src: usize, dst: usize, n: i32): void {
  if (kind == 0) {
    memory.copy(dst, src, <usize>n << 2)
    return
  }
  const n8 = n & ~7
  if (kind == 1) {
    for (let i = 0; i < n8; i += 8) {
      const h = v128.load(src + (<usize>i << 1))
      v128.store(dst + (<usize>i << 2), halfToFloat4(i32x4.extend_low_i16x8_u(h)))
      v128.store(dst + (<usize>i << 2), halfToFloat4(i32x4.extend_high_i16x8_u(h)), 16)
    }
    for (let i = n8; i < n; i++) store<f32>(dst + (<usize>i << 2), halfToFloat(<u32>load<u16>(src + (<usize>i << 1))))
  } else {
    for (let i = 0; i < n8; i += 8) {
      const h = v128.load(src + (<usize>i << 1))
      v128.store(dst + (<usize>i << 2), i32x4.shl(i32x4.extend_low_i16x8_u(h), 16))
      v128.store(dst + (<usize>i << 2), i32x4.shl(i32x4.extend_high_i16x8_u(h), 16), 16)
    }
    for (let i = n8; i < n; i++) store<u32>(dst + (<usize>i << 2), <u32>load<u16>(src + (<usize>i << 1)) << 16)
  }
}

// ---- stored 16-bit floats: pattern counts + row pass ---------------------------------------

/** Switches this tensor to the raw 16-bit path (kind 1 = F16, 2 = BF16); call after init. */
export function initRaw16(kind: i32, counts: usize, colMax16: usize, distinct: usize): void {
  raw16Kind = kind
  countPtr = counts
  colMax16Ptr = colMax16
  distinctPtr = distinct
  distinctCount = -1
  memory.fill(counts, 0, <usize>65536 << 2)
  memory.fill(colMax16, 0, <usize>nCols << 1)
  thrBits = thresholdBits(kind)
}

/** Magnitude bits of the first non-finite pattern: Inf; above it NaN. */
@inline function infBitsOf(kind: i32): i32 {
  return kind == 1 ? 0x7c00 : 0x7f80
}

/** A 16-bit pattern's value. */
@inline function value16(kind: i32, h: u32): f32 {
  return kind == 1 ? halfToFloat(h) : reinterpret<f32>(h << 16)
}

/**
 * `threshold` as magnitude bits. Every kept top-k value is a value of this tensor, so the
 * threshold is exactly representable and `a > thrBits` ⇔ |x| > threshold.
 */
function thresholdBits(kind: i32): i32 {
  const t = threshold
  if (t < 0) return -1
  if (t == Infinity) return 0x7fff
  const bits = reinterpret<u32>(t)
  if (kind == 2) return <i32>(bits >> 16)
  if (t < reinterpret<f32>(113 << 23)) return <i32>(t * 16777216.0) // subnormal half: m · 2^-24
  return <i32>(bits >> 13) - (112 << 10)
}

/** Non-negative finite halves (magnitude bits in u32 lanes) → f32, exact. */
@inline function absHalfToFloat4(a: v128): v128 {
  const shifted = i32x4.shl(a, 13)
  const o = i32x4.add(shifted, i32x4.splat((127 - 15) << 23))
  const sub = f32x4.sub(i32x4.add(o, i32x4.splat(1 << 23)), f32x4.splat(reinterpret<f32>(113 << 23)))
  return v128.bitselect(sub, o, i32x4.eq(v128.and(shifted, i32x4.splat(0x0f800000)), i32x4.splat(0)))
}

@inline function bumpCount(h: u32): void {
  const p = countPtr + (<usize>h << 2)
  store<u32>(p, load<u32>(p) + 1)
}

@inline function maxLane16(v: v128): i32 {
  let m = i16x8.max_u(v, v128.shuffle<u16>(v, v, 4, 5, 6, 7, 0, 1, 2, 3))
  m = i16x8.max_u(m, v128.shuffle<u16>(m, m, 2, 3, 0, 1, 2, 3, 0, 1))
  return max<i32>(i16x8.extract_lane_u(m, 0), i16x8.extract_lane_u(m, 1))
}

/** One value of a row tail: counted, then as in the vector loop; returns its magnitude bits (0 if not finite). */
@inline function raw16Element(kind: i32, h: u32, c: i32, idx: f64): i32 {
  bumpCount(h)
  const a = <i32>(h & 0x7fff)
  if (a >= infBitsOf(kind)) {
    const cp = cellBadPtr + (<usize>(band * hCols + load<i32>(colCellPtr + (<usize>c << 2))) << 3)
    store<f64>(cp, load<f64>(cp) + 1)
    return 0
  }
  const mp = colMax16Ptr + (<usize>c << 1)
  if (a > <i32>load<u16>(mp)) store<u16>(mp, <u16>a)
  const ap = colAccPtr + (<usize>c << 2)
  store<f32>(ap, load<f32>(ap) + value16(kind, <u32>a))
  if (a > thrBits) {
    topOffer(value16(kind, h), idx)
    thrBits = thresholdBits(kind)
  }
  return a
}

/**
 * One row of stored patterns at rp; returns its largest finite magnitude bits. Each group of
 * 8 values is loaded once: its patterns are counted, NaN/Inf lanes are zeroed (magnitude 0 adds
 * nothing to absmax or the heatmap sums and is re-checked before a top-k offer), and the rare
 * row holding NaN/Inf gets its heatmap cells' non-finite counts in a scalar pass at the end.
 */
@inline function raw16Row(kind: i32, rp: usize, cols: i32, flatBase: f64): i32 {
  const c8 = cols & ~7
  const mask = i16x8.splat(0x7fff)
  const bad = infBitsOf(kind)
  const badV = i16x8.splat(<i16>bad)
  let thr = i16x8.splat(<i16>thrBits)
  let m = i16x8.splat(0)
  let nonFinite = i16x8.splat(0)
  for (let c = 0; c < c8; c += 8) {
    const hv = v128.load(rp + (<usize>c << 1))
    const w0 = <u64>i64x2.extract_lane(hv, 0)
    const w1 = <u64>i64x2.extract_lane(hv, 1)
    bumpCount(<u32>w0 & 0xffff)
    bumpCount(<u32>(w0 >> 16) & 0xffff)
    bumpCount(<u32>(w0 >> 32) & 0xffff)
    bumpCount(<u32>(w0 >> 48))
    bumpCount(<u32>w1 & 0xffff)
    bumpCount(<u32>(w1 >> 16) & 0xffff)
    bumpCount(<u32>(w1 >> 32) & 0xffff)
    bumpCount(<u32>(w1 >> 48))
    const a0 = v128.and(hv, mask)
    const finite = i16x8.lt_u(a0, badV)
    nonFinite = v128.or(nonFinite, v128.not(finite))
    const a = v128.and(a0, finite)
    m = i16x8.max_u(m, a)
    const mp = colMax16Ptr + (<usize>c << 1)
    v128.store(mp, i16x8.max_u(v128.load(mp), a))
    let lo: v128
    let hi: v128
    if (kind == 1) {
      lo = absHalfToFloat4(i32x4.extend_low_i16x8_u(a))
      hi = absHalfToFloat4(i32x4.extend_high_i16x8_u(a))
    } else {
      lo = i32x4.shl(i32x4.extend_low_i16x8_u(a), 16)
      hi = i32x4.shl(i32x4.extend_high_i16x8_u(a), 16)
    }
    const ap = colAccPtr + (<usize>c << 2)
    v128.store(ap, f32x4.add(v128.load(ap), lo))
    v128.store(ap, f32x4.add(v128.load(ap, 16), hi), 16)
    if (v128.any_true(i16x8.gt_s(a, thr))) {
      for (let j = 0; j < 8; j++) {
        const h = <u32>load<u16>(rp + (<usize>(c + j) << 1))
        const aj = <i32>(h & 0x7fff)
        if (aj > thrBits && aj < bad) {
          topOffer(value16(kind, h), flatBase + <f64>(c + j))
          thrBits = thresholdBits(kind)
        }
      }
      thr = i16x8.splat(<i16>thrBits)
    }
  }
  if (v128.any_true(nonFinite)) {
    for (let c = 0; c < c8; c++) {
      if (<i32>(load<u16>(rp + (<usize>c << 1)) & 0x7fff) >= bad) {
        const cp = cellBadPtr + (<usize>(band * hCols + load<i32>(colCellPtr + (<usize>c << 2))) << 3)
        store<f64>(cp, load<f64>(cp) + 1)
      }
    }
  }
  let rowMax = maxLane16(m)
  for (let c = c8; c < cols; c++) rowMax = max<i32>(rowMax, raw16Element(kind, <u32>load<u16>(rp + (<usize>c << 1)), c, flatBase + <f64>c))
  return rowMax
}

@inline function raw16Rows(kind: i32, src: usize, chunkRows: i32, rowStart: f64): void {
  const cols = nCols
  for (let r = 0; r < chunkRows; r++) {
    const R = rowStart + <f64>r
    const b = <i32>Math.floor((R * <f64>hRows) / nRows)
    if (b != band) {
      flushBand()
      band = b
    }
    const rowMax = raw16Row(kind, src + (<usize>(r * cols) << 1), cols, R * <f64>cols)
    store<f32>(rowMaxPtr + (<usize>r << 2), value16(kind, <u32>rowMax))
    if (++accRows == FOLD_ROWS) foldColumns()
  }
}

/**
 * Pass 1 over `chunkRows` rows of stored F16/BF16 patterns at src (after initRaw16), starting
 * at tensor row `rowStart`. Writes each row's absmax to the rowMax region. Never needs pass 2.
 */
export function addRaw16(src: usize, chunkRows: i32, rowStart: f64): void {
  if (raw16Kind == 1) raw16Rows(1, src, chunkRows, rowStart)
  else raw16Rows(2, src, chunkRows, rowStart)
}

/** Column absmax from the magnitude bits, into the f32 colMax region. */
function finishColumns16(): void {
  for (let c = 0; c < nCols; c++) {
    store<f32>(colMaxPtr + (<usize>c << 2), value16(raw16Kind, <u32>load<u16>(colMax16Ptr + (<usize>c << 1))))
  }
}

/**
 * Everything the pattern counts determine: extremes, NaN/Inf/zero counts and the moments,
 * two-pass in float64 over the distinct finite values (each count · value is exact). The
 * distinct values and their counts are listed at distinctPtr for the second pass and the
 * histogram, so neither scans the 65536 patterns again.
 */
function scalarsFromCounts(): void {
  const kind = raw16Kind
  const bad = infBitsOf(kind)
  let n: f64 = 0
  let sum: f64 = 0
  let nan: f64 = 0
  let inf: f64 = 0
  let lo: f32 = Infinity
  let hi: f32 = -Infinity
  let m: i32 = 0
  for (let k: u32 = 0; k < 65536; k += 4) {
    if (!v128.any_true(v128.load(countPtr + (<usize>k << 2)))) continue
    for (let h = k; h < k + 4; h++) {
      const cnt = load<u32>(countPtr + (<usize>h << 2))
      if (cnt == 0) continue
      const a = <i32>(h & 0x7fff)
      if (a >= bad) {
        if (a == bad) inf += <f64>cnt
        else nan += <f64>cnt
        continue
      }
      const x = value16(kind, h)
      if (x < lo) lo = x
      if (x > hi) hi = x
      n += <f64>cnt
      sum += <f64>cnt * <f64>x
      const dp = distinctPtr + (<usize>m << 3)
      store<f32>(dp, x)
      store<u32>(dp, cnt, 4)
      m++
    }
  }
  distinctCount = m
  gMin = lo
  gMax = hi
  gNan = nan
  gInf = inf
  gZeros = <f64>load<u32>(countPtr) + <f64>load<u32>(countPtr + (0x8000 << 2))
  gLowBits = 0
  mN = n
  mMean = 0
  mM2 = 0
  mM3 = 0
  mM4 = 0
  if (n == 0) return
  const mean = sum / n
  let m2: f64 = 0
  let m3: f64 = 0
  let m4: f64 = 0
  for (let i = 0; i < m; i++) {
    const dp = distinctPtr + (<usize>i << 3)
    const cnt = <f64>load<u32>(dp, 4)
    const d = <f64>load<f32>(dp) - mean
    const d2 = d * d
    const cd2 = cnt * d2
    m2 += cd2
    m3 += cd2 * d
    m4 += cd2 * d2
  }
  mMean = mean
  mM2 = m2
  mM3 = m3
  mM4 = m4
}

/** Histogram of the finite values from the distinct-value list (same binning as rebinKey). */
function rebinCounts(lo: f64, scale: f64, last: i32, out: usize): void {
  if (distinctCount < 0) scalarsFromCounts()
  for (let i = 0; i < distinctCount; i++) {
    const dp = distinctPtr + (<usize>i << 3)
    const op = out + (<usize>binOf(<f64>load<f32>(dp), lo, scale, last) << 3)
    store<f64>(op, load<f64>(op) + <f64>load<u32>(dp, 4))
  }
}

/** Elements in part k of n items split into m parts by floor(i·m/n) (as partSize in stats-accumulator.ts). */
@inline function partSize(k: i32, m: i32, n: f64): f64 {
  return Math.ceil((<f64>(k + 1) * n) / <f64>m) - Math.ceil((<f64>k * n) / <f64>m)
}

/**
 * Heatmap cell means into f64[hr·hc] at out, with exactly the float64 operations of
 * finalizeStats (which would otherwise run this loop in JS, slowly until the JIT warms up).
 */
export function heatmapMeans(out: usize): void {
  const cols = <f64>nCols
  for (let b = 0; b < hRows; b++) {
    const bandRows = partSize(b, hRows, nRows)
    for (let c = 0; c < hCols; c++) {
      const k = <usize>(b * hCols + c) << 3
      const n = bandRows * partSize(c, hCols, cols) - load<f64>(cellBadPtr + k)
      store<f64>(out + k, n > 0 ? load<f64>(cellSumPtr + k) / n : 0)
    }
  }
}

// ---- results -----------------------------------------------------------------------------

/** Writes the scalar results as f64[12] at out. */
export function readScalars(out: usize): void {
  if (raw16Kind != 0) scalarsFromCounts()
  store<f64>(out, <f64>gMin)
  store<f64>(out, <f64>gMax, 8)
  store<f64>(out, gNan, 16)
  store<f64>(out, gInf, 24)
  store<f64>(out, gZeros, 32)
  store<f64>(out, <f64>gLowBits, 40)
  store<f64>(out, mN, 48)
  store<f64>(out, mMean, 56)
  store<f64>(out, mM2, 64)
  store<f64>(out, mM3, 72)
  store<f64>(out, mM4, 80)
  store<f64>(out, <f64>heapSize, 88)
}
