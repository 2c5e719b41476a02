import { mkdtemp, rm, truncate } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { f32ToBF16, f32ToF16 } from '../../worker/formats/dtypes'
import { ModelFormatError } from '../../worker/common/errors'
import { GGML_TYPES, ggmlTypeByName } from '../../worker/formats/gguf/ggml-types'
import { ggufFormat } from '../../worker/formats/gguf/reader'
import { canDequantize, dequantize } from '../../worker/formats/gguf/dequant'
import { FileByteSource } from '../../worker/io/byte-source'
import { arr, buildGguf, f32, str, u32, writeGguf, type GgufWriterOptions } from '../helpers/gguf-writer'

// ggml type ids used below (ggml.h)
const F32 = 0
const F16 = 1
const Q4_0 = 2
const Q8_0 = 8
const Q4_K = 12
const IQ2_XXS = 16
const BF16 = 30

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'quantscope-gguf-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

// ---------- independent helpers (not the code under test) ----------

/** IEEE binary16 bits → value, straight from the definition. */
function half(bits: number): number {
  const e = (bits >> 10) & 31
  const m = bits & 1023
  const s = bits & 0x8000 ? -1 : 1
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15)
}

/** Deterministic small-integer generator (LCG) so failures reproduce. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0
  return (n) => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    return (x >>> 8) % n
  }
}

function putHalf(b: Uint8Array, at: number, bits: number): void {
  b[at] = bits & 0xff
  b[at + 1] = bits >> 8
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer)
}

async function expectFormatError(promise: Promise<unknown>, file: string, ...parts: string[]): Promise<ModelFormatError> {
  let caught: unknown = null
  try {
    await promise
  } catch (err) {
    caught = err
  }
  expect(caught).toBeInstanceOf(ModelFormatError)
  const e = caught as ModelFormatError
  expect(e.message).toContain(file)
  for (const p of parts) expect(e.message).toContain(p)
  return e
}

let fileNo = 0
async function gguf(opts: GgufWriterOptions | Uint8Array): Promise<string> {
  return writeGguf(dir, `m${fileNo++}.gguf`, opts)
}

const DEQUANT_CASES = ['Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_K'] as const

/**
 * Hand-built blocks: choose the quants and scales, pack them the way the published layout
 * (ggml-common.h block structs + the reference quantizers) describes, and compute each
 * expected value from the chosen numbers.
 */
