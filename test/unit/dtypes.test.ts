import { describe, it, expect } from 'vitest'
import { bf16ToF32, decodePlain, f16ToF32, f32ToBF16, f32ToF16, fp8e4m3ToF32, fp8e5m2ToF32 } from '../../worker/formats/dtypes'

// Published binary16 / bfloat16 / OCP FP8 bit patterns and their values.
describe('16-bit and 8-bit float decoding', () => {
  it('decodes IEEE binary16 edge cases', () => {
    expect(f16ToF32(0x0000)).toBe(0)
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true)
    expect(f16ToF32(0x0001)).toBe(2 ** -24) // smallest subnormal
    expect(f16ToF32(0x03ff)).toBe(1023 * 2 ** -24) // largest subnormal
    expect(f16ToF32(0x0400)).toBe(2 ** -14) // smallest normal
    expect(f16ToF32(0x3c00)).toBe(1)
    expect(f16ToF32(0xc000)).toBe(-2)
    expect(f16ToF32(0x7bff)).toBe(65504)
    expect(f16ToF32(0x7c00)).toBe(Infinity)
    expect(f16ToF32(0xfc00)).toBe(-Infinity)
    expect(f16ToF32(0x7e00)).toBeNaN()
    expect(f16ToF32(0x3555)).toBeCloseTo(0.333251953125, 12)
  })

  it('decodes bfloat16 edge cases', () => {
    expect(bf16ToF32(0x3f80)).toBe(1)
    expect(bf16ToF32(0xc040)).toBe(-3)
    expect(bf16ToF32(0x0001)).toBe(2 ** -133) // subnormal
    expect(bf16ToF32(0x7f80)).toBe(Infinity)
    expect(bf16ToF32(0xff80)).toBe(-Infinity)
    expect(bf16ToF32(0x7fc0)).toBeNaN()
    expect(bf16ToF32(0x7f7f)).toBeCloseTo(3.3895313892515355e38, -30)
  })

  it('decodes FP8 E4M3FN and E5M2', () => {
    expect(fp8e4m3ToF32(0x7e)).toBe(448)
    expect(fp8e4m3ToF32(0x7f)).toBeNaN()
    expect(fp8e4m3ToF32(0xff)).toBeNaN()
    expect(fp8e4m3ToF32(0x01)).toBe(2 ** -9)
    expect(fp8e4m3ToF32(0x38)).toBe(1)
    expect(fp8e4m3ToF32(0xb8)).toBe(-1)
    expect(fp8e5m2ToF32(0x7b)).toBe(57344)
    expect(fp8e5m2ToF32(0x7c)).toBe(Infinity)
    expect(fp8e5m2ToF32(0x7d)).toBeNaN()
    expect(fp8e5m2ToF32(0x01)).toBe(2 ** -16)
    expect(fp8e5m2ToF32(0x3c)).toBe(1)
  })

  it('f32ToF16 round-trips every non-NaN binary16 pattern and rounds to nearest even', () => {
    for (let h = 0; h < 65536; h++) {
      const v = f16ToF32(h)
      if (Number.isNaN(v)) continue
      expect(f32ToF16(v)).toBe(h)
    }
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00) // tie → even (down)
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02) // tie → even (up)
    expect(f32ToF16(65520)).toBe(0x7c00) // rounds to infinity
    expect(f32ToF16(2 ** -25)).toBe(0) // tie between 0 and smallest subnormal → 0
    expect(f32ToF16(3 * 2 ** -26)).toBe(1)
  })

  it('f32ToBF16 round-trips and rounds to nearest even', () => {
    for (let b = 0; b < 65536; b += 7) {
      const v = bf16ToF32(b)
      if (Number.isNaN(v)) continue
      expect(f32ToBF16(v)).toBe(b)
    }
    expect(f32ToBF16(1 + 2 ** -8)).toBe(0x3f80)
    expect(f32ToBF16(1 + 3 * 2 ** -8)).toBe(0x3f82)
  })

  it('decodePlain handles unaligned slices and every integer type', () => {
    const buf = new Uint8Array(1 + 8 * 3)
    const dv = new DataView(buf.buffer, 1)
    dv.setFloat32(0, 1.5, true)
    dv.setFloat32(4, -2.25, true)
    expect(Array.from(decodePlain('F32', buf.subarray(1, 9), new Float32Array(2)))).toEqual([1.5, -2.25])
    dv.setUint16(0, 0x3c00, true)
    dv.setUint16(2, 0xc000, true)
    expect(Array.from(decodePlain('F16', buf.subarray(1, 5), new Float32Array(2)))).toEqual([1, -2])
    dv.setBigInt64(0, -5n, true)
    expect(Array.from(decodePlain('I64', buf.subarray(1, 9), new Float32Array(1)))).toEqual([-5])
    expect(Array.from(decodePlain('I8', Uint8Array.of(0xff, 0x7f), new Float32Array(2)))).toEqual([-1, 127])
    expect(Array.from(decodePlain('U8', Uint8Array.of(0xff, 0x7f), new Float32Array(2)))).toEqual([255, 127])
    expect(Array.from(decodePlain('BOOL', Uint8Array.of(0, 2), new Float32Array(2)))).toEqual([0, 1])
    expect(Array.from(decodePlain('I16', Uint8Array.of(0x00, 0x80), new Float32Array(1)))).toEqual([-32768])
    expect(() => decodePlain('F32', new Uint8Array(3), new Float32Array(1))).toThrow(/need 4 bytes/)
  })
})
