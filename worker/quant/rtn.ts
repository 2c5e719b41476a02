/**
 * Round-to-nearest integer quantization, 2–8 bits, per group of `group` input columns.
 *
 * Asymmetric (default): per group min m and scale s = (max − min)/(2^b − 1), both stored as
 * fp16 (counted under `scales`, 4 bytes a group; no integer zero point). Codes
 * q = clamp(floor((w − m)/s + 0.5), 0, 2^b − 1) against the *stored* m and s; ŵ = q·s + m in
 * float32, each operation rounded separately as the transformers reference does it
 * (test/helpers/rtn-int4.ts). fp16 rounding of m and s is the only difference from that
 * reference (fp32 there). A constant group stores s = 0 and dequantizes to m.
 *
 * Symmetric: s = absmax/(2^(b−1) − 1), fp16 (2 bytes a group); codes q ∈ [−(2^(b−1) − 1),
 * 2^(b−1) − 1] (the restricted, zero-centred range: 2^b − 1 levels, −2^(b−1) unused), stored as
 * q + 2^(b−1) − 1; ŵ = q·s, rounding half away from zero.
 *
 * clip 'mse': per group, try shrinking the range by p ∈ {1.00, 0.98, …, 0.50} (asymmetric:
 * [p·min, p·max] as GPTQ's quantizer does; symmetric: p·absmax) and keep the p with the least
 * squared error of the stored-value dequantization. p = 1 is a candidate, so clipping is
 * never worse than none on the weight's own squared error.
 */
import * as v from 'valibot'
import { groupColumns, groupColumnsOrZero, packedBytes, type QuantMethod, type QuantizeHooks, type StorageBreakdown } from './contract'
import { F16Array, checkShape, bitsSchema, checkRowRange, checkWeight, checkWeightShape, forEachRow, groupSchema, sortedUnique } from './common'
import { packCodes } from './packing'
import { PackedCodesTensor } from './packed-tensor'
import { dequantizeWasm, rtnQuantizeWasm, useWasmKernels, type QuantKernelKind } from './wasm-kernels'

export const rtnSchema = v.strictObject({
  bits: bitsSchema(2, 8, 4),
  group: groupSchema(128),
  sym: v.optional(v.boolean('sym must be true or false'), false),
  clip: v.optional(v.picklist(['none', 'mse'], "clip must be 'none' or 'mse'"), 'none'),
})
export type RtnParams = v.InferOutput<typeof rtnSchema>

/** Range shrink factors of the MSE clipping search, 1 first. */
export const RTN_CLIP_SHRINKS: readonly number[] = Object.freeze(Array.from({ length: 26 }, (_, i) => 1 - 0.02 * i))

const f = Math.fround

/** Asymmetric code of w against stored (s, m), in float32 steps like the reference. */
function asymCode(w: number, s: number, m: number, qmax: number): number {
  if (s === 0) return 0
  const q = Math.floor(f(f(f(w - m) / s) + 0.5))
  return q < 0 ? 0 : q > qmax ? qmax : q
}

function symCode(w: number, s: number, qmax: number): number {
  if (s === 0) return 0
  const x = f(w / s)
  const q = x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5)
  return q < -qmax ? -qmax : q > qmax ? qmax : q
}

export function rtnStorage(rows: number, cols: number, params: RtnParams): StorageBreakdown {
  checkShape(rows, cols)
  const g = groupColumns(cols, params.group)
  const groups = rows * (cols / g)
  return { codes: packedBytes(rows * cols, params.bits), scales: groups * (params.sym ? 2 : 4), zeros: 0, tables: 0, outliers: 0 }
}

export class RtnTensor extends PackedCodesTensor {
  constructor(
    rows: number,
    cols: number,
    readonly params: RtnParams,
    readonly groupCols: number,
    codes: Uint8Array,
    /** fp16 scale per (row, group), row-major. */
    readonly scales: F16Array,
    /** fp16 minimum per (row, group); null when symmetric. */
    readonly mins: F16Array | null,
    /** Which dequantization loop to run (same values either way); unset = WASM when it loads. */
    readonly kernel?: QuantKernelKind,
  ) {
    super('rtn', rows, cols, params.bits, codes, rtnStorage(rows, cols, params))
  }

  override dequantizeRows(r0: number, r1: number): Float32Array {
    if (!useWasmKernels(this.kernel)) return super.dequantizeRows(r0, r1)
    checkRowRange(this.rows, r0, r1)
    const grid = this.mins
      ? { mode: 0 as const, offsets: this.mins.values, offset: 0 }
      : { mode: 1 as const, offsets: null, offset: (1 << (this.params.bits - 1)) - 1 }
    return dequantizeWasm(this.codes, this.params.bits, this.cols, r0, r1, { ...grid, groupCols: this.groupCols, scales: this.scales.values, colDiv: null })
  }