function handBlock(type: (typeof DEQUANT_CASES)[number], seed: number): { bytes: Uint8Array; expected: number[] } {
  const r = rng(seed)
  const dBits = 0x2e66 // ≈ 0.0999
  const mBits = 0xb8cd // ≈ -0.6
  const d = half(dBits)
  const m = half(mBits)
  switch (type) {
    case 'Q8_0': {
      const b = new Uint8Array(34)
      putHalf(b, 0, dBits)
      const q = Array.from({ length: 32 }, () => r(256) - 128)
      q[0] = -128
      q[1] = 127
      q.forEach((v, i) => (b[2 + i] = v & 0xff))
      return { bytes: b, expected: q.map((v) => v * d) }
    }
    case 'Q4_0':
    case 'Q4_1': {
      const withMin = type === 'Q4_1'
      const b = new Uint8Array(withMin ? 20 : 18)
      putHalf(b, 0, dBits)
      if (withMin) putHalf(b, 2, mBits)
      const q = Array.from({ length: 32 }, () => r(16))
      q[0] = 0
      q[31] = 15
      const qs = withMin ? 4 : 2
      // Elements 0..15 are the low nibbles, 16..31 the high nibbles.
      for (let j = 0; j < 16; j++) b[qs + j] = q[j]! | (q[j + 16]! << 4)
      return { bytes: b, expected: q.map((v) => (withMin ? v * d + m : (v - 8) * d)) }
    }
    case 'Q5_0':
    case 'Q5_1': {
      const withMin = type === 'Q5_1'
      const b = new Uint8Array(withMin ? 24 : 22)
      putHalf(b, 0, dBits)
      if (withMin) putHalf(b, 2, mBits)
      const q = Array.from({ length: 32 }, () => r(32))
      q[3] = 31
      q[20] = 16
      const qh = withMin ? 4 : 2
      let high = 0n
      q.forEach((v, i) => (high |= BigInt(v >> 4) << BigInt(i)))
      for (let k = 0; k < 4; k++) b[qh + k] = Number((high >> BigInt(8 * k)) & 0xffn)
      for (let j = 0; j < 16; j++) b[qh + 4 + j] = (q[j]! & 15) | ((q[j + 16]! & 15) << 4)
      return { bytes: b, expected: q.map((v) => (withMin ? v * d + m : (v - 16) * d)) }
    }
    case 'Q2_K': {
      const b = new Uint8Array(84)
      const sc = Array.from({ length: 16 }, () => r(16))
      const mn = Array.from({ length: 16 }, () => r(16))
      const q = Array.from({ length: 256 }, () => r(4))
      sc.forEach((s, j) => (b[j] = s | (mn[j]! << 4)))
      for (let n = 0; n < 2; n++) {
        for (let l = 0; l < 32; l++) {
          const e = 128 * n + l
          b[16 + 32 * n + l] = q[e]! | (q[e + 32]! << 2) | (q[e + 64]! << 4) | (q[e + 96]! << 6)
        }
      }
      putHalf(b, 80, dBits)
      putHalf(b, 82, 0x3400) // dmin = 0.25
      return { bytes: b, expected: q.map((v, e) => d * sc[e >> 4]! * v - 0.25 * mn[e >> 4]!) }
    }
    case 'Q3_K': {
      const b = new Uint8Array(110)
      const sc = Array.from({ length: 16 }, () => r(64)) // stored 6-bit, value sc − 32
      const q = Array.from({ length: 256 }, () => r(8)) // stored 3-bit, value q − 4
      const low = q.map((v) => v & 3)
      q.forEach((v, e) => {
        if (v > 3) b[e % 32] |= 1 << Math.floor(e / 32) // hmask: high bit of value e
      })
      for (let n = 0; n < 2; n++) {
        for (let l = 0; l < 32; l++) {
          const e = 128 * n + l
          b[32 + 32 * n + l] = low[e]! | (low[e + 32]! << 2) | (low[e + 64]! << 4) | (low[e + 96]! << 6)
        }
      }
      sc.forEach((s, j) => {
        if (j < 8) b[96 + j] |= s & 15
        else b[96 + j - 8] |= (s & 15) << 4
        b[96 + 8 + (j % 4)] |= (s >> 4) << (2 * Math.floor(j / 4))
      })
      putHalf(b, 108, dBits)
      return { bytes: b, expected: q.map((v, e) => d * (sc[e >> 4]! - 32) * (v - 4)) }
    }
    case 'Q4_K':
    case 'Q5_K': {
      const five = type === 'Q5_K'
      const b = new Uint8Array(five ? 176 : 144)
      putHalf(b, 0, dBits)
      putHalf(b, 2, 0x3400) // dmin = 0.25
      const sc = Array.from({ length: 8 }, () => r(64))
      const mn = Array.from({ length: 8 }, () => r(64))
      sc[5] = 63
      mn[6] = 48
      // 12 bytes of 6-bit scales/mins: 0..3 scale j (+ top bits of scale j+4), 4..7 min j
      // (+ top bits of min j+4), 8..11 low nibbles of scale/min j+4.
      for (let j = 0; j < 8; j++) {
        if (j < 4) {
          b[4 + j] = sc[j]!
          b[4 + j + 4] = mn[j]!
        } else {
          b[4 + j + 4] = (sc[j]! & 15) | ((mn[j]! & 15) << 4)
          b[4 + j - 4] |= (sc[j]! >> 4) << 6
          b[4 + j] |= (mn[j]! >> 4) << 6
        }
      }
      const q = Array.from({ length: 256 }, () => r(five ? 32 : 16))
      const qs = five ? 48 : 16
      for (let c = 0; c < 4; c++) {
        for (let i = 0; i < 32; i++) b[qs + 32 * c + i] = (q[64 * c + i]! & 15) | ((q[64 * c + 32 + i]! & 15) << 4)
      }
      if (five) q.forEach((v, e) => (b[16 + (e % 32)] |= (v >> 4) << Math.floor(e / 32)))
      return { bytes: b, expected: q.map((v, e) => d * sc[e >> 5]! * v - 0.25 * mn[e >> 5]!) }
    }
    case 'Q6_K': {
      const b = new Uint8Array(210)
      const q = Array.from({ length: 256 }, () => r(64))
      const sc = Array.from({ length: 16 }, () => r(256) - 128)
      for (let n = 0; n < 2; n++) {
        for (let l = 0; l < 32; l++) {
          const e = 128 * n + l
          b[64 * n + l] = (q[e]! & 15) | ((q[e + 64]! & 15) << 4)
          b[64 * n + 32 + l] = (q[e + 32]! & 15) | ((q[e + 96]! & 15) << 4)
          b[128 + 32 * n + l] = (q[e]! >> 4) | ((q[e + 32]! >> 4) << 2) | ((q[e + 64]! >> 4) << 4) | ((q[e + 96]! >> 4) << 6)
        }
      }
      sc.forEach((s, j) => (b[192 + j] = s & 0xff))
      putHalf(b, 208, dBits)
      return { bytes: b, expected: q.map((v, e) => d * sc[e >> 4]! * (v - 32)) }
    }
    case 'Q8_K': {
      const b = new Uint8Array(292)
      const dk = Math.fround(0.0123)
      new DataView(b.buffer).setFloat32(0, dk, true)
      const q = Array.from({ length: 256 }, () => r(256) - 128)
      q.forEach((v, i) => (b[4 + i] = v & 0xff))
      return { bytes: b, expected: q.map((v) => v * dk) }
    }
  }
}

