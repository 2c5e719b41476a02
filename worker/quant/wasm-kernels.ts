/**
 * The quantizers' WASM SIMD kernels (source: worker/kernels/assembly/quant.ts, loaded by
 * kernels/load-wasm.ts): RTN quantize + bit packing, unpack + dequantize, and GPTQ's column
 * loop. Each reproduces its plain-TS loop bit for bit (test/unit/quant-kernels.test.ts), so a
 * method picks the kernel by speed only: hooks.kernel 'wasm' forces it, 'ts' forces the TS
 * loop, unset takes WASM when the module loads.
 *
 * One instance per thread; JS owns its linear memory: every call lays its regions out from
 * PAGE upwards, grows the memory if needed, copies in, runs, copies out. No call is re-entered
 * (nothing here is async). An instance whose memory grew past RETAIN_BYTES (a GPTQ of a wide
 * layer holds its n×n factor there) is dropped after the call, so the memory goes back.
 */
import { compileKernel } from '../kernels/load-wasm'
import { packedBytes } from './contract'
import type { F16Array } from './common'

export type QuantKernelKind = 'ts' | 'wasm'

interface QuantExports {
  memory: WebAssembly.Memory
  rtnQuantize(src: number, rows: number, cols: number, g: number, bits: number, sym: number, codes: number, scaleBits: number, scaleVals: number, minBits: number, minVals: number): number
  decodeF16(src: number, n: number, dst: number): void
  packCodes(src: number, n: number, bits: number, dst: number): void
  unpackCodes(packed: number, bits: number, bit: number, count: number, dst: number): void
  dequantize(codes: number, rows: number, cols: number, g: number, mode: number, scales: number, offsets: number, zConst: number, colDiv: number, out: number): void
  gptqBlock(
    W: number,
    U: number,
    err: number,
    codes: number,
    perm: number,
    scaleVals: number,
    scaleBits: number,
    zeros: number,
    rows: number,
    n: number,
    i1: number,
    i2: number,
    bs: number,
    g: number,
    bits: number,
    sym: number,
    staticGroups: number,
  ): number
  gptqLazy(W: number, U: number, err: number, rows: number, n: number, i1: number, i2: number, bs: number): void
  badScale: { value: number }
  choleskyPanel(A: number, n: number, j0: number, j1: number): number
  invertUpperRows(A: number, v: number, n: number, i0: number, i1: number): void
  badPivot: { value: number }
  quadraticRows(E: number, rows: number, cols: number, G: number, out: number): void
}

const PAGE = 65536
const RETAIN_BYTES = 256 << 20
/** Floats per RTN/dequantize chunk (4 MB of float32): one chunk's regions stay in L2/L3. */
const CHUNK_FLOATS = 1 << 20

let compiled: WebAssembly.Module | null | undefined
let instance: QuantExports | null = null

function quantModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = compileKernel('quant')
    } catch {
      compiled = null
    }
  }
  return compiled
}

/** True when quant.wasm can be loaded in this thread. */
export function quantWasmAvailable(): boolean {
  return quantModule() !== null
}

/** Whether to run the WASM kernels for this call; 'wasm' without the module is an error. */
export function useWasmKernels(kind: QuantKernelKind | undefined): boolean {
  if (kind === 'ts') return false
  if (kind === 'wasm') {
    if (!quantWasmAvailable()) compileKernel('quant') // throws, naming where it looked
    return true
  }
  return quantWasmAvailable()
}

function wasm(): QuantExports {
  if (instance) return instance
  const module = quantModule() ?? compileKernel('quant')
  const inst = new WebAssembly.Instance(module, {
    env: {
      abort: () => {
        throw new Error('quant.wasm aborted')
      },
    },
  })
  return (instance = inst.exports as unknown as QuantExports)
}

/** Bump allocation of one call's regions (16-byte aligned) and the memory to hold them. */
class Layout {
  private at = PAGE
  take(bytes: number): number {
    const p = this.at
    this.at = Math.ceil((p + bytes) / 16) * 16
    return p
  }
  /** Grows the memory to fit; views made before this are invalid afterwards. */
  commit(x: QuantExports): ArrayBuffer {
    const have = x.memory.buffer.byteLength
    if (this.at > have) x.memory.grow(Math.ceil((this.at - have) / PAGE))
    return x.memory.buffer
  }
}

