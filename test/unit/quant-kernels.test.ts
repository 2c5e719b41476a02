import { describe, expect, it } from 'vitest'
import * as v from 'valibot'
import { QuantParamError, type QuantizeHooks } from '../../worker/quant/contract'
import { type GptqParams, gptqParamsSchema, gptqQuantize } from '../../worker/quant/gptq'
import { inverseHessianFactor } from '../../worker/quant/hessian-inverse'
import { IntGroupTensor } from '../../worker/quant/int-grid'
import { F16Array } from '../../worker/quant/common'
import { packCodes, unpackCodes } from '../../worker/quant/packing'
import { type RtnParams, type RtnTensor, quantizeRtn, rtnSchema } from '../../worker/quant/rtn'
import { QUADRATIC_CHUNK_ROWS, quadraticRowsWasm, quantWasmAvailable } from '../../worker/quant/wasm-kernels'
import { quadraticForm, rowsQuadraticForm } from '../../worker/quant/gram'
import { awqParamsSchema, awqQuantize } from '../../worker/quant/awq'
import { quantizeRtnF16 } from '../../worker/quant/rtn-f16'
import { f16ToF32, f32ToF16 } from '../../worker/formats/dtypes'
import { calibrationOf, correlatedActivations, randomWeight, seededRandom } from '../helpers/quant-calibration'

/**
 * The WASM SIMD kernels (worker/kernels/assembly/quant.ts via worker/quant/wasm-kernels.ts)
 * against the plain-TS loops they replace: every stored bit (codes, fp16 scale/minimum bits,
 * zero points) and every dequantized float must be identical, on data chosen to hit the
 * places where float32 SIMD arithmetic could drift from the TS double-then-round code.
 */

const TS: QuantizeHooks = { kernel: 'ts' }
const WASM: QuantizeHooks = { kernel: 'wasm' }

/** Float32 bit patterns, so −0 ≠ +0 and NaN = NaN. */
const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length)

function expectSameBits(a: Float32Array, b: Float32Array, what: string): void {
  expect(a.length, what).toBe(b.length)
  const x = bitsOf(a)
  const y = bitsOf(b)
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) throw new Error(`${what}: element ${i} differs: ${a[i]} (0x${x[i]!.toString(16)}) vs ${b[i]} (0x${y[i]!.toString(16)})`)
  }
}

function expectSameBytes(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  expect(a.length, what).toBe(b.length)
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) throw new Error(`${what}: element ${i} differs: ${a[i]} vs ${b[i]}`)
}

/** Weights that stress the kernels: ties, ±0, constant and tiny groups, huge values. */
function adversarialWeight(rows: number, cols: number, seed: number): Float32Array {
  const rand = seededRandom(seed)
  const w = randomWeight(rows, cols, rand, 0.05)
  for (let i = 0; i < w.length; i++) {
    const u = rand()
    if (u < 0.03) w[i] = 0
    else if (u < 0.06) w[i] = -0
    else if (u < 0.08) w[i] = Math.round(w[i]! * 64) / 64 // on-grid values: exact halves after scaling
    else if (u < 0.09) w[i] = w[i]! * 1e-6
    else if (u < 0.095) w[i] = (rand() < 0.5 ? -1 : 1) * 3000 * rand()
  }
  // Whole rows of special groups: constant, all zeros (−0 first / +0 first), tiny range, one huge value.
  const fillRow = (r: number, f: (j: number) => number) => {
    if (r < rows) for (let j = 0; j < cols; j++) w[r * cols + j] = f(j)
  }
  fillRow(0, () => 0.125)
  fillRow(1, (j) => (j % 3 === 0 ? -0 : 0))
  fillRow(2, (j) => (j % 2 === 0 ? 0 : -0))
  fillRow(3, (j) => 1 + (j % 5) * 2 ** -22)
  fillRow(4, (j) => (j === 1 ? 60000 : (j % 7) * 1e-3))
  fillRow(5, (j) => (j % 4) * 2 ** -27) // below fp16's smallest subnormal: scale 0
  fillRow(6, (j) => (j % 2 ? 0.49999997 : -0.49999997) * (j % 3 ? 1 : 2)) // x + 0.5 rounding traps
  fillRow(7, (j) => (j % 3 === 0 ? 0 : 0.5 + j * 1e-3)) // minimum exactly 0, with +0 first
  return w
}

