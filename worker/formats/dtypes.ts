/**
 * Plain element types shared by all formats: sizes and decoders to float32.
 * Names follow the safetensors spec (F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64 … BOOL).
 */

export type PlainDType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U8'
  | 'BOOL'

export const PLAIN_DTYPE_BYTES: Readonly<Record<PlainDType, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
})

export function isPlainDType(s: string): s is PlainDType {
  return Object.prototype.hasOwnProperty.call(PLAIN_DTYPE_BYTES, s)
}

// Precomputed 65536-entry tables: decoding a 16-bit float is then one load. 256 KB each.
let f16Table: Float32Array | null = null
let bf16Table: Float32Array | null = null

/** IEEE 754 binary16 → number, exact (subnormals, ±Inf, NaN). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >> 10) & 0x1f
  const frac = h & 0x3ff
  if (exp === 0) return sign * frac * 2 ** -24
  if (exp === 31) return frac ? NaN : sign * Infinity
  return sign * (1 + frac / 1024) * 2 ** (exp - 15)
}

/** bfloat16 → number: the upper half of a float32. */
export function bf16ToF32(b: number): number {
  const u = new Uint32Array([b << 16])
  return new Float32Array(u.buffer)[0]!
}

const scratchF32 = new Float32Array(1)
const scratchU32 = new Uint32Array(scratchF32.buffer)

/** number → IEEE binary16 bits, round-to-nearest-even (used by writers and tests). */
export function f32ToF16(value: number): number {
  // One shared scratch word: exporters call this per value of whole tensors.
  scratchF32[0] = value
  const x = scratchU32[0]!
  const sign = (x >>> 16) & 0x8000
  const exp = (x >>> 23) & 0xff
  let mant = x & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0)
  let e = exp - 127 + 15
  if (e >= 31) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    const half = 1 << (shift - 1)
    let r = mant >>> shift
    const rem = mant & ((1 << shift) - 1)
    if (rem > half || (rem === half && r & 1)) r++
    return sign | r
  }
  let r = mant >>> 13
  const rem = mant & 0x1fff
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) {
    r++
    if (r === 0x400) {
      r = 0
      e++
      if (e >= 31) return sign | 0x7c00
    }
  }
  return sign | (e << 10) | r
}

/** number → bfloat16 bits, round-to-nearest-even; NaN stays NaN. */
export function f32ToBF16(value: number): number {
  scratchF32[0] = value
  const x = scratchU32[0]!
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff
}

/** float32 value of every 16-bit pattern (65536 entries, built once): decoding by lookup. */
export function table16(kind: 'f16' | 'bf16'): Float32Array {
  if (kind === 'f16') {
    if (!f16Table) {
      f16Table = new Float32Array(65536)
      for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i)
    }
    return f16Table
  }
  if (!bf16Table) {
    bf16Table = new Float32Array(65536)
    const u = new Uint32Array(bf16Table.buffer)
    for (let i = 0; i < 65536; i++) u[i] = i << 16
  }
  return bf16Table
}

/** OCP FP8 E4M3 (as in safetensors F8_E4M3 / torch.float8_e4m3fn): no Inf, NaN = S.1111.111. */
export function fp8e4m3ToF32(b: number): number {
  const sign = b & 0x80 ? -1 : 1
  const exp = (b >> 3) & 0xf
  const mant = b & 0x7
  if (exp === 15 && mant === 7) return NaN
  if (exp === 0) return sign * mant * 2 ** -9
  return sign * (1 + mant / 8) * 2 ** (exp - 7)
}

/** FP8 E5M2 (torch.float8_e5m2): IEEE-like, with Inf and NaN. */
export function fp8e5m2ToF32(b: number): number {
  return f16ToF32(b << 8)
}

/**
 * Decodes `count` little-endian elements of `dtype` from `bytes` into `out`: float32, or
 * float64 where F64 values must keep their range and precision (OpenedModel.readRows64).
 * `bytes` may be any slice; it need not be aligned.
 */
export function decodePlain<T extends Float32Array | Float64Array>(dtype: PlainDType, bytes: Uint8Array, out: T, count = out.length): T {
  const need = count * PLAIN_DTYPE_BYTES[dtype]
  if (bytes.length < need) throw new RangeError(`decodePlain(${dtype}): need ${need} bytes, have ${bytes.length}`)
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  switch (dtype) {
    case 'F32': {
      if (bytes.byteOffset % 4 === 0) out.set(new Float32Array(bytes.buffer, bytes.byteOffset, count))
      else for (let i = 0; i < count; i++) out[i] = dv.getFloat32(i * 4, true)
      break
    }
    case 'F64':
      for (let i = 0; i < count; i++) out[i] = dv.getFloat64(i * 8, true)
      break
    case 'F16':
    case 'BF16': {
      const t = table16(dtype === 'F16' ? 'f16' : 'bf16')
      if (bytes.byteOffset % 2 === 0) {
        const u = new Uint16Array(bytes.buffer, bytes.byteOffset, count)
        for (let i = 0; i < count; i++) out[i] = t[u[i]!]!
      } else {
        for (let i = 0; i < count; i++) out[i] = t[bytes[2 * i]! | (bytes[2 * i + 1]! << 8)]!
      }
      break
    }
    case 'F8_E4M3':
      for (let i = 0; i < count; i++) out[i] = fp8e4m3ToF32(bytes[i]!)
      break
    case 'F8_E5M2': {
      const t = table16('f16')
      for (let i = 0; i < count; i++) out[i] = t[bytes[i]! << 8]!
      break
    }
    case 'I64':
      for (let i = 0; i < count; i++) out[i] = Number(dv.getBigInt64(i * 8, true))
      break
    case 'I32':
      for (let i = 0; i < count; i++) out[i] = dv.getInt32(i * 4, true)
      break
    case 'I16':
      for (let i = 0; i < count; i++) out[i] = dv.getInt16(i * 2, true)
      break
    case 'I8':
      for (let i = 0; i < count; i++) out[i] = dv.getInt8(i)
      break
    case 'U8':
      for (let i = 0; i < count; i++) out[i] = bytes[i]!
      break
    case 'BOOL':
      for (let i = 0; i < count; i++) out[i] = bytes[i] ? 1 : 0
      break
  }
  return out
}