function done(x: QuantExports): void {
  if (x.memory.buffer.byteLength > RETAIN_BYTES) instance = null
}

// ---- RTN ---------------------------------------------------------------------------------------

export interface RtnKernelResult {
  /** packCodes() of all codes. */
  packed: Uint8Array
}

/**
 * rtn.ts (clip 'none') in WASM: fills `scales` (and `mins` when asymmetric) and returns the
 * packed codes, or null when a weight is NaN/Inf or a scale/minimum overflows fp16 (the caller
 * then runs the TS loop, which raises the exact error). Cancel and progress between chunks.
 * `weight` is float32, or stored fp16 bits (Uint16Array), decoded exactly in the kernel.
 */
export function rtnQuantizeWasm(
  weight: Float32Array | Uint16Array,
  rows: number,
  cols: number,
  bits: number,
  groupCols: number,
  sym: boolean,
  scales: F16Array,
  mins: F16Array | null,
  hooks?: { signal?: AbortSignal; onProgress?(done: number, total: number): void },
): Uint8Array | null {
  const x = wasm()
  const perRow = cols / groupCols
  // Rows per chunk: about rows/100 (progress as often as forEachRow gives it), at most
  // CHUNK_FLOATS, and a multiple of `unit` so that every chunk's packed codes start on a byte.
  const unit = 8 / gcd((cols * bits) % 8, 8)
  const wanted = Math.min(Math.max(1, Math.floor(rows / 100)), Math.max(1, Math.floor(CHUNK_FLOATS / cols)))
  const chunkRows = Math.min(rows, Math.ceil(wanted / unit) * unit)
  const L = new Layout()
  const n = chunkRows * cols
  const src = L.take(n * 4)
  const raw = weight instanceof Uint16Array ? L.take(n * 2) : 0
  const codes = L.take(n)
  const packed = L.take(packedBytes(n, bits) + 8)
  const groups = chunkRows * perRow
  const sBits = L.take(groups * 2)
  const sVals = L.take(groups * 4)
  const mBits = L.take(groups * 2)
  const mVals = L.take(groups * 4)
  const out = new Uint8Array(packedBytes(rows * cols, bits))
  try {
    for (let r0 = 0; r0 < rows; r0 += chunkRows) {
      hooks?.signal?.throwIfAborted()
      const r1 = Math.min(rows, r0 + chunkRows)
      const m = (r1 - r0) * cols
      const mem = L.commit(x)
      if (weight instanceof Uint16Array) {
        new Uint16Array(mem, raw, m).set(weight.subarray(r0 * cols, r1 * cols))
        x.decodeF16(raw, m, src)
      } else new Float32Array(mem, src, m).set(weight.subarray(r0 * cols, r1 * cols))
      const status = x.rtnQuantize(src, r1 - r0, cols, groupCols, bits, sym ? 1 : 0, codes, sBits, sVals, mBits, mVals)
      if (status !== 0) return null
      x.packCodes(codes, m, bits, packed)
      const at = (r0 * cols * bits) / 8 // an integer: r0 is a multiple of `unit`
      out.set(new Uint8Array(mem, packed, packedBytes(m, bits)), at)
      const g0 = r0 * perRow
      const ng = (r1 - r0) * perRow
      scales.bits.set(new Uint16Array(mem, sBits, ng), g0)
      scales.values.set(new Float32Array(mem, sVals, ng), g0)
      if (mins) {
        mins.bits.set(new Uint16Array(mem, mBits, ng), g0)
        mins.values.set(new Float32Array(mem, mVals, ng), g0)
      }
      if (r1 < rows) hooks?.onProgress?.(r1, rows)
    }
  } finally {
    done(x)
  }
  hooks?.onProgress?.(rows, rows)
  return out
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b)
}

// ---- dequantize --------------------------------------------------------------------------------

export interface DequantGrid {
  /** 0: f32(q·s) + offset (RTN asymmetric); 1: (q − offset)·s [/ colDiv] (integer grids). */
  mode: 0 | 1
  groupCols: number
  /** Per (row, group) over the whole tensor. */
  scales: Float32Array
  /** Per (row, group): minimum (mode 0) or zero point (mode 1); null = `offset` for all. */
  offsets: Float32Array | null
  offset: number
  /** Per input column divisor (AWQ's s), or null. */
  colDiv: Float32Array | null
}

