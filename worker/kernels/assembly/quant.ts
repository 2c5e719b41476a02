// Quantizer hot loops (AssemblyScript → WASM SIMD). Each function mirrors one loop of the plain
// TS quantizers in worker/quant/ bit for bit; worker/quant/wasm-kernels.ts owns the memory
// layout and passes every region as a byte pointer. No managed objects: the stub runtime never
// allocates.
//
// Exactness notes (why the arithmetic is written the way it is):
// - float32 + − × ÷ of float32 inputs equal the TS code's double operation followed by
//   Math.fround (double rounding is harmless for these four when double has ≥ 2·24 + 2 bits), so
//   f32x4 arithmetic reproduces `f(a op b)` exactly. No fused multiply-add is ever used.
// - fp16 rounding goes double → float32 → fp16 (ties to even) like formats/dtypes.ts f32ToF16.
// - Symmetric RTN rounds half away from zero in double in TS; x + 0.5 in float32 would round
//   0.49999997 up, so here it is trunc(x) + (|x − trunc(x)| ≥ 0.5 ? sign : 0), which is exact.

// ---- fp16 ------------------------------------------------------------------------------------

/** float32 → fp16 bits, round to nearest even (port of formats/dtypes.ts f32ToF16). */
@inline function f16Bits(value: f32): u32 {
  const x = reinterpret<u32>(value)
  const sign = (x >>> 16) & 0x8000
  const exp = <i32>((x >>> 23) & 0xff)
  let mant = x & 0x7fffff
  if (exp == 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0)
  let e = exp - 127 + 15
  if (e >= 31) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = <u32>(14 - e)
    const half = <u32>1 << (shift - 1)
    let r = mant >>> shift
    const rem = mant & ((<u32>1 << shift) - 1)
    if (rem > half || (rem == half && (r & 1) != 0)) r++
    return sign | r
  }
  // Round to nearest even on exponent|mantissa at once: a carry out of the mantissa bumps the
  // exponent, and one into exponent 31 leaves mantissa 0, which is Inf — as the TS code returns.
  const y = (<u32>e << 23) | mant
  return sign | ((y + 0x0fff + ((y >>> 13) & 1)) >>> 13)
}

/** fp16 bits → float32 (exact): (h & 0x7fff) << 13 read as float32 × 2^112 is exact for normal and subnormal halves. */
@inline function f16Value(h: u32): f32 {
  const em = h & 0x7fff
  const mag = em >= 0x7c00 ? reinterpret<f32>((em << 13) | 0x7f800000) : reinterpret<f32>(em << 13) * reinterpret<f32>(0x77800000)
  return h & 0x8000 ? -mag : mag
}

// ---- RTN quantize (worker/quant/rtn.ts, clip 'none') -------------------------------------------

/** Status of rtnQuantize: 0 ok, 1 a NaN/Inf weight, 2 a scale or minimum beyond fp16. */
const RTN_OK: i32 = 0
const RTN_NON_FINITE: i32 = 1
const RTN_F16_OVERFLOW: i32 = 2

/** Minimum / maximum of two non-NaN floats (either zero when both are zeros: fixed by firstZero). */
@inline function lowest(a: f32, b: f32): f32 {
  return b < a ? b : a
}
@inline function highest(a: f32, b: f32): f32 {
  return a < b ? b : a
}

/** Index of the first ±0 in [p, p + 4n) as float32 bits (JS's `w < lo` keeps the first zero seen). */
@inline function firstZero(p: usize, n: i32): f32 {
  for (let j = 0; j < n; j++) {
    const w = load<f32>(p + (<usize>j << 2))
    if (w == 0) return w
  }
  return 0
}

/**
 * Codes (one byte each) and fp16 scales (+ minimums) of `rows` rows of `cols` floats in groups
 * of `g` columns. sym = 0: s = f16(f32(max − min)/qmax), m = f16(min),
 * q = clamp(floor(f32(f32(w − m)/s) + 0.5), 0, qmax); sym = 1: s = f16(absmax/qmax) with
 * qmax = 2^(bits−1) − 1, code = clamp(round-half-away(f32(w/s)), ±qmax) + qmax.
 * scaleBits/minBits: u16 per group; scaleVals/minVals: f32 per group (minimum pointers unused
 * when sym). Returns an RTN_* status; on anything but RTN_OK the caller redoes the work in TS,
 * which raises the exact error.
 */
