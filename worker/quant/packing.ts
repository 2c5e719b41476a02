/**
 * n-bit codes packed contiguously over the whole tensor, row-major, least significant bit first
 * (code i occupies bits [i·n, i·n + n) of the little-endian bit stream). This is exactly
 * `packedBytes(count, n)` bytes, so what `storage` counts is what is held. Rows of odd-bit
 * codes (3, 5, 7) need not start on a byte boundary; unpacking starts at any code index.
 */
import { packedBytes } from './contract'

export function packCodes(codes: Uint8Array, bits: number): Uint8Array {
  const out = new Uint8Array(packedBytes(codes.length, bits))
  const mask = (1 << bits) - 1
  let acc = 0
  let filled = 0
  let o = 0
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i]!
    if (c > mask) throw new RangeError(`code ${c} at ${i} does not fit ${bits} bits`)
    acc |= c << filled
    filled += bits
    while (filled >= 8) {
      out[o++] = acc & 0xff
      acc >>>= 8
      filled -= 8
    }
  }
  if (filled > 0) out[o] = acc & 0xff
  return out
}

/** Codes [start, start + count) of a packed stream into `out` (length ≥ count). */
export function unpackCodes(packed: Uint8Array, bits: number, start: number, count: number, out: Uint8Array): Uint8Array {
  if (bits === 4 && (start & 1) === 0) {
    // The common case, byte-aligned nibbles: two codes per byte.
    let byte = start >>> 1
    let i = 0
    for (; i + 1 < count; i += 2) {
      const b = packed[byte++]!
      out[i] = b & 0xf
      out[i + 1] = b >>> 4
    }
    if (i < count) out[i] = packed[byte]! & 0xf
    return out
  }
  if (bits === 8) {
    out.set(packed.subarray(start, start + count))
    return out
  }
  const mask = (1 << bits) - 1
  const bit = start * bits
  let byte = bit >>> 3
  let acc = packed[byte++]! >>> (bit & 7)
  let filled = 8 - (bit & 7)
  for (let i = 0; i < count; i++) {
    while (filled < bits) {
      acc |= packed[byte++]! << filled
      filled += 8
    }
    out[i] = acc & mask
    acc >>>= bits
    filled -= bits
  }
  return out
}