  protected decodeRow(row: number, codes: Uint8Array, out: Float32Array): void {
    const g = this.groupCols
    const perRow = this.cols / g
    const s = this.scales.values
    const mins = this.mins?.values
    const offset = (1 << (this.params.bits - 1)) - 1
    for (let k = 0; k < perRow; k++) {
      const scale = s[row * perRow + k]!
      if (mins) {
        const m = mins[row * perRow + k]!
        for (let j = k * g; j < (k + 1) * g; j++) out[j] = f(codes[j]! * scale) + m
      } else {
        for (let j = k * g; j < (k + 1) * g; j++) out[j] = (codes[j]! - offset) * scale
      }
    }
  }

  levels(row: number, col = 0): Float32Array {
    this.checkLevelsArgs(row, col)
    const idx = row * (this.cols / this.groupCols) + Math.floor(col / this.groupCols)
    const s = this.scales.values[idx]!
    const out: number[] = []
    if (this.mins) {
      const m = this.mins.values[idx]!
      for (let q = 0; q < 1 << this.params.bits; q++) out.push(f(f(q * s) + m))
    } else {
      const qmax = (1 << (this.params.bits - 1)) - 1
      for (let q = -qmax; q <= qmax; q++) out.push(f(q * s))
    }
    return sortedUnique(out)
  }
}

export function quantizeRtn(weight: Float32Array, rows: number, cols: number, params: RtnParams, hooks?: QuantizeHooks): RtnTensor {
  if (params.clip === 'none' && useWasmKernels(hooks?.kernel)) {
    // The kernel finds NaN/Inf and fp16 overflow itself and then leaves the errors to the TS
    // loop below, so bad input fails exactly as there (a bad group is checked first there too).
    checkWeightShape(weight, rows, cols)
    const g = groupColumnsOrZero(cols, params.group)
    if (g > 0) {
      const perRow = cols / g
      const scales = new F16Array(rows * perRow)
      const mins = params.sym ? null : new F16Array(rows * perRow)
      const packed = rtnQuantizeWasm(weight, rows, cols, params.bits, g, params.sym, scales, mins, hooks)
      if (packed) return new RtnTensor(rows, cols, params, g, packed, scales, mins, hooks?.kernel)
    }
  }
  checkWeight(weight, rows, cols)
  const g = groupColumns(cols, params.group)
  const perRow = cols / g
  const scales = new F16Array(rows * perRow)
  const mins = params.sym ? null : new F16Array(rows * perRow)
  const codes = new Uint8Array(rows * cols)
  const shrinks = params.clip === 'mse' ? RTN_CLIP_SHRINKS : [1]
  const qmax = params.sym ? (1 << (params.bits - 1)) - 1 : (1 << params.bits) - 1
  const name = (r: number, k: number) => `row ${r} group ${k}`

  forEachRow(rows, hooks, (r) => {
    for (let k = 0; k < perRow; k++) {
      const start = r * cols + k * g
      let lo = Infinity
      let hi = -Infinity
      for (let j = start; j < start + g; j++) {
        const w = weight[j]!
        if (w < lo) lo = w
        if (w > hi) hi = w
      }
      const amax = Math.max(-lo, hi)
      // Best candidate by squared error of what would be stored.
      let bestErr = Infinity
      let bestS = 0
      let bestM = 0
      for (const p of shrinks) {
        let s: number
        let m = 0
        if (mins) {
          const l = p === 1 ? lo : lo * p
          const h = p === 1 ? hi : hi * p
          s = scales.set(r * perRow + k, f(f(h - l) / qmax), () => `scale of ${name(r, k)}`)
          m = mins.set(r * perRow + k, l, () => `minimum of ${name(r, k)}`)
        } else {
          s = scales.set(r * perRow + k, (amax * p) / qmax, () => `scale of ${name(r, k)}`)
        }
        if (shrinks.length === 1) {
          bestS = s
          bestM = m
          break
        }
        let err = 0
        for (let j = start; j < start + g; j++) {
          const w = weight[j]!
          const d = (mins ? f(f(asymCode(w, s, m, qmax) * s) + m) : f(symCode(w, s, qmax) * s)) - w
          err += d * d
        }
        if (err < bestErr) {
          bestErr = err
          bestS = s
          bestM = m
        }
      }
      scales.set(r * perRow + k, bestS, () => `scale of ${name(r, k)}`)
      if (mins) mins.set(r * perRow + k, bestM, () => `minimum of ${name(r, k)}`)
      for (let j = start; j < start + g; j++) {
        codes[j] = mins ? asymCode(weight[j]!, bestS, bestM, qmax) : symCode(weight[j]!, bestS, qmax) + qmax
      }
    }
  })
  return new RtnTensor(rows, cols, params, g, packCodes(codes, params.bits), scales, mins, hooks?.kernel)
}

export const rtnMethod: QuantMethod<RtnParams> = {
  id: 'rtn',
  label: 'RTN integer (round to nearest, per group)',
  schema: rtnSchema,
  needs: () => 'none',
  bits: (p) => p.bits,
  storage: rtnStorage,
  quantize: (weight, rows, cols, params, _calibration, hooks) => quantizeRtn(weight, rows, cols, params, hooks),
}
