/**
 * Round-to-nearest asymmetric int4 quantize-dequantize exactly as the reference fixture
 * describes it (reference.json "int4_rtn"): per output row, groups of g input columns;
 * scale = (max − min) / 15 (1 if 0); q = clamp(floor((w − min) / scale + 0.5), 0, 15);
 * w' = q·scale + min — every operation rounded to float32 separately, as torch does on the CPU.
 */
export function rtnInt4(w: Float32Array, cols: number, group: number): Float32Array {
  if (cols % group !== 0) throw new Error(`rtnInt4: ${cols} columns are not a multiple of ${group}`)
  const f = Math.fround
  const out = new Float32Array(w.length)
  for (let start = 0; start < w.length; start += group) {
    let lo = Infinity
    let hi = -Infinity
    for (let i = start; i < start + group; i++) {
      lo = Math.min(lo, w[i]!)
      hi = Math.max(hi, w[i]!)
    }
    let scale = f(f(hi - lo) / 15)
    if (!(scale > 0)) scale = 1
    for (let i = start; i < start + group; i++) {
      const v = f(f(w[i]! - lo) / scale)
      const q = Math.min(15, Math.max(0, Math.floor(f(v + 0.5))))
      out[i] = f(f(q * scale) + lo)
    }
  }
  return out
}