describe('ggml type table', () => {
  it('has the block sizes of ggml-common.h and one decoder per decodable type', () => {
    // static_asserts in ggml-common.h
    const sizes: Record<string, [number, number]> = {
      Q4_0: [32, 18], Q4_1: [32, 20], Q5_0: [32, 22], Q5_1: [32, 24], Q8_0: [32, 34], Q8_1: [32, 36],
      Q2_K: [256, 84], Q3_K: [256, 110], Q4_K: [256, 144], Q5_K: [256, 176], Q6_K: [256, 210], Q8_K: [256, 292],
      IQ2_XXS: [256, 66], IQ2_XS: [256, 74], IQ3_XXS: [256, 98], IQ1_S: [256, 50], IQ4_NL: [32, 18],
      IQ3_S: [256, 110], IQ2_S: [256, 82], IQ4_XS: [256, 136], IQ1_M: [256, 56], TQ1_0: [256, 54],
      TQ2_0: [256, 66], MXFP4: [32, 17], NVFP4: [64, 36], Q1_0: [128, 18], BF16: [1, 2], F64: [1, 8],
    }
    for (const [name, [blk, size]] of Object.entries(sizes)) {
      expect(ggmlTypeByName(name), name).toMatchObject({ blockSize: blk, typeSize: size })
    }
    expect(GGML_TYPES.get(12)!.name).toBe('Q4_K')
    expect(GGML_TYPES.get(39)!.name).toBe('MXFP4')
    expect(GGML_TYPES.has(4)).toBe(false)
    for (const t of GGML_TYPES.values()) expect(canDequantize(t.name), t.name).toBe(t.decodable)
  })
})

describe('dequantization of hand-built blocks', () => {
  for (const type of DEQUANT_CASES) {
    it(`${type}: every value matches the layout formula`, () => {
      for (const seed of [1, 2, 3]) {
        const { bytes, expected } = handBlock(type, seed * 7919 + type.length)
        const twoBlocks = new Uint8Array(bytes.length * 2)
        twoBlocks.set(bytes, 0)
        twoBlocks.set(bytes, bytes.length)
        // An odd byteOffset checks that nothing assumes aligned input.
        const shifted = new Uint8Array(twoBlocks.length + 1)
        shifted.set(twoBlocks, 1)
        const out = dequantize(type, shifted.subarray(1), expected.length * 2)
        for (let i = 0; i < out.length; i++) {
          const want = Math.fround(expected[i % expected.length]!)
          if (out[i] !== want) expect.fail(`${type} value ${i}: got ${out[i]}, want ${want}`)
        }
      }
    })
  }

  it('rejects partial blocks and unknown types', () => {
    expect(() => dequantize('Q4_K', new Uint8Array(144), 128)).toThrow(/block/)
    expect(() => dequantize('Q4_0', new Uint8Array(10), 32)).toThrow(/18 bytes/)
    expect(() => dequantize('IQ2_XXS', new Uint8Array(66), 256)).toThrow(/cannot decode/)
  })
})