export function rtnQuantize(
  src: usize,
  rows: i32,
  cols: i32,
  g: i32,
  bits: i32,
  sym: i32,
  codes: usize,
  scaleBits: usize,
  scaleVals: usize,
  minBits: usize,
  minVals: usize,
): i32 {
  const perRow = cols / g
  const groups = rows * perRow
  const qmax: i32 = sym ? (1 << (bits - 1)) - 1 : (1 << bits) - 1
  const qmaxF = <f32>qmax
  const g4 = g & ~3
  const half = f32x4.splat(0.5)
  const one = f32x4.splat(1)
  const signMask = i32x4.splat(0x80000000)
  const hiV = f32x4.splat(qmaxF)
  const loV = f32x4.splat(sym ? -qmaxF : 0)
  // q + offset + 2^23: an exact integer whose low byte is the code (no float→int conversion).
  const offMagic = f32x4.splat((sym ? qmaxF : 0) + <f32>8388608)
  for (let gi = 0; gi < groups; gi++) {
    const p = src + (<usize>gi * <usize>g << 2)
    const c = codes + <usize>gi * <usize>g
    // Group min/max with pmin/pmax (one instruction each; no NaN semantics), and x − x, which
    // is +0 for finite x and NaN for ±Inf/NaN, OR-ed into `bad`.
    let vlo = f32x4.splat(Infinity)
    let vhi = f32x4.splat(-Infinity)
    let bad = i32x4.splat(0)
    for (let j = 0; j < g4; j += 4) {
      const x = v128.load(p + (<usize>j << 2))
      vlo = f32x4.pmin(vlo, x)
      vhi = f32x4.pmax(vhi, x)
      bad = v128.or(bad, f32x4.sub(x, x))
    }
    if (v128.any_true(bad)) return RTN_NON_FINITE
    vlo = f32x4.pmin(vlo, v128.shuffle<f32>(vlo, vlo, 2, 3, 0, 1))
    vhi = f32x4.pmax(vhi, v128.shuffle<f32>(vhi, vhi, 2, 3, 0, 1))
    vlo = f32x4.pmin(vlo, v128.shuffle<f32>(vlo, vlo, 1, 0, 3, 2))
    vhi = f32x4.pmax(vhi, v128.shuffle<f32>(vhi, vhi, 1, 0, 3, 2))
    let lo = f32x4.extract_lane(vlo, 0)
    let hi = f32x4.extract_lane(vhi, 0)
    for (let j = g4; j < g; j++) {
      const w = load<f32>(p + (<usize>j << 2))
      if (w - w != 0) return RTN_NON_FINITE
      if (w < lo) lo = w
      if (w > hi) hi = w
    }
    // The sign of a zero extreme is that of the first zero in the group, as in the TS scan.
    if (lo == 0) lo = firstZero(p, g)
    if (hi == 0) hi = firstZero(p, g)

    let s: f32
    let m: f32
    if (sym) {
      const amax = max(-lo, hi)
      const sb = f16Bits(<f32>(<f64>amax / <f64>qmax))
      s = f16Value(sb)
      if (s - s != 0) return RTN_F16_OVERFLOW
      store<u16>(scaleBits + (<usize>gi << 1), <u16>sb)
      store<f32>(scaleVals + (<usize>gi << 2), s)
    } else {
      const sb = f16Bits((hi - lo) / qmaxF)
      s = f16Value(sb)
      if (s - s != 0) return RTN_F16_OVERFLOW
      const mb = f16Bits(lo)
      m = f16Value(mb)
      if (m - m != 0) return RTN_F16_OVERFLOW
      store<u16>(scaleBits + (<usize>gi << 1), <u16>sb)
      store<f32>(scaleVals + (<usize>gi << 2), s)
      store<u16>(minBits + (<usize>gi << 1), <u16>mb)
      store<f32>(minVals + (<usize>gi << 2), m)
    }
  }
  // Pass 2: the codes. Fitting every group first keeps each group's scalar chain (reduce,
  // divide, fp16 rounding) off the critical path of the vector loops.
  for (let gi = 0; gi < groups; gi++) {
    const p = src + (<usize>gi * <usize>g << 2)
    const c = codes + <usize>gi * <usize>g
    const s = load<f32>(scaleVals + (<usize>gi << 2))
    const m: f32 = sym ? 0 : load<f32>(minVals + (<usize>gi << 2))
    if (s == 0) {
      // A constant group (or one below fp16's range): q = 0 (asymCode/symCode), stored q + offset.
      memory.fill(c, sym ? <u8>qmax : 0, <usize>g)
      continue
    }
    const sv = f32x4.splat(s)
    const mv = f32x4.splat(m)
    for (let j = 0; j < g4; j += 4) {
      const x = v128.load(p + (<usize>j << 2))
      let q: v128
      if (sym) {
        const y = f32x4.div(x, sv)
        const t = f32x4.trunc(y)
        const up = f32x4.ge(f32x4.abs(f32x4.sub(y, t)), half)
        const step = v128.or(one, v128.and(y, signMask))
        q = f32x4.add(t, v128.and(step, up))
      } else {
        q = f32x4.floor(f32x4.add(f32x4.div(f32x4.sub(x, mv), sv), half))
      }
      // No NaN reaches here ((w − m)/s and w/s are finite or ±Inf), so pmin/pmax clamp exactly.
      q = f32x4.add(f32x4.pmin(f32x4.pmax(q, loV), hiV), offMagic)
      const b = i8x16.shuffle(q, q, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12)
      store<u32>(c + <usize>j, i32x4.extract_lane(b, 0))
    }
    for (let j = g4; j < g; j++) {
      const w = load<f32>(p + (<usize>j << 2))
      let q: f32
      if (sym) {
        const y = w / s
        const t = trunc(y)
        q = abs(y - t) >= 0.5 ? t + copysign<f32>(1, y) : t
      } else {
        q = floor((w - m) / s + <f32>0.5)
      }
      q = min(max(q, sym ? -qmaxF : 0), qmaxF) + (sym ? qmaxF : 0)
      store<u8>(c + <usize>j, <u8>(<i32>q))
    }
  }
  return RTN_OK
}