const rtnParams = (p: Partial<RtnParams>): RtnParams => v.parse(rtnSchema, p)

function rtnCodes(t: RtnTensor): Uint8Array {
  return unpackCodes(t.codes, t.params.bits, 0, t.rows * t.cols, new Uint8Array(t.rows * t.cols))
}

describe.runIf(quantWasmAvailable())('RTN: WASM kernel = TS loop, bit for bit', () => {
  const shapes: [number, number, number][] = [
    // rows, cols, group
    [9, 64, 32],
    [12, 130, 13], // group not a multiple of 4
    [10, 7, 0], // per row, 7 columns
    [17, 96, 96],
    [33, 256, 128],
    [8, 5, 5],
  ]
  for (const [rows, cols, group] of shapes) {
    for (const bits of [2, 3, 4, 5, 8]) {
      for (const sym of [false, true]) {
        it(`${rows}×${cols} group ${group}, ${bits} bits, ${sym ? 'symmetric' : 'asymmetric'}: codes, fp16 bits and dequantized values`, () => {
          const w = adversarialWeight(rows, cols, rows * 1000 + cols * 10 + bits)
          const p = rtnParams({ bits, group, sym })
          const a = quantizeRtn(w, rows, cols, p, TS)
          const b = quantizeRtn(w, rows, cols, p, WASM)
          expectSameBytes(b.codes, a.codes, 'packed codes')
          expectSameBytes(b.scales.bits, a.scales.bits, 'scale fp16 bits')
          expectSameBits(b.scales.values, a.scales.values, 'scale values')
          if (!sym) {
            expectSameBytes(b.mins!.bits, a.mins!.bits, 'minimum fp16 bits')
            expectSameBits(b.mins!.values, a.mins!.values, 'minimum values')
          }
          const full = a.dequantizeRows(0, rows)
          expectSameBits(b.dequantizeRows(0, rows), full, 'dequantized (WASM tensor, WASM kernel)')
          // A WASM-made tensor read through the TS loop and odd row slices through the WASM loop.
          const viaTs = new (b.constructor as typeof RtnTensor)(rows, cols, p, b.groupCols, b.codes, b.scales, b.mins, 'ts')
          expectSameBits(viaTs.dequantizeRows(0, rows), full, 'dequantized (TS loop)')
          const r0 = Math.min(1, rows - 1)
          const r1 = Math.min(rows, r0 + 3)
          expectSameBits(b.dequantizeRows(r0, r1), full.subarray(r0 * cols, r1 * cols), `rows [${r0}, ${r1})`)
        })
      }
    }
  }

  it('the special groups do what rtn.ts defines (so the comparison above is not between two wrong answers)', () => {
    const rows = 8
    const cols = 12
    const w = adversarialWeight(rows, cols, 5)
    const t = quantizeRtn(w, rows, cols, rtnParams({ bits: 4, group: 0 }), WASM)
    const codes = rtnCodes(t)
    // Constant row: scale 0, minimum = the value, codes 0, dequantizes to the value.
    expect(t.scales.values[0]).toBe(0)
    expect(t.mins!.values[0]).toBe(0.125)
    expect(Array.from(codes.subarray(0, cols))).toEqual(new Array(cols).fill(0))
    // All-zero rows keep the sign of the row's first zero in the stored minimum.
    expect(t.mins!.bits[1]).toBe(0x8000)
    expect(t.mins!.bits[2]).toBe(0x0000)
    // Below fp16's range: the scale rounds to 0 and every code is 0.
    expect(t.scales.bits[5]).toBe(0)
    // A huge value: scale = f16(f32(60000 − 0)/15) = 4000.
    expect(t.scales.values[4]).toBe(4000)
    expect(codes[4 * cols + 1]).toBe(15)
  })

  it('symmetric rounding of f32(w/s) just below 0.5 goes down, as in double arithmetic', () => {
    // w/s = 0.49999997 exactly: float32 (x + 0.5) would round up to 1.
    const s = 2 ** -4 // absmax 7·s with 4 bits → s exactly
    const x = Math.fround(0.49999997)
    const w = Float32Array.from([7 * s, x * s, -x * s, 0.5 * s, -0.5 * s, 1.5 * s, -2.5 * s, 0])
    const t = quantizeRtn(w, 1, w.length, rtnParams({ bits: 4, group: 0, sym: true }), WASM)
    expect(t.scales.values[0]).toBe(s)
    // Codes are q + 7: 7, 0, 0, ±1 (half away from zero), 2, −3.
    expect(Array.from(rtnCodes(t))).toEqual([14, 7, 7, 8, 6, 9, 4, 7])
  })

  it('NaN/Inf weights and fp16 overflow fail with the TS errors', () => {
    const w = randomWeight(4, 32, seededRandom(3))
    w[2 * 32 + 5] = NaN
    const p = rtnParams({ bits: 4, group: 16 })
    expect(() => quantizeRtn(w, 4, 32, p, WASM)).toThrow(QuantParamError)
    expect(() => quantizeRtn(w, 4, 32, p, WASM)).toThrow('weight[2, 5] is NaN')
    w[2 * 32 + 5] = 0
    w[3 * 32 + 20] = -1e6
    expect(() => quantizeRtn(w, 4, 32, p, WASM)).toThrow('scale of row 3 group 1 = 66666.671875 does not fit fp16')
    w.fill(-70000, 3 * 32 + 16, 3 * 32 + 32)
    w[3 * 32 + 17] = -69990
    expect(() => quantizeRtn(w, 4, 32, p, WASM)).toThrow('minimum of row 3 group 1 = -70000 does not fit fp16')
    expect(() => quantizeRtn(w, 4, 32, rtnParams({ bits: 4, group: 20 }), WASM)).toThrow('group 20 does not divide the row length 32')
  })

  it('progress reaches rows/rows and a cancelled signal stops it', () => {
    const rows = 4000
    const cols = 512
    const w = randomWeight(rows, cols, seededRandom(9))
    const seen: number[] = []
    quantizeRtn(w, rows, cols, rtnParams({}), { kernel: 'wasm', onProgress: (d) => seen.push(d) })
    expect(seen.length).toBeGreaterThan(1)
    expect(seen.at(-1)).toBe(rows)
    const ac = new AbortController()
    ac.abort()
    expect(() => quantizeRtn(w, rows, cols, rtnParams({}), { kernel: 'wasm', signal: ac.signal })).toThrow(/abort/i)
  })
})