describe('quantize → dequantize round trip (reference quantizers written here)', () => {
  const x = Array.from({ length: 32 * 64 }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)) + Math.cos(i * 1.3) * 0.01)

  it('Q8_0: values are q·d exactly and within half a step (+ fp16 scale rounding)', () => {
    const bytes = new Uint8Array((x.length / 32) * 34)
    const bounds: number[] = []
    for (let b = 0; b < x.length / 32; b++) {
      const blk = x.slice(32 * b, 32 * b + 32)
      const amax = Math.max(...blk.map(Math.abs))
      const d = amax / 127
      const dBits = f32ToF16(d)
      const d16 = half(dBits)
      putHalf(bytes, 34 * b, dBits)
      blk.forEach((v, j) => (bytes[34 * b + 2 + j] = Math.max(-127, Math.min(127, Math.round(v / d16))) & 0xff))
      bounds.push(d16 / 2 + 127 * Math.abs(d - d16) + 1e-12)
    }
    const out = dequantize('Q8_0', bytes, x.length)
    x.forEach((v, i) => {
      expect(Math.abs(out[i]! - v)).toBeLessThanOrEqual(bounds[i >> 5]!)
    })
  })

  it('Q4_0: the signed max maps to −8·d exactly, the rest within half a step', () => {
    const bytes = new Uint8Array((x.length / 32) * 18)
    let maxErr = 0
    for (let b = 0; b < x.length / 32; b++) {
      const blk = x.slice(32 * b, 32 * b + 32)
      let max = 0
      for (const v of blk) if (Math.abs(v) > Math.abs(max)) max = v
      const dBits = f32ToF16(max / -8)
      const d16 = half(dBits)
      putHalf(bytes, 18 * b, dBits)
      const q = blk.map((v) => Math.max(0, Math.min(15, Math.round(v / d16) + 8)))
      for (let j = 0; j < 16; j++) bytes[18 * b + 2 + j] = q[j]! | (q[j + 16]! << 4)
      const out = dequantize('Q4_0', bytes.subarray(18 * b, 18 * b + 18), 32)
      blk.forEach((v, j) => {
        const err = Math.abs(out[j]! - v)
        // Clamping at q = 15 costs up to one step (only values near −max); others ≤ half a step.
        const bound = (Math.round(v / d16) + 8 > 15 ? 1 : 0.5) * Math.abs(d16) + 8 * Math.abs(max / -8 - d16) + 1e-12
        expect(err).toBeLessThanOrEqual(bound)
        maxErr = Math.max(maxErr, err / Math.abs(d16))
      })
      expect(out[blk.indexOf(max)]).toBe(Math.fround(-8 * d16))
    }
    expect(maxErr).toBeGreaterThan(0.3) // the data really exercises rounding
  })
})