// ---- fp16 decode -------------------------------------------------------------------------------

/**
 * n stored fp16 values → float32, exactly: (h & 0x7fff) << 13 read as a float and scaled by
 * 2^112 is exact for normal and subnormal halves; exponent 31 becomes Inf/NaN by bits.
 */
export function decodeF16(src: usize, n: i32, dst: usize): void {
  const scale = f32x4.splat(reinterpret<f32>(0x77800000)) // 2^112
  const magMask = i32x4.splat(0x7fff)
  const infBits = i32x4.splat(0x7c00)
  const expAll = i32x4.splat(0x7f800000)
  const n8 = n & ~7
  let i = 0
  for (; i < n8; i += 8) {
    const h = v128.load(src + (<usize>i << 1))
    for (let half = 0; half < 2; half++) {
      const v = half == 0 ? i32x4.extend_low_i16x8_u(h) : i32x4.extend_high_i16x8_u(h)
      const em = v128.and(v, magMask)
      const shifted = i32x4.shl(em, 13)
      let f = f32x4.mul(shifted, scale)
      f = v128.bitselect(v128.or(shifted, expAll), f, i32x4.ge_s(em, infBits))
      f = v128.or(f, i32x4.shl(v128.andnot(v, magMask), 16))
      v128.store(dst + (<usize>(i + half * 4) << 2), f)
    }
  }
  for (; i < n; i++) store<f32>(dst + (<usize>i << 2), f16Value(<u32>load<u16>(src + (<usize>i << 1))))
}

// ---- bit packing (worker/quant/packing.ts) ------------------------------------------------------