/** Rows [r0, r1) of a packed-codes tensor, dequantized in WASM exactly like the TS decodeRow. */
export function dequantizeWasm(packed: Uint8Array, bits: number, cols: number, r0: number, r1: number, grid: DequantGrid): Float32Array {
  const x = wasm()
  const out = new Float32Array((r1 - r0) * cols)
  if (r1 === r0) return out
  const perRow = cols / grid.groupCols
  const chunkRows = Math.min(r1 - r0, Math.max(1, Math.floor(CHUNK_FLOATS / cols)))
  const L = new Layout()
  const n = chunkRows * cols
  const packedAt = L.take(packedBytes(n, bits) + 16)
  const codes = L.take(n + 16)
  const scales = L.take(chunkRows * perRow * 4)
  const offsets = grid.offsets ? L.take(chunkRows * perRow * 4) : 0
  const colDiv = grid.colDiv ? L.take(cols * 4) : 0
  const dst = L.take(n * 4)
  try {
    const mem0 = L.commit(x)
    if (grid.colDiv) new Float32Array(mem0, colDiv, cols).set(grid.colDiv)
    for (let a = r0; a < r1; a += chunkRows) {
      const b = Math.min(r1, a + chunkRows)
      const m = (b - a) * cols
      const bit0 = a * cols * bits
      const byte0 = Math.floor(bit0 / 8)
      const byte1 = Math.ceil((b * cols * bits) / 8)
      const mem = L.commit(x)
      new Uint8Array(mem, packedAt, byte1 - byte0).set(packed.subarray(byte0, byte1))
      x.unpackCodes(packedAt, bits, bit0 - byte0 * 8, m, codes)
      new Float32Array(mem, scales, (b - a) * perRow).set(grid.scales.subarray(a * perRow, b * perRow))
      if (grid.offsets) new Float32Array(mem, offsets, (b - a) * perRow).set(grid.offsets.subarray(a * perRow, b * perRow))
      x.dequantize(codes, b - a, cols, grid.groupCols, grid.mode, scales, offsets, grid.offset, colDiv, dst)
      out.set(new Float32Array(mem, dst, m), (a - r0) * cols)
    }
  } finally {
    done(x)
  }
  return out
}

// ---- GPTQ --------------------------------------------------------------------------------------

export interface GptqColumnsInput {
  /** Weights in processing order (row-major rows × n), float64; not modified. */
  W: Float64Array
  /** Upper Cholesky factor of H⁻¹ (n × n). */
  U: Float64Array
  rows: number
  n: number
  perm: Int32Array | null
  groupCols: number
  bits: number
  sym: boolean
  /** Block size (already rounded to the group as gptq.ts does). */
  blocksize: number
  /** Grids fitted up front (actorder): their scales/zeros are inputs, else outputs. */
  staticGroups: boolean
}

/**
 * gptq.ts's block loop in WASM: codes (natural column order) and, unless static, the fitted
 * scales and zero points. Returns the fp16 overflow scale as a number when a group's range
 * does not fit (the caller raises int-grid.ts's error), else null.
 */