describe('GGUF files: header, metadata, tensors', () => {
  const everyType: GgufWriterOptions['kv'] = [
    ['general.architecture', str('testarch')],
    ['u8', { type: 'UINT8', value: 200 }],
    ['i8', { type: 'INT8', value: -5 }],
    ['u16', { type: 'UINT16', value: 60000 }],
    ['i16', { type: 'INT16', value: -30000 }],
    ['u32', { type: 'UINT32', value: 4_000_000_000 }],
    ['i32', { type: 'INT32', value: -2_000_000_000 }],
    ['f32', { type: 'FLOAT32', value: 1.5 }],
    ['t', { type: 'BOOL', value: true }],
    ['f', { type: 'BOOL', value: false }],
    ['s', str('héllo ✓')],
    ['empty', str('')],
    ['u64', { type: 'UINT64', value: 2n ** 53n - 1n }],
    ['u64big', { type: 'UINT64', value: 2n ** 60n }],
    ['i64', { type: 'INT64', value: -123456789012n }],
    ['f64', { type: 'FLOAT64', value: Math.PI }],
    ['a.i32', arr('INT32', [1, -2, 3])],
    ['a.str', arr('STRING', ['a', 'bb', ''])],
    ['a.nested', arr('ARRAY', [{ itemType: 'UINT8', items: [1, 2] }, { itemType: 'STRING', items: ['x'] }])],
    ['a.long', arr('UINT16', Array.from({ length: 100 }, (_, i) => i))],
    ['a.longstr', arr('STRING', Array.from({ length: 70 }, (_, i) => `tok${i}`))],
    ['a.nestedlong', arr('ARRAY', [{ itemType: 'FLOAT64', items: Array.from({ length: 65 }, () => 1) }])],
    ['a.empty', arr('FLOAT32', [])],
    ['after', u32(7)],
  ]

  for (const version of [2, 3]) {
    it(`v${version}: reads metadata of every value type`, async () => {
      const path = await gguf({ version, kv: everyType })
      const m = await ggufFormat.open(path)
      try {
        expect(m.format).toBe('gguf')
        expect(m.architecture).toBe('testarch')
        expect(m.config).toBeNull()
        expect(m.tensors).toEqual([])
        const md = m.metadata
        expect(md['GGUF.version']).toBe(version)
        expect(md).toMatchObject({
          u8: 200, i8: -5, u16: 60000, i16: -30000, u32: 4_000_000_000, i32: -2_000_000_000, f32: 1.5,
          t: true, f: false, s: 'héllo ✓', empty: '', u64: Number.MAX_SAFE_INTEGER, u64big: '1152921504606846976',
          i64: -123456789012, f64: Math.PI, after: 7,
        })
        expect(md['a.i32']).toEqual([1, -2, 3])
        expect(md['a.str']).toEqual(['a', 'bb', ''])
        expect(md['a.nested']).toEqual([[1, 2], ['x']])
        expect(md['a.long']).toEqual({ type: 'array', itemType: 'UINT16', length: 100 })
        expect(md['a.longstr']).toEqual({ type: 'array', itemType: 'STRING', length: 70 })
        expect(md['a.nestedlong']).toEqual([{ type: 'array', itemType: 'FLOAT64', length: 65 }])
        expect(md['a.empty']).toEqual([])
      } finally {
        await m.close()
      }
    })
  }

  it('reverses ne into shape and reads rows of F32, F16 and BF16 tensors', async () => {
    const values = Array.from({ length: 24 }, (_, i) => i * 0.75 - 7)
    const halfs = values.map((v) => f32ToF16(v))
    const bhalfs = values.map((v) => f32ToBF16(v))
    const path = await gguf({
      tensors: [
        { name: 'w3d', ne: [4, 3, 2], type: F32, data: f32Bytes(values) },
        { name: 'vec', ne: [5], type: F32, data: f32Bytes([1, 2, 3, 4, 5]) },
        { name: 'h', ne: [6, 4], type: F16, data: new Uint8Array(new Uint16Array(halfs).buffer) },
        { name: 'bf', ne: [8, 3], type: BF16, data: new Uint8Array(new Uint16Array(bhalfs).buffer) },
      ],
    })
    const m = await ggufFormat.open(path)
    try {
      const t = Object.fromEntries(m.tensors.map((e) => [e.name, e]))
      expect(t.w3d).toMatchObject({ shape: [2, 3, 4], dtype: 'F32', byteLength: 96, decodable: true, file: path })
      expect(t.vec!.shape).toEqual([5])
      expect(t.h).toMatchObject({ shape: [4, 6], dtype: 'F16', byteLength: 48 })
      expect(t.bf).toMatchObject({ shape: [3, 8], dtype: 'BF16' })
      for (const e of m.tensors) expect(e.byteOffset % 32).toBe(0)
      // Rows of the [2,3,4] tensor are its 6 inner vectors of 4, in memory order.
      expect([...(await m.readRows('w3d', 0, 6))]).toEqual(values)
      expect([...(await m.readRows('w3d', 4, 6))]).toEqual(values.slice(16, 24))
      expect([...(await m.readRows('w3d', 2, 2))]).toEqual([])
      expect([...(await m.readRows('h', 1, 3))]).toEqual(halfs.slice(6, 18).map(half))
      expect([...(await m.readRows('bf', 0, 3))]).toEqual(values) // these values are exact in bf16
      expect([...(await m.readRaw('vec'))]).toEqual([...f32Bytes([1, 2, 3, 4, 5])])
      await expectFormatError(m.readRows('w3d', 5, 7), path, "'w3d'", 'row range')
      await expectFormatError(m.readRows('nope', 0, 1), path, "'nope'", 'no such tensor')
    } finally {
      await m.close()
    }
  })

  it('honours a custom general.alignment and reads quantized rows', async () => {
    const a = handBlock('Q4_K', 11)
    const b = handBlock('Q4_K', 12)
    const q80 = handBlock('Q8_0', 13)
    const qdata = new Uint8Array(288)
    qdata.set(a.bytes, 0)
    qdata.set(b.bytes, 144)
    const path = await gguf({
      alignment: 64,
      tensors: [
        { name: 'odd', ne: [3], type: F32, data: f32Bytes([1, 2, 3]) }, // 12 bytes: forces padding
        { name: 'blk.0.ffn_down.weight', ne: [256, 2], type: Q4_K, data: qdata },
        { name: 'q8', ne: [32], type: Q8_0, data: q80.bytes },
      ],
    })
    const m = await ggufFormat.open(path)
    try {
      expect(m.metadata['general.alignment']).toBe(64)
      const q = m.tensors.find((t) => t.name === 'blk.0.ffn_down.weight')!
      expect(q).toMatchObject({ dtype: 'Q4_K', shape: [2, 256], byteLength: 288, decodable: true })
      for (const t of m.tensors) expect(t.byteOffset % 64).toBe(0)
      const row1 = await m.readRows(q.name, 1, 2)
      expect([...row1]).toEqual(b.expected.map(Math.fround))
      const both = await m.readRows(q.name, 0, 2)
      expect([...both]).toEqual([...a.expected, ...b.expected].map(Math.fround))
      expect([...(await m.readRows('q8', 0, 1))]).toEqual(q80.expected.map(Math.fround))
    } finally {
      await m.close()
    }
  })

  it('lists undecodable types and refuses to decode them', async () => {
    const path = await gguf({ tensors: [{ name: 'iq', ne: [256, 1], type: IQ2_XXS, data: new Uint8Array(66) }] })
    const m = await ggufFormat.open(path)
    try {
      expect(m.tensors[0]).toMatchObject({ dtype: 'IQ2_XXS', decodable: false, byteLength: 66 })
      expect((await m.readRaw('iq')).length).toBe(66)
      await expectFormatError(m.readRows('iq', 0, 1), path, "'iq'", 'cannot decode type IQ2_XXS')
    } finally {
      await m.close()
    }
  })

  it('parses a 150k-entry token array through growing windows without reading tensor data', async () => {
    const tokens = Array.from({ length: 150_000 }, (_, i) => `▁tok${i}`)
    const big = new Uint8Array(4 * 1024 * 1024) // 4 MB of tensor data after the header
    const path = await gguf({
      kv: [
        ['general.architecture', str('llama')],
        ['tokenizer.ggml.tokens', arr('STRING', tokens)],
        ['tokenizer.ggml.scores', arr('FLOAT32', tokens.map(() => 0))],
        ['tail.key', str('after the big arrays')],
        ...llamaKeys('llama'),
      ],
      tensors: [{ name: 'token_embd.weight', ne: [16, 65536], type: F32, data: big }],
    })
    const spy = vi.spyOn(FileByteSource.prototype, 'read')
    try {
      const m = await ggufFormat.open(path)
      const reads = spy.mock.calls.map(([offset, length]) => [offset, length] as const)
      const dataStart = m.tensors[0]!.byteOffset
      expect(dataStart).toBeGreaterThan(2 * 1024 * 1024)
      expect(reads.length).toBeGreaterThan(2) // it really read window after window
      // Reading stops within one window (≤ 1 MiB) after the header, well short of the 4 MB of data.
      for (const [offset, length] of reads) expect(offset + length).toBeLessThanOrEqual(dataStart + 1024 * 1024)
      expect(reads.reduce((s, [, l]) => s + l, 0)).toBeLessThan(dataStart * 1.25 + 1024 * 1024)
      expect(m.metadata['tokenizer.ggml.tokens']).toEqual({ type: 'array', itemType: 'STRING', length: 150_000 })
      expect(m.metadata['tail.key']).toBe('after the big arrays')
      expect(m.config!.vocabSize).toBe(150_000)
      spy.mockClear()
      await m.readRows('token_embd.weight', 10, 12)
      expect(spy.mock.calls.map(([o, l]) => [o, l])).toEqual([[dataStart + 10 * 64, 2 * 64]])
      await m.close()
    } finally {
      spy.mockRestore()
    }
  })
})