/** Packs n codes of `bits` bits, LSB first, into dst (ceil(n·bits/8) bytes). Codes must fit. */
export function packCodes(src: usize, n: i32, bits: i32, dst: usize): void {
  if (bits == 8) {
    memory.copy(dst, src, <usize>n)
    return
  }
  let i = 0
  let o = dst
  if (bits == 4) {
    // 16 codes → 8 bytes: low nibble from even codes, high from odd ones.
    const n16 = n & ~15
    for (; i < n16; i += 16) {
      const v = v128.load(src + <usize>i)
      const even = v128.and(v, i16x8.splat(0x00ff))
      const odd = i16x8.shr_u(v, 8)
      const packed = v128.or(even, i16x8.shl(odd, 4))
      const b = i8x16.narrow_i16x8_u(packed, packed)
      store<u64>(o, i64x2.extract_lane(b, 0))
      o += 8
    }
  }
  let acc: u32 = 0
  let filled: i32 = 0
  for (; i < n; i++) {
    acc |= <u32>load<u8>(src + <usize>i) << filled
    filled += bits
    while (filled >= 8) {
      store<u8>(o++, <u8>acc)
      acc >>>= 8
      filled -= 8
    }
  }
  if (filled > 0) store<u8>(o, <u8>acc)
}

/** `count` codes of a packed stream, the first at bit `bit` after byte `packed`, into dst. */
export function unpackCodes(packed: usize, bits: i32, bit: i32, count: i32, dst: usize): void {
  let byte = packed + <usize>(bit >>> 3)
  if (bits == 8) {
    memory.copy(dst, byte, <usize>count)
    return
  }
  let i = 0
  if (bits == 4 && (bit & 7) == 0) {
    const n16 = count & ~15
    const lowMask = i8x16.splat(0x0f)
    for (; i < n16; i += 16) {
      const b = v128.load64_zero(byte)
      const lo = v128.and(b, lowMask)
      const hi = i8x16.shr_u(b, 4)
      store<v128>(dst + <usize>i, i8x16.shuffle(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23))
      byte += 8
    }
  }
  const mask: u32 = (<u32>1 << bits) - 1
  const shift = <i32>(i == 0 ? bit & 7 : 0)
  let acc: u32 = <u32>load<u8>(byte++) >>> shift
  let filled = 8 - shift
  for (; i < count; i++) {
    while (filled < bits) {
      acc |= <u32>load<u8>(byte++) << filled
      filled += 8
    }
    store<u8>(dst + <usize>i, <u8>(acc & mask))
    acc >>>= bits
    filled -= bits
  }
}

// ---- dequantize ----------------------------------------------------------------------------------

/**
 * Rows of one-byte codes to float32, per group of g columns:
 * mode 0 (RTN asymmetric): out = f32(q·s) + m, m from `offsets` (f32 per group);
 * mode 1 (integer grid, RTN symmetric, GPTQ, AWQ): out = (q − z)·s [/ div_c], z from `offsets`
 * (f32 per group) or `zConst` when offsets is 0, div from `colDiv` (f32 per column) unless 0.
 */
export function dequantize(codes: usize, rows: i32, cols: i32, g: i32, mode: i32, scales: usize, offsets: usize, zConst: f32, colDiv: usize, out: usize): void {
  const perRow = cols / g
  const g4 = g & ~3
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < perRow; k++) {
      const gi = <usize>(r * perRow + k)
      const c = codes + <usize>(r * cols + k * g)
      const o = out + (<usize>(r * cols + k * g) << 2)
      const s = load<f32>(scales + (gi << 2))
      const off: f32 = offsets ? load<f32>(offsets + (gi << 2)) : zConst
      const sv = f32x4.splat(s)
      const ov = f32x4.splat(off)
      const d = colDiv + (<usize>(k * g) << 2)
      for (let j = 0; j < g4; j += 4) {
        const q = f32x4.convert_i32x4_u(i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(c + <usize>j))))
        let v: v128
        if (mode == 0) v = f32x4.add(f32x4.mul(q, sv), ov)
        else {
          v = f32x4.mul(f32x4.sub(q, ov), sv)
          if (colDiv) v = f32x4.div(v, v128.load(d + (<usize>j << 2)))
        }
        v128.store(o + (<usize>j << 2), v)
      }
      for (let j = g4; j < g; j++) {
        const q = <f32>load<u8>(c + <usize>j)
        let v: f32
        if (mode == 0) v = q * s + off
        else {
          v = (q - off) * s
          if (colDiv) v = v / load<f32>(d + (<usize>j << 2))
        }
        store<f32>(o + (<usize>j << 2), v)
      }
    }
  }
}

// ---- GPTQ column loop (worker/quant/gptq.ts, int-grid.ts rule 'gptq') ---------------------------

/** The scale that did not fit fp16 when gptqBlock returns 1 (for the caller's error message). */
export let badScale: f64 = 0