export function gptqColumnsWasm(
  input: GptqColumnsInput,
  scales: F16Array,
  zeroOf: Uint8Array,
  codesOut: Uint8Array,
  hooks: { signal?: AbortSignal; onProgress?(done: number, total: number): void },
): number | null {
  const { rows, n, blocksize: bs } = input
  const x = wasm()
  const groups = scales.values.length
  const L = new Layout()
  const W = L.take(rows * n * 8)
  const U = L.take(n * n * 8)
  const err = L.take(rows * bs * 8)
  const codes = L.take(rows * n)
  const perm = input.perm ? L.take(n * 4) : 0
  const sVals = L.take(groups * 4)
  const sBits = L.take(groups * 2)
  const zeros = L.take(groups)
  try {
    const mem = L.commit(x)
    new Float64Array(mem, W, rows * n).set(input.W)
    new Float64Array(mem, U, n * n).set(input.U)
    if (input.perm) new Int32Array(mem, perm, n).set(input.perm)
    new Float32Array(mem, sVals, groups).set(scales.values)
    new Uint16Array(mem, sBits, groups).set(scales.bits)
    new Uint8Array(mem, zeros, groups).set(zeroOf)
    for (let i1 = 0; i1 < n; i1 += bs) {
      hooks.signal?.throwIfAborted()
      const i2 = Math.min(i1 + bs, n)
      const status = x.gptqBlock(W, U, err, codes, perm, sVals, sBits, zeros, rows, n, i1, i2, bs, input.groupCols, input.bits, input.sym ? 1 : 0, input.staticGroups ? 1 : 0)
      if (status !== 0) return x.badScale.value
      if (i2 < n) x.gptqLazy(W, U, err, rows, n, i1, i2, bs)
      hooks.onProgress?.(Math.round((rows * i2) / n), rows)
    }
    codesOut.set(new Uint8Array(mem, codes, rows * n))
    scales.values.set(new Float32Array(mem, sVals, groups))
    scales.bits.set(new Uint16Array(mem, sBits, groups))
    zeroOf.set(new Uint8Array(mem, zeros, groups))
  } finally {
    done(x)
  }
  return null
}

// ---- inverse-Hessian factor ---------------------------------------------------------------------

/** Steps of pass 1 per call (the panel whose rows stay in cache), rows of pass 2 per call. */
const CHOL_PANEL = 16
const CANCEL_ROWS = 32

/**
 * hessian-inverse.ts's U (UᵀU = H⁻¹) in WASM, bit-identical. Returns U, or the column and
 * pivot where H is not positive definite (the caller raises its error).
 */
export function inverseHessianFactorWasm(H: Float64Array, n: number, signal?: AbortSignal): Float64Array | { column: number; pivot: number } {
  const x = wasm()
  const L = new Layout()
  const A = L.take(n * n * 8)
  const v = L.take(n * 8)
  try {
    const mem = L.commit(x)
    new Float64Array(mem, A, n * n).set(H)
    for (let j1 = n; j1 > 0; j1 -= CHOL_PANEL) {
      signal?.throwIfAborted()
      const bad = x.choleskyPanel(A, n, Math.max(0, j1 - CHOL_PANEL), j1)
      if (bad >= 0) return { column: bad, pivot: x.badPivot.value }
    }
    for (let i1 = n; i1 > 0; i1 -= CANCEL_ROWS) {
      signal?.throwIfAborted()
      x.invertUpperRows(A, v, n, Math.max(0, i1 - CANCEL_ROWS), i1)
    }
    return new Float64Array(mem, A, n * n).slice()
  } finally {
    done(x)
  }
}

// ---- AWQ's scale-search error -------------------------------------------------------------------

/** Rows of E per kernel call: one chunk's error rows stay in cache beside G's row. */
export const QUADRATIC_CHUNK_ROWS = 32

/**
 * gram.ts rowsQuadraticForm in WASM (bit-identical) for repeated calls against one G: lays G
 * out once and returns a function that takes up to QUADRATIC_CHUNK_ROWS error rows at a time.
 * Valid until the next use of the kernels in this thread (nothing runs in between: AWQ's scale
 * search is synchronous); `release` gives back memory grown for a wide G.
 */
export function quadraticRowsWasm(gram: Float64Array, cols: number): { run(E: Float64Array, rows: number, out: Float64Array): void; release(): void } {
  const x = wasm()
  const L = new Layout()
  const G = L.take(cols * cols * 8)
  const E = L.take(QUADRATIC_CHUNK_ROWS * cols * 8)
  const out = L.take(QUADRATIC_CHUNK_ROWS * 8)
  new Float64Array(L.commit(x), G, cols * cols).set(gram)
  return {
    run(rowsE: Float64Array, rows: number, result: Float64Array): void {
      if (rows > QUADRATIC_CHUNK_ROWS) throw new Error(`quadraticRowsWasm: ${rows} rows, at most ${QUADRATIC_CHUNK_ROWS} per call`)
      const mem = x.memory.buffer
      new Float64Array(mem, E, rows * cols).set(rowsE.subarray(0, rows * cols))
      x.quadraticRows(E, rows, cols, G, out)
      result.set(new Float64Array(mem, out, rows))
    },
    release: () => done(x),
  }
}