function llamaKeys(arch: string): NonNullable<GgufWriterOptions['kv']> {
  return [
    [`${arch}.embedding_length`, u32(64)],
    [`${arch}.feed_forward_length`, u32(176)],
    [`${arch}.block_count`, u32(2)],
    [`${arch}.attention.head_count`, u32(8)],
    [`${arch}.attention.head_count_kv`, u32(2)],
    [`${arch}.attention.layer_norm_rms_epsilon`, f32(1e-5)],
    [`${arch}.context_length`, u32(4096)],
  ]
}

describe('ModelConfig from GGUF metadata', () => {
  it('llama: required keys, defaults, tied embeddings from the missing output.weight', async () => {
    const path = await gguf({
      kv: [['general.architecture', str('llama')], ...llamaKeys('llama')],
      tensors: [{ name: 'token_embd.weight', ne: [64, 10], type: F32, data: new Uint8Array(64 * 10 * 4) }],
    })
    const m = await ggufFormat.open(path)
    await m.close()
    expect(m.tokenizerPath).toBeNull()
    expect(m.config).toEqual({
      architecture: 'llama', hiddenSize: 64, intermediateSize: 176, numLayers: 2, numHeads: 8, numKvHeads: 2,
      headDim: 8, vocabSize: 10, rmsNormEps: Math.fround(1e-5), ropeTheta: 10000, maxPositionEmbeddings: 4096,
      tieWordEmbeddings: true, attentionBias: false, dtype: null, ropeScaling: null,
    })
  })

  it('qwen2: attention bias, untied output, key_length head dim, rope base, token count vocab', async () => {
    const path = await gguf({
      kv: [
        ['general.architecture', str('qwen2')],
        ...llamaKeys('qwen2'),
        ['qwen2.attention.key_length', u32(16)],
        ['qwen2.rope.freq_base', f32(1_000_000)],
        ['qwen2.rope.scaling.type', str('yarn')],
        ['qwen2.rope.scaling.factor', f32(4)],
        ['tokenizer.ggml.tokens', arr('STRING', ['a', 'b', 'c'])],
      ],
      tensors: [
        { name: 'output.weight', ne: [64, 3], type: F32, data: new Uint8Array(64 * 3 * 4) },
        { name: 'blk.0.attn_q.bias', ne: [64], type: F32, data: new Uint8Array(256) },
      ],
    })
    const m = await ggufFormat.open(path)
    await m.close()
    expect(m.config).toMatchObject({
      architecture: 'qwen2', headDim: 16, ropeTheta: 1_000_000, vocabSize: 3,
      tieWordEmbeddings: false, attentionBias: true, ropeScaling: { rope_type: 'yarn', factor: 4 },
    })
  })

  it('mistral with a missing required key is an error; unknown architectures give config null', async () => {
    const keys = llamaKeys('mistral').filter(([k]) => k !== 'mistral.block_count')
    const path = await gguf({ kv: [['general.architecture', str('mistral')], ...keys] })
    await expectFormatError(ggufFormat.open(path), path, 'mistral.block_count')
    const other = await gguf({ kv: [['general.architecture', str('gpt2')], ...llamaKeys('gpt2')] })
    const m = await ggufFormat.open(other)
    await m.close()
    expect(m.architecture).toBe('gpt2')
    expect(m.config).toBeNull()
  })
})