describe.runIf(quantWasmAvailable())('bit packing in WASM = packing.ts', () => {
  it('every width 2–8, odd lengths, through the RTN kernel path (codes covered above) and unpack from odd offsets', () => {
    // Packed streams are compared above; here unpack from an offset that is not byte aligned.
    const rand = seededRandom(11)
    for (const bits of [2, 3, 4, 5, 6, 7, 8]) {
      const n = 1000 + bits
      const codes = Uint8Array.from({ length: n }, () => Math.floor(rand() * (1 << bits)))
      const packed = packCodes(codes, bits)
      const back = unpackCodes(packed, bits, 0, n, new Uint8Array(n))
      expectSameBytes(back, codes, `${bits}-bit round trip`)
    }
  })
})

const gptqParams = (p: Partial<GptqParams>): GptqParams => v.parse(gptqParamsSchema, p)
const intCodes = (t: IntGroupTensor) => unpackCodes(t.codes, t.bits, 0, t.rows * t.cols, new Uint8Array(t.rows * t.cols))

describe.runIf(quantWasmAvailable())('GPTQ: WASM column loop = TS loop, bit for bit', () => {
  const cases: { name: string; rows: number; cols: number; p: Partial<GptqParams> }[] = [
    { name: '4 bits g16 asym, blocks of 32 (lazy updates across blocks)', rows: 13, cols: 96, p: { bits: 4, group: 16, blocksize: 32 } },
    { name: '3 bits per row, sym, odd width', rows: 7, cols: 45, p: { bits: 3, group: 0, sym: true, blocksize: 8 } },
    { name: '4 bits g32 actorder (static groups)', rows: 10, cols: 64, p: { bits: 4, group: 32, actorder: true, blocksize: 16 } },
    { name: '2 bits g8, block 12 rounded to the group', rows: 5, cols: 48, p: { bits: 2, group: 8, blocksize: 12 } },
    { name: '8 bits g128, one block', rows: 6, cols: 128, p: { bits: 8, group: 128 } },
  ]
  for (const c of cases) {
    it(c.name, () => {
      const rand = seededRandom(c.rows * 31 + c.cols)
      const tokens = 3 * c.cols
      const X = correlatedActivations(tokens, c.cols, rand)
      const cal = calibrationOf(X, tokens, c.cols)
      // A dead input channel (zero column of XᵀX) and some exact zeros / on-grid weights.
      for (let j = 0; j < c.cols; j++) {
        cal.gram![3 * c.cols + j] = 0
        cal.gram![j * c.cols + 3] = 0
      }
      const w = randomWeight(c.rows, c.cols, rand)
      for (let i = 0; i < w.length; i += 7) w[i] = 0
      const p = gptqParams(c.p)
      const a = gptqQuantize(w, c.rows, c.cols, p, cal, TS)
      const b = gptqQuantize(w, c.rows, c.cols, p, cal, WASM)
      expectSameBytes(intCodes(b), intCodes(a), 'codes')
      expectSameBytes(b.scales.bits, a.scales.bits, 'scale fp16 bits')
      expectSameBits(b.scales.values, a.scales.values, 'scale values')
      expect(b.zeros === null).toBe(a.zeros === null)
      if (a.zeros) expectSameBytes(b.zeros!, a.zeros, 'packed zero points')
      expectSameBits(b.dequantizeRows(0, c.rows), a.dequantizeRows(0, c.rows), 'dequantized')
    })
  }
})