/**
 * Quantizes columns [i1, i2) of every row of W (f64, rows × n) in GPTQ order: fits a group's
 * grid at its first column (unless static), codes the column, stores err = (w − ŵ)/U_ii at
 * err[r·bs + i − i1] and spreads it over the block's later columns of the row.
 * perm: i32 per column or 0; scales: f32 values + u16 bits per (row, group); zeros: u8.
 * Returns 0, or 1 when a group's scale exceeds fp16 (badScale holds it).
 */
export function gptqBlock(
  W: usize,
  U: usize,
  err: usize,
  codes: usize,
  perm: usize,
  scaleVals: usize,
  scaleBits: usize,
  zeros: usize,
  rows: i32,
  n: i32,
  i1: i32,
  i2: i32,
  bs: i32,
  g: i32,
  bits: i32,
  sym: i32,
  staticGroups: i32,
): i32 {
  const groupsPerRow = n / g
  const maxq = <f64>((1 << bits) - 1)
  const mid = <f64>(1 << (bits - 1))
  for (let r = 0; r < rows; r++) {
    const row = W + (<usize>r * <usize>n << 3)
    const eRow = err + (<usize>r * <usize>bs << 3)
    for (let i = i1; i < i2; i++) {
      const c = perm ? load<i32>(perm + (<usize>i << 2)) : i
      const gi = <usize>(r * groupsPerRow + c / g)
      if (!staticGroups && i % g == 0) {
        let lo = Infinity
        let hi = -Infinity
        for (let k = 0; k < g; k++) {
          const w = load<f64>(row + (<usize>(i + k) << 3))
          lo = min(lo, w)
          hi = max(hi, w)
        }
        let xmin = min(lo, 0)
        let xmax = max(hi, 0)
        if (sym) {
          xmax = max(-xmin, xmax)
          xmin = -xmax
        }
        if (xmin == 0 && xmax == 0) {
          xmin = -1
          xmax = 1
        }
        const raw = (xmax - xmin) / maxq
        let sb = f16Bits(<f32>raw)
        let s = <f64>f16Value(sb)
        if (s == 0) {
          sb = 1
          s = 5.9604644775390625e-8
        }
        if (s - s != 0) {
          badScale = raw
          return 1
        }
        store<f32>(scaleVals + (gi << 2), <f32>s)
        store<u16>(scaleBits + (gi << 1), <u16>sb)
        const z = sym ? mid : min(maxq, max(0, nearest(-xmin / s)))
        store<u8>(zeros + gi, <u8>(<i32>z))
      }
      const s = <f64>load<f32>(scaleVals + (gi << 2))
      const z = <f64>load<u8>(zeros + gi)
      const w = load<f64>(row + (<usize>i << 3))
      let q = nearest(w / s) + z
      q = q < 0 ? 0 : q > maxq ? maxq : q
      store<u8>(codes + <usize>r * <usize>n + <usize>c, <u8>(<i32>q))
      const ui = U + (<usize>i * <usize>n << 3)
      const e = (w - s * (q - z)) / load<f64>(ui + (<usize>i << 3))
      store<f64>(eRow + (<usize>(i - i1) << 3), e)
      if (e == 0) continue
      const ev = f64x2.splat(e)
      let j = i + 1
      for (; j + 1 < i2; j += 2) {
        const a = row + (<usize>j << 3)
        v128.store(a, f64x2.sub(v128.load(a), f64x2.mul(ev, v128.load(ui + (<usize>j << 3)))))
      }
      if (j < i2) store<f64>(row + (<usize>j << 3), load<f64>(row + (<usize>j << 3)) - e * load<f64>(ui + (<usize>j << 3)))
    }
  }
  return 0
}

/** Columns of W per tile of the lazy update: the U slab (block × JC f64) stays in L2. */
const JC: i32 = 256

/**
 * The lazy batch update W[:, i2:] −= E·U[i1:i2, i2:], each element's terms subtracted in k
 * order and a zero error skipped (its product masked to +0), as the TS loop does.
 */
