// KLLM's Orizuru top-k outlier detector (AssemblyScript → WASM SIMD). Same algorithm, order and
// output as worker/quant/activations/orizuru.ts (the tests compare them element for element):
// per row two bounded heaps of (value, column) ranked by (value, column) ascending, the max heap
// rooted at its smallest pair, the min heap at its largest; outputs sorted best first.
//
// The SIMD part is the scan: on activations almost every value is below the max heap's root and
// not below the min heap's, so four values at a time are compared against both roots (and
// against themselves, for NaN) and only a group with a lane that passes goes to the scalar heap
// update, lane by lane in column order. The JS side (worker/quant/activations/orizuru-wasm.ts)
// owns the memory layout; the stub runtime never allocates.

/** Set when topK returns a NaN's position. */
export let nanRow: i32 = -1
export let nanCol: i32 = -1

// Heaps: f32 values + i32 columns at these byte pointers (k entries each), set per call.
let hv: usize = 0
let hc: usize = 0
let lv: usize = 0
let lc: usize = 0

@inline function vAt(p: usize, i: i32): f32 {
  return load<f32>(p + (<usize>i << 2))
}
@inline function cAt(p: usize, i: i32): i32 {
  return load<i32>(p + (<usize>i << 2))
}

/** Is slot a nearer the root than slot b? up = 1: (v, c)_a < (v, c)_b (max heap); up = 0: reversed. */
@inline function nearer(vp: usize, cp: usize, a: i32, b: i32, up: bool): bool {
  const va = vAt(vp, a)
  const vb = vAt(vp, b)
  if (va != vb) return up ? va < vb : va > vb
  return up ? cAt(cp, a) < cAt(cp, b) : cAt(cp, a) > cAt(cp, b)
}

@inline function swap(vp: usize, cp: usize, a: i32, b: i32): void {
  const pa = <usize>a << 2
  const pb = <usize>b << 2
  const tv = load<f32>(vp + pa)
  store<f32>(vp + pa, load<f32>(vp + pb))
  store<f32>(vp + pb, tv)
  const tc = load<i32>(cp + pa)
  store<i32>(cp + pa, load<i32>(cp + pb))
  store<i32>(cp + pb, tc)
}

function siftDown(vp: usize, cp: usize, n: i32, i: i32, up: bool): void {
  while (true) {
    const l = 2 * i + 1
    if (l >= n) return
    const r = l + 1
    const m = r < n && nearer(vp, cp, r, l, up) ? r : l
    if (!nearer(vp, cp, m, i, up)) return
    swap(vp, cp, m, i)
    i = m
  }
}

function siftUp(vp: usize, cp: usize, i: i32, up: bool): void {
  while (i > 0) {
    const p = (i - 1) >> 1
    if (!nearer(vp, cp, i, p, up)) return
    swap(vp, cp, i, p)
    i = p
  }
}

function drain(vp: usize, cp: usize, k: i32, up: bool, outV: usize, outC: usize): void {
  for (let n = k; n > 0; n--) {
    const o = <usize>(n - 1) << 2
    store<f32>(outV + o, vAt(vp, 0))
    store<i32>(outC + o, cAt(cp, 0))
    store<f32>(vp, vAt(vp, n - 1))
    store<i32>(cp, cAt(cp, n - 1))
    siftDown(vp, cp, n - 1, 0, up)
  }
}

// Roots of the current row's heaps, kept in globals so the scalar step can update them.
let hiRoot: f32 = 0
let loRoot: f32 = 0

/** One value of the scan (after the heaps are full); false on NaN. */
@inline function step(v: f32, j: i32, k: i32): bool {
  if (v >= hiRoot) {
    store<f32>(hv, v)
    store<i32>(hc, j)
    siftDown(hv, hc, k, 0, true)
    hiRoot = vAt(hv, 0)
  } else if (v != v) return false
  if (v < loRoot) {
    store<f32>(lv, v)
    store<i32>(lc, j)
    siftDown(lv, lc, k, 0, false)
    loRoot = vAt(lv, 0)
  }
  return true
}

/**
 * The k largest and k smallest of each of `rows` rows of `cols` f32 at src. Outputs rows × k f32
 * values / i32 columns at maxV, maxC, minV, minC; `scratch` holds 4k words of heaps. Needs
 * 1 ≤ k and 2k ≤ cols (checked by the caller). Returns 0, or 1 with nanRow / nanCol set.
 */
export function topK(src: usize, rows: i32, cols: i32, k: i32, maxV: usize, maxC: usize, minV: usize, minC: usize, scratch: usize): i32 {
  hv = scratch
  hc = scratch + (<usize>k << 2)
  lv = scratch + (<usize>k << 3)
  lc = lv + (<usize>k << 2)
  const cols4 = cols & ~3
  for (let r: i32 = 0; r < rows; r++) {
    const base = src + ((<usize>r * <usize>cols) << 2)
    for (let j: i32 = 0; j < k; j++) {
      const v = load<f32>(base + (<usize>j << 2))
      if (v != v) {
        nanRow = r
        nanCol = j
        return 1
      }
      const o = <usize>j << 2
      store<f32>(hv + o, v)
      store<i32>(hc + o, j)
      siftUp(hv, hc, j, true)
      store<f32>(lv + o, v)
      store<i32>(lc + o, j)
      siftUp(lv, lc, j, false)
    }
    hiRoot = vAt(hv, 0)
    loRoot = vAt(lv, 0)
    let j: i32 = k
    // Scalar up to a multiple of 4, so vector loads stay 16-byte aligned relative to the row.
    const head = min<i32>(cols, (k + 3) & ~3)
    for (; j < head; j++) {
      if (!step(load<f32>(base + (<usize>j << 2)), j, k)) {
        nanRow = r
        nanCol = j
        return 1
      }
    }
    for (; j < cols4; j += 4) {
      const x = v128.load(base + (<usize>j << 2))
      const hit = v128.or(v128.or(f32x4.ge(x, f32x4.splat(hiRoot)), f32x4.lt(x, f32x4.splat(loRoot))), f32x4.ne(x, x))
      if (!v128.any_true(hit)) continue
      for (let t: i32 = 0; t < 4; t++) {
        if (!step(load<f32>(base + (<usize>(j + t) << 2)), j + t, k)) {
          nanRow = r
          nanCol = j + t
          return 1
        }
      }
    }
    for (; j < cols; j++) {
      if (!step(load<f32>(base + (<usize>j << 2)), j, k)) {
        nanRow = r
        nanCol = j
        return 1
      }
    }
    const o = (<usize>r * <usize>k) << 2
    drain(hv, hc, k, true, maxV + o, maxC + o)
    drain(lv, lc, k, false, minV + o, minC + o)
  }
  return 0
}