describe.runIf(quantWasmAvailable())("AWQ's scale-search error: WASM SIMD kernel = rowsQuadraticForm, bit for bit, and ≈ quadraticForm", () => {
  it('odd and even widths, zero errors, a zero Gram row, more rows than a chunk', () => {
    for (const [rows, cols] of [[5, 7], [QUADRATIC_CHUNK_ROWS, 64], [3, 1], [2, 130]] as const) {
      const rand = seededRandom(rows * 17 + cols)
      const X = correlatedActivations(2 * cols + 3, cols, rand)
      const gram = calibrationOf(X, 2 * cols + 3, cols).gram!
      for (let j = 0; j < cols; j++) gram[(cols >> 1) * cols + j] = gram[j * cols + (cols >> 1)] = 0
      const E = new Float64Array(rows * cols).map(() => (rand() < 0.2 ? 0 : rand() - 0.5))
      const ts = new Float64Array(rows)
      const simd = new Float64Array(rows)
      rowsQuadraticForm(E, rows, cols, gram, ts)
      const k = quadraticRowsWasm(gram, cols)
      k.run(E, rows, simd)
      k.release()
      expectSameBytes(new Uint32Array(simd.buffer), new Uint32Array(ts.buffer), `${rows}×${cols}`)
      for (let r = 0; r < rows; r++) {
        // The same quantity as the one-lane loop, up to summation order.
        expect(Math.abs(ts[r]! - quadraticForm(E, r * cols, gram, cols, 0, cols))).toBeLessThanOrEqual(1e-12 * Math.max(1, Math.abs(ts[r]!)))
      }
    }
  })
  it('awqQuantize with either kernel: same α, scale-search errors, codes and scales', () => {
    const rows = 2 * QUADRATIC_CHUNK_ROWS + 5
    const cols = 96
    const rand = seededRandom(7)
    const X = correlatedActivations(3 * cols, cols, rand)
    const cal = calibrationOf(X, 3 * cols, cols)
    const w = randomWeight(rows, cols, rand)
    const p = v.parse(awqParamsSchema, { bits: 4, group: 32 })
    const a = awqQuantize(w, rows, cols, p, cal, TS)
    const b = awqQuantize(w, rows, cols, p, cal, WASM)
    expect(b.search.alpha).toBe(a.search.alpha)
    expectSameBytes(new Uint32Array(b.search.alphaErrors.buffer), new Uint32Array(a.search.alphaErrors.buffer), 'α errors')
    expectSameBytes(intCodes(b), intCodes(a), 'codes')
    expectSameBytes(b.scales.bits, a.scales.bits, 'scale fp16 bits')
  })
})