describe('invalid GGUF config values are refused up front', () => {
  it('epsilon, RoPE base and scaling factor must be positive; heads must divide', async () => {
    const keys = [...llamaKeys('llama'), ['llama.vocab_size', u32(10)]] as NonNullable<GgufWriterOptions['kv']>
    const withKey = (key: string, value: ReturnType<typeof f32>) => [
      ['general.architecture', str('llama')] as const,
      ...keys.filter(([k]) => k !== key),
      [key, value] as const,
    ] as NonNullable<GgufWriterOptions['kv']>
    const cases: [string, ReturnType<typeof f32>, string][] = [
      ['llama.attention.layer_norm_rms_epsilon', f32(-1), "metadata 'llama.attention.layer_norm_rms_epsilon' = -1 is not a positive number"],
      ['llama.attention.layer_norm_rms_epsilon', f32(0), "'llama.attention.layer_norm_rms_epsilon' = 0 is not a positive number"],
      ['llama.attention.layer_norm_rms_epsilon', str('1e-5'), "'llama.attention.layer_norm_rms_epsilon' = \"1e-5\" is not a positive number"],
      ['llama.rope.freq_base', f32(0), "'llama.rope.freq_base' = 0 is not a positive number"],
      ['llama.rope.scaling.factor', f32(0), "'llama.rope.scaling.factor' = 0 is not a positive number"],
      ['llama.attention.head_count', u32(6), "metadata 'llama.embedding_length' 64 is not divisible by 'llama.attention.head_count' 6"],
      ['llama.attention.head_count_kv', u32(3), "metadata 'llama.attention.head_count' 8 is not a multiple of 'llama.attention.head_count_kv' 3"],
      ['llama.block_count', u32(0), "'llama.block_count' = 0 is not a positive integer"],
    ]
    for (const [key, value, message] of cases) {
      const path = await gguf({ kv: withKey(key, value) })
      await expectFormatError(ggufFormat.open(path), path, message)
    }
  })
})