export function gptqLazy(W: usize, U: usize, err: usize, rows: i32, n: i32, i1: i32, i2: i32, bs: i32): void {
  const kb = i2 - i1
  const zero = f64x2.splat(0)
  for (let jc = i2; jc < n; jc += JC) {
    const jEnd = min(jc + JC, n)
    const j4 = jc + ((jEnd - jc) & ~3)
    let r = 0
    for (; r + 3 < rows; r += 4) {
      const w0 = W + (<usize>r * <usize>n << 3)
      const w1 = w0 + (<usize>n << 3)
      const w2 = w1 + (<usize>n << 3)
      const w3 = w2 + (<usize>n << 3)
      const e0 = err + (<usize>r * <usize>bs << 3)
      const e1 = e0 + (<usize>bs << 3)
      const e2 = e1 + (<usize>bs << 3)
      const e3 = e2 + (<usize>bs << 3)
      for (let j = jc; j < j4; j += 4) {
        const o = <usize>j << 3
        let a0 = v128.load(w0 + o)
        let b0 = v128.load(w0 + o, 16)
        let a1 = v128.load(w1 + o)
        let b1 = v128.load(w1 + o, 16)
        let a2 = v128.load(w2 + o)
        let b2 = v128.load(w2 + o, 16)
        let a3 = v128.load(w3 + o)
        let b3 = v128.load(w3 + o, 16)
        for (let k = 0; k < kb; k++) {
          const u = U + (<usize>(i1 + k) * <usize>n << 3) + o
          const ua = v128.load(u)
          const ub = v128.load(u, 16)
          const ko = <usize>k << 3
          let ev = f64x2.splat(load<f64>(e0 + ko))
          let m = f64x2.ne(ev, zero)
          a0 = f64x2.sub(a0, v128.and(f64x2.mul(ev, ua), m))
          b0 = f64x2.sub(b0, v128.and(f64x2.mul(ev, ub), m))
          ev = f64x2.splat(load<f64>(e1 + ko))
          m = f64x2.ne(ev, zero)
          a1 = f64x2.sub(a1, v128.and(f64x2.mul(ev, ua), m))
          b1 = f64x2.sub(b1, v128.and(f64x2.mul(ev, ub), m))
          ev = f64x2.splat(load<f64>(e2 + ko))
          m = f64x2.ne(ev, zero)
          a2 = f64x2.sub(a2, v128.and(f64x2.mul(ev, ua), m))
          b2 = f64x2.sub(b2, v128.and(f64x2.mul(ev, ub), m))
          ev = f64x2.splat(load<f64>(e3 + ko))
          m = f64x2.ne(ev, zero)
          a3 = f64x2.sub(a3, v128.and(f64x2.mul(ev, ua), m))
          b3 = f64x2.sub(b3, v128.and(f64x2.mul(ev, ub), m))
        }
        v128.store(w0 + o, a0)
        v128.store(w0 + o, b0, 16)
        v128.store(w1 + o, a1)
        v128.store(w1 + o, b1, 16)
        v128.store(w2 + o, a2)
        v128.store(w2 + o, b2, 16)
        v128.store(w3 + o, a3)
        v128.store(w3 + o, b3, 16)
      }
      for (let rr = r; rr < r + 4; rr++) lazyScalar(W, U, err, rr, n, i1, kb, bs, j4, jEnd)
    }
    for (; r < rows; r++) lazyScalar(W, U, err, r, n, i1, kb, bs, jc, jEnd)
  }
}

/** One row's columns [j0, j1) of the lazy update, exactly the TS loop. */
function lazyScalar(W: usize, U: usize, err: usize, r: i32, n: i32, i1: i32, kb: i32, bs: i32, j0: i32, j1: i32): void {
  if (j0 >= j1) return
  const row = W + (<usize>r * <usize>n << 3)
  for (let k = 0; k < kb; k++) {
    const e = load<f64>(err + (<usize>(r * bs + k) << 3))
    if (e == 0) continue
    const u = U + (<usize>(i1 + k) * <usize>n << 3)
    for (let j = j0; j < j1; j++) store<f64>(row + (<usize>j << 3), load<f64>(row + (<usize>j << 3)) - e * load<f64>(u + (<usize>j << 3)))
  }
}

// ---- GPTQ's inverse-Hessian factor (worker/quant/hessian-inverse.ts) --------------------------

/** The pivot that was not positive when choleskyPanel returns a column. */
export let badPivot: f64 = 0