describe.runIf(quantWasmAvailable())('integer-grid dequantization (GPTQ/AWQ storage) in WASM = decodeRow', () => {
  for (const [bits, sym, withColumns] of [
    [4, false, true],
    [3, true, false],
    [8, false, false],
    [2, false, true],
  ] as const) {
    it(`${bits} bits, ${sym ? 'implicit zero' : 'stored zeros'}${withColumns ? ', per-column divisors (AWQ)' : ''}`, () => {
      const rand = seededRandom(bits * 7 + (sym ? 1 : 0))
      const rows = 11
      const cols = 60
      const g = 12
      const groups = rows * (cols / g)
      const codes = Uint8Array.from({ length: rows * cols }, () => Math.floor(rand() * (1 << bits)))
      const scales = new F16Array(groups)
      for (let i = 0; i < groups; i++) scales.set(i, rand() * 0.01 + (i % 5 === 0 ? 2 ** -24 : 0), () => 'scale')
      const zeros = sym ? null : Uint8Array.from({ length: groups }, () => Math.floor(rand() * (1 << bits)))
      let columnScales: F16Array | null = null
      if (withColumns) {
        columnScales = new F16Array(cols)
        for (let j = 0; j < cols; j++) columnScales.set(j, 0.1 + 3 * rand(), () => 's')
      }
      const make = (kernel: 'ts' | 'wasm') => new IntGroupTensor('awq', rows, cols, bits, g, codes, scales, zeros, columnScales, kernel)
      const full = make('ts').dequantizeRows(0, rows)
      // Independent decode from the stored values.
      for (const i of [0, 13, 59, 61, 655]) {
        const r = Math.floor(i / cols)
        const gi = r * (cols / g) + Math.floor((i % cols) / g)
        const z = zeros ? zeros[gi]! : 2 ** (bits - 1)
        const want = Math.fround((scales.values[gi]! * (codes[i]! - z)) / (columnScales ? columnScales.values[i % cols]! : 1))
        expect(full[i]).toBe(want)
      }
      expectSameBits(make('wasm').dequantizeRows(0, rows), full, 'all rows')
      expectSameBits(make('wasm').dequantizeRows(3, 8), full.subarray(3 * cols, 8 * cols), 'rows 3..8')
      expectSameBits(make('wasm').dequantizeRows(10, 11), full.subarray(10 * cols), 'last row')
    })
  }
})

describe.runIf(quantWasmAvailable())("GPTQ's inverse-Hessian factor in WASM = hessian-inverse.ts, bit for bit", () => {
  /** XᵀX of correlated activations plus a small diagonal: positive definite, realistic conditioning. */
  function hessian(n: number, seed: number): Float64Array {
    const rand = seededRandom(seed)
    const tokens = 2 * n + 5
    const cal = calibrationOf(correlatedActivations(tokens, n, rand), tokens, n)
    const H = Float64Array.from(cal.gram!, (x) => (2 * x) / tokens)
    for (let i = 0; i < n; i++) H[i * n + i] += 0.01
    return H
  }
  // Sizes around the kernel's panel (16), row block (4) and cancel chunk (32) boundaries.
  for (const n of [1, 2, 5, 16, 17, 37, 64, 65, 101, 130, 200]) {
    it(`n = ${n}`, () => {
      const H = hessian(n, n)
      const a = inverseHessianFactor(H, n, undefined, 'ts')
      const b = inverseHessianFactor(H, n, undefined, 'wasm')
      const ab = new Uint32Array(a.buffer)
      const bb = new Uint32Array(b.buffer)
      for (let i = 0; i < ab.length; i++) if (ab[i] !== bb[i]) throw new Error(`entry ${i >> 1} differs: ${a[i >> 1]} vs ${b[i >> 1]}`)
      // And it is the factor: (UᵀU)·H = I.
      if (n <= 37) {
        for (const [r, c] of [[0, 0], [n - 1, 0], [Math.floor(n / 2), n - 1]] as const) {
          let s = 0
          for (let k = 0; k < n; k++) {
            let uu = 0
            for (let m = 0; m < n; m++) uu += b[m * n + r]! * b[m * n + k]!
            s += uu * H[k * n + c]!
          }
          expect(s).toBeCloseTo(r === c ? 1 : 0, 6)
        }
      }
    })
  }
  it('a matrix that is not positive definite fails at the same column with the same pivot', () => {
    const n = 40
    const H = hessian(n, 3)
    H[20 * n + 20] = -1
    const err = (kernel: 'ts' | 'wasm') => {
      try {
        inverseHessianFactor(H, n, undefined, kernel)
      } catch (e) {
        return (e as Error).message
      }
      return 'no error'
    }
    expect(err('wasm')).toMatch(/not positive definite at column 20 /)
    expect(err('wasm')).toBe(err('ts'))
  })
  it('stops when cancelled', () => {
    const ac = new AbortController()
    ac.abort()
    expect(() => inverseHessianFactor(hessian(50, 1), 50, ac.signal, 'wasm')).toThrow(/abort/i)
  })
})