describe('malformed GGUF files', () => {
  const oneTensor = (over: Partial<GgufWriterOptions> = {}): GgufWriterOptions => ({
    kv: [['general.name', str('x')]],
    tensors: [{ name: 'w', ne: [8], type: F32, data: f32Bytes([1, 2, 3, 4, 5, 6, 7, 8]) }],
    ...over,
  })

  it('matches on the magic only', () => {
    expect(ggufFormat.match(new TextEncoder().encode('GGUF\x03\0\0\0'))).toBe(true)
    expect(ggufFormat.match(new TextEncoder().encode('GGUG'))).toBe(false)
    expect(ggufFormat.match(new Uint8Array(2))).toBe(false)
  })

  it('wrong magic', async () => {
    const bytes = buildGguf(oneTensor())
    bytes[3] = 0x47
    const p = await gguf(bytes)
    await expectFormatError(ggufFormat.open(p), p, 'not a GGUF file', '47 47 55 47')
  })

  it('unsupported versions and big-endian files', async () => {
    let p = await gguf(oneTensor({ version: 1 }))
    await expectFormatError(ggufFormat.open(p), p, 'unsupported GGUF version 1')
    p = await gguf(oneTensor({ version: 4 }))
    await expectFormatError(ggufFormat.open(p), p, 'unsupported GGUF version 4')
    p = await gguf(oneTensor({ bigEndian: true }))
    await expectFormatError(ggufFormat.open(p), p, 'big-endian')
  })

  it('truncated header', async () => {
    const bytes = buildGguf(oneTensor())
    for (const cut of [3, 10, 30, 45]) {
      const p = await gguf(bytes.subarray(0, cut))
      await expectFormatError(ggufFormat.open(p), p, 'truncated')
    }
  })

  it('truncated tensor data names the tensor', async () => {
    const p = await gguf(oneTensor())
    const size = buildGguf(oneTensor()).length
    await truncate(p, size - 4)
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'past the end of the file', 'truncated?')
  })

  it('tensor offset out of range, misaligned, or overlapping', async () => {
    let p = await gguf(oneTensor({ tensors: [{ name: 'w', ne: [8], type: F32, data: new Uint8Array(32), offsetOverride: 1 << 20 }] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'beyond the end of the file')
    p = await gguf(oneTensor({ tensors: [{ name: 'w', ne: [8], type: F32, data: new Uint8Array(32), offsetOverride: 8 }] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'not a multiple of the alignment 32')
    p = await gguf({
      tensors: [
        { name: 'a', ne: [16], type: F32, data: new Uint8Array(64) },
        { name: 'b', ne: [8], type: F32, data: new Uint8Array(32), offsetOverride: 32 },
      ],
    })
    await expectFormatError(ggufFormat.open(p), p, "tensor 'b'", "overlaps tensor 'a'")
  })

  it('unknown type id, bad row length, too many dims, duplicate names', async () => {
    let p = await gguf(oneTensor({ tensors: [{ name: 'w', ne: [8], type: 99, data: new Uint8Array(32) }] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'unknown ggml type id 99')
    p = await gguf(oneTensor({ tensors: [{ name: 'w', ne: [32], type: 4, data: new Uint8Array(32) }] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'unknown ggml type id 4', 'Q4_2')
    p = await gguf(oneTensor({ tensors: [{ name: 'w', ne: [48, 2], type: Q4_0, data: new Uint8Array(64) }] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'ne[0] = 48', 'block size 32')
    p = await gguf(oneTensor({ tensors: [{ name: 'w', ne: [1, 1, 1, 1, 1], type: F32, data: new Uint8Array(4) }] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", '5 dimensions')
    const t = { name: 'w', ne: [8], type: F32, data: new Uint8Array(32) }
    p = await gguf(oneTensor({ tensors: [t, t] }))
    await expectFormatError(ggufFormat.open(p), p, "tensor 'w'", 'twice')
  })

  it('absurd counts and lengths are caught before allocating', async () => {
    const base = buildGguf(oneTensor())
    const patch = (at: number, v: bigint): Uint8Array => {
      const b = base.slice()
      new DataView(b.buffer).setBigUint64(at, v, true)
      return b
    }
    // Header: magic 0, version 4, n_tensors 8, n_kv 16, first key length 24.
    let p = await gguf(patch(16, 1n << 40n))
    await expectFormatError(ggufFormat.open(p), p, '1099511627776 metadata entries', 'cannot fit')
    p = await gguf(patch(8, 1n << 50n))
    await expectFormatError(ggufFormat.open(p), p, 'tensors', 'cannot fit')
    p = await gguf(patch(24, 1n << 40n))
    await expectFormatError(ggufFormat.open(p), p, 'string length 1099511627776', 'exceeds the rest of the file')
    p = await gguf(patch(24, 1n << 62n))
    await expectFormatError(ggufFormat.open(p), p, 'implausibly large')
    // Array length: key "a" (8+1 bytes) at 24, type at 33, item type at 37, count at 41.
    const withArray = buildGguf({ kv: [['a', arr('STRING', ['x', 'y'])]] })
    new DataView(withArray.buffer).setBigUint64(41, 1n << 36n, true)
    p = await gguf(withArray)
    await expectFormatError(ggufFormat.open(p), p, "metadata 'a'", 'array length 68719476736', 'cannot fit')
  })

  it('bad metadata: unknown value type, duplicate key, bad alignment', async () => {
    const b = buildGguf({ kv: [['k', u32(1)]] })
    new DataView(b.buffer).setUint32(33, 77, true) // value type of key "k"
    let p = await gguf(b)
    await expectFormatError(ggufFormat.open(p), p, "metadata key 'k'", 'unknown value type 77')
    p = await gguf({ kv: [['k', u32(1)], ['k', u32(2)]] })
    await expectFormatError(ggufFormat.open(p), p, "duplicate metadata key 'k'")
    p = await gguf(oneTensor({ alignment: 48 }))
    await expectFormatError(ggufFormat.open(p), p, 'general.alignment must be a power of two')
  })
})