/** Rows per block in choleskyPanel: independent dot products side by side (latency, not bandwidth). */
const CHOL_ROWS: i32 = 4

/**
 * Pass 1 of hessian-inverse.ts (A's upper triangle becomes V with H = V·Vᵀ) for the steps
 * j = j1 − 1 down to j0. The loops are reordered for cache reuse — the panel's own rows first,
 * then every row above the panel through all of the panel's steps while its row segment is in
 * cache — but each entry is the same sequence of operations as in TS: t = A[i,j], then
 * t −= A[i,k]·A[j,k] for k = j + 1 … n − 1 in ascending order, then t / d. Returns −1, or the
 * column whose pivot is not positive (badPivot holds the pivot).
 */
export function choleskyPanel(A: usize, n: i32, j0: i32, j1: i32): i32 {
  for (let j = j1 - 1; j >= j0; j--) {
    const rj = A + (<usize>j * <usize>n << 3)
    let s = load<f64>(rj + (<usize>j << 3))
    for (let k = j + 1; k < n; k++) {
      const a = load<f64>(rj + (<usize>k << 3))
      s -= a * a
    }
    if (!(s > 0)) {
      badPivot = s
      return j
    }
    const d = sqrt(s)
    store<f64>(rj + (<usize>j << 3), d)
    for (let i = j0; i < j; i++) dotRow(A, n, i, j, d)
  }
  let i = 0
  for (; i + CHOL_ROWS <= j0; i += CHOL_ROWS) {
    const r0 = A + (<usize>i * <usize>n << 3)
    const r1 = r0 + (<usize>n << 3)
    const r2 = r1 + (<usize>n << 3)
    const r3 = r2 + (<usize>n << 3)
    for (let j = j1 - 1; j >= j0; j--) {
      const rj = A + (<usize>j * <usize>n << 3)
      const oj = <usize>j << 3
      let t0 = load<f64>(r0 + oj)
      let t1 = load<f64>(r1 + oj)
      let t2 = load<f64>(r2 + oj)
      let t3 = load<f64>(r3 + oj)
      for (let k = j + 1; k < n; k++) {
        const o = <usize>k << 3
        const b = load<f64>(rj + o)
        t0 -= load<f64>(r0 + o) * b
        t1 -= load<f64>(r1 + o) * b
        t2 -= load<f64>(r2 + o) * b
        t3 -= load<f64>(r3 + o) * b
      }
      const d = load<f64>(rj + oj)
      store<f64>(r0 + oj, t0 / d)
      store<f64>(r1 + oj, t1 / d)
      store<f64>(r2 + oj, t2 / d)
      store<f64>(r3 + oj, t3 / d)
    }
  }
  for (; i < j0; i++) for (let j = j1 - 1; j >= j0; j--) dotRow(A, n, i, j, load<f64>(A + ((<usize>j * <usize>n + <usize>j) << 3)))
  return -1
}

/** A[i,j] = (A[i,j] − Σ_{k>j} A[i,k]·A[j,k]) / d, k ascending. */
@inline function dotRow(A: usize, n: i32, i: i32, j: i32, d: f64): void {
  const ri = A + (<usize>i * <usize>n << 3)
  const rj = A + (<usize>j * <usize>n << 3)
  let t = load<f64>(ri + (<usize>j << 3))
  for (let k = j + 1; k < n; k++) t -= load<f64>(ri + (<usize>k << 3)) * load<f64>(rj + (<usize>k << 3))
  store<f64>(ri + (<usize>j << 3), t / d)
}

/**
 * Pass 2 of hessian-inverse.ts (U = V⁻¹, row by row from the bottom) for rows i = i1 − 1 down
 * to i0; `v` is scratch of n f64. Vectorised over columns only, so each entry sees the same
 * operations in the same order as in TS.
 */