describe.runIf(quantWasmAvailable())('RTN from stored fp16 bits (kernel decodes) = RTN of the decoded floats', () => {
  /** Every finite fp16 pattern once (63,488 values), shuffled; `cols` a divisor. */
  function allFiniteHalves(seed: number): Uint16Array {
    const out: number[] = []
    for (let h = 0; h < 65536; h++) if ((h & 0x7c00) !== 0x7c00) out.push(h)
    const rand = seededRandom(seed)
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1))
      ;[out[i], out[j]] = [out[j]!, out[i]!]
    }
    return Uint16Array.from(out)
  }
  const decode = (h: Uint16Array) => Float32Array.from(h, (x) => f16ToF32(x))

  it('every finite fp16 value (subnormals, ±0, ±65504): pairs store their smaller value exactly as the minimum', () => {
    const h = allFiniteHalves(1)
    const rows = 62
    const cols = h.length / rows // 1024
    const p = rtnParams({ bits: 8, group: 2 })
    const a = quantizeRtn(decode(h), rows, cols, p, TS)
    const b = quantizeRtnF16(h, rows, cols, p, WASM)
    expectSameBytes(b.codes, a.codes, 'codes')
    expectSameBytes(b.scales.bits, a.scales.bits, 'scale bits')
    expectSameBytes(b.mins!.bits, a.mins!.bits, 'minimum bits')
    // The minimum of a pair of fp16 values is one of them, stored exactly (the decode is exact).
    for (let gi = 0; gi < h.length / 2; gi++) {
      const lo = Math.min(f16ToF32(h[2 * gi]!), f16ToF32(h[2 * gi + 1]!))
      expect(b.mins!.values[gi]).toBe(lo)
    }
  })

  it('symmetric 4-bit g32 on fp16 weights, odd shape remainder chunks', () => {
    const rand = seededRandom(4)
    const rows = 37
    const cols = 96
    const h = Uint16Array.from({ length: rows * cols }, () => f32ToF16((rand() - 0.5) * 0.2))
    const p = rtnParams({ bits: 4, group: 32, sym: true })
    const a = quantizeRtn(decode(h), rows, cols, p, TS)
    const b = quantizeRtnF16(h, rows, cols, p, WASM)
    expectSameBytes(b.codes, a.codes, 'codes')
    expectSameBytes(b.scales.bits, a.scales.bits, 'scale bits')
  })

  it('Inf and NaN patterns fail with the TS error', () => {
    const h = new Uint16Array(64).fill(0x3c00)
    h[37] = 0x7c00
    expect(() => quantizeRtnF16(h, 2, 32, rtnParams({ group: 32 }), WASM)).toThrow('weight[1, 5] is Infinity')
    h[37] = 0xfe01
    expect(() => quantizeRtnF16(h, 2, 32, rtnParams({ group: 32 }), WASM)).toThrow('weight[1, 5] is NaN')
  })
})

describe.runIf(quantWasmAvailable())('fp16 rounding of scales at exact ties', () => {
  it('minimums halfway between fp16 values round to even, and the largest that still fits', () => {
    // 1 + k·2^-11 for odd k lies exactly between two fp16 values; 65519.99 → 65504, 65520 → overflow.
    const ties = [1 + 2 ** -11, 1 + 3 * 2 ** -11, -(2 + 2 ** -10), 2 ** -25, 3 * 2 ** -25, 2 ** -14 + 2 ** -25, 65519.99]
    for (const t of ties) {
      const w = Float32Array.from([t, t + 0.5, t + 1, t + 0.25])
      const p = rtnParams({ bits: 4, group: 4 })
      const a = quantizeRtn(w, 1, 4, p, TS)
      const b = quantizeRtn(w, 1, 4, p, WASM)
      expect(b.mins!.bits[0], `min ${t}`).toBe(a.mins!.bits[0])
      expect(b.scales.bits[0], `scale for ${t}`).toBe(a.scales.bits[0])
    }
    expect(() => quantizeRtn(Float32Array.from([65520, 65521]), 1, 2, rtnParams({ bits: 4, group: 2 }), WASM)).toThrow('minimum of row 0 group 0 = 65520 does not fit fp16')
  })
})