export function invertUpperRows(A: usize, v: usize, n: i32, i0: i32, i1: i32): void {
  for (let i = i1 - 1; i >= i0; i--) {
    const ri = A + (<usize>i * <usize>n << 3)
    const d = load<f64>(ri + (<usize>i << 3))
    for (let k = i + 1; k < n; k++) {
      store<f64>(v + (<usize>k << 3), load<f64>(ri + (<usize>k << 3)))
      store<f64>(ri + (<usize>k << 3), 0)
    }
    for (let k = i + 1; k < n; k++) {
      const a = load<f64>(v + (<usize>k << 3))
      if (a == 0) continue
      const rk = A + (<usize>k * <usize>n << 3)
      const av = f64x2.splat(a)
      let j = k
      for (; j + 1 < n; j += 2) {
        const o = <usize>j << 3
        v128.store(ri + o, f64x2.sub(v128.load(ri + o), f64x2.mul(av, v128.load(rk + o))))
      }
      if (j < n) store<f64>(ri + (<usize>j << 3), load<f64>(ri + (<usize>j << 3)) - a * load<f64>(rk + (<usize>j << 3)))
    }
    const inv = 1 / d
    store<f64>(ri + (<usize>i << 3), inv)
    const iv = f64x2.splat(inv)
    let j = i + 1
    for (; j + 1 < n; j += 2) v128.store(ri + (<usize>j << 3), f64x2.mul(v128.load(ri + (<usize>j << 3)), iv))
    if (j < n) store<f64>(ri + (<usize>j << 3), load<f64>(ri + (<usize>j << 3)) * inv)
    memory.fill(ri, 0, <usize>i << 3)
  }
}

/**
 * AWQ's scale-search error Σ e·G·eᵀ of each row of E (rows × cols, f64) against the symmetric
 * G (cols × cols, f64): 2·Σ_i e_i·(½·G_ii·e_i + Σ_{j>i} G_ij·e_j), a zero e_i skipped, the inner
 * sum in two lanes (j − i − 1 even, odd) added after the loop — the order of
 * rowsQuadraticForm in quant/gram.ts, so both give the same bits. One value per row into out.
 */
export function quadraticRows(E: usize, rows: i32, cols: i32, G: usize, out: usize): void {
  // Four rows per pass over G: G's row i (read once, from L2/L3) serves all four error rows,
  // which stay in L1. Each row's terms are still summed in its own order.
  const rowBytes = <usize>cols << 3
  let r = 0
  for (; r + 3 < rows; r += 4) {
    const e0 = E + <usize>r * rowBytes
    const e1 = e0 + rowBytes
    const e2 = e1 + rowBytes
    const e3 = e2 + rowBytes
    let t0: f64 = 0
    let t1: f64 = 0
    let t2: f64 = 0
    let t3: f64 = 0
    for (let i = 0; i < cols; i++) {
      const gi = G + <usize>i * rowBytes
      t0 += rowTerm(e0, gi, i, cols)
      t1 += rowTerm(e1, gi, i, cols)
      t2 += rowTerm(e2, gi, i, cols)
      t3 += rowTerm(e3, gi, i, cols)
    }
    store<f64>(out + (<usize>r << 3), 2 * t0)
    store<f64>(out + (<usize>(r + 1) << 3), 2 * t1)
    store<f64>(out + (<usize>(r + 2) << 3), 2 * t2)
    store<f64>(out + (<usize>(r + 3) << 3), 2 * t3)
  }
  for (; r < rows; r++) {
    const e = E + <usize>r * rowBytes
    let t: f64 = 0
    for (let i = 0; i < cols; i++) t += rowTerm(e, G + <usize>i * rowBytes, i, cols)
    store<f64>(out + (<usize>r << 3), 2 * t)
  }
}

/** e_i·(½·G_ii·e_i + Σ_{j>i} G_ij·e_j) of one row (0 when e_i is 0), the inner sum in two lanes. */
@inline function rowTerm(e: usize, gi: usize, i: i32, cols: i32): f64 {
  const ei = load<f64>(e + (<usize>i << 3))
  if (ei == 0) return 0
  let acc = f64x2.splat(0)
  let j = i + 1
  for (; j + 1 < cols; j += 2) {
    acc = f64x2.add(acc, f64x2.mul(v128.load(gi + (<usize>j << 3)), v128.load(e + (<usize>j << 3))))
  }
  let a0 = f64x2.extract_lane(acc, 0)
  const a1 = f64x2.extract_lane(acc, 1)
  if (j < cols) a0 += load<f64>(gi + (<usize>j << 3)) * load<f64>(e + (<usize>j << 3))
  return ei * (0.5 * load<f64>(gi + (<usize>i << 3)) * ei + (a0 + a1))
}
