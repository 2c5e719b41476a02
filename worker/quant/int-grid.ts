/**
 * Per-group integer grids for the calibrated methods (GPTQ, AWQ): value(q) = scale·(q − zero),
 * q ∈ [0, 2^bits − 1], one fp16 scale and (asymmetric only) one integer zero point per group.
 *
 * rtn.ts stores a different grid (an fp16 float minimum as offset, after the transformers
 * fixture), so it is not reused here: both GPTQ and AWQ references keep integer zero points,
 * and the fitting rules here follow them:
 * - 'gptq': IST-DASLab/gptq quant.py `Quantizer.find_params` — the range always includes 0
 *   (xmin = min(min, 0), xmax = max(max, 0)); symmetric uses xmax = max(|xmin|, xmax),
 *   xmin = −xmax and the mid-point zero (maxq + 1)/2; an all-zero group gets [−1, 1].
 *   (The reference leaves xmin = 0 for an all-positive symmetric group, which clips the upper
 *   half away; here symmetric is always symmetric.)
 * - 'awq': mit-han-lab/llm-awq quantizer.py `pseudo_quantize_tensor` — asymmetric
 *   scale = max(max − min, 1e-5)/maxq, zero = clamp(−round(min/scale), 0, maxq); symmetric
 *   scale = max(absmax, 1e-5)/(2^(bits−1) − 1) with q − 2^(bits−1) ∈ [−2^(bits−1), 2^(bits−1) − 1]
 *   (stored unsigned with the implicit zero 2^(bits−1)).
 * The scale is rounded to fp16 *before* the codes are chosen, so what the algorithms measure and
 * feed back is exactly what `dequantizeRows` later reproduces from the stored values.
 */
import { f16ToF32, f32ToF16 } from '../formats/dtypes'
import { QuantParamError, type StorageBreakdown, packedBytes } from './contract'
import { type F16Array, checkRowRange, sortedUnique } from './common'
import { packCodes, unpackCodes } from './packing'
import { PackedCodesTensor } from './packed-tensor'
import { dequantizeWasm, useWasmKernels, type QuantKernelKind } from './wasm-kernels'

export type IntGridRule = 'gptq' | 'awq'

/** One group's fitted grid (mutable out-parameter, so hot loops allocate nothing). */
export interface GroupGrid {
  /** fp16-exact scale, > 0. */
  scale: number
  /** Its fp16 bits, as stored. */
  scaleBits: number
  /** Integer zero point in [0, maxq]. */
  zero: number
}

export function newGroupGrid(): GroupGrid {
  return { scale: 1, scaleBits: 0x3c00, zero: 0 }
}

/** torch.round: half to even (Math.round rounds halves up). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x)
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r
}

const SMALLEST_F16 = 2 ** -24

/** The error of a group whose step does not fit an fp16 scale. */
export function scaleOverflowError(scale: number): QuantParamError {
  return new QuantParamError(null, `a group spans ${scale.toExponential(3)} per step, beyond an fp16 scale (weights larger than ~65504·2^bits)`)
}

/** Rounds a positive scale to fp16; underflow becomes the smallest subnormal, overflow an error. */
function storeScale(scale: number, out: GroupGrid): void {
  let bits = f32ToF16(scale)
  let s = f16ToF32(bits)
  if (s === 0) {
    bits = 1
    s = SMALLEST_F16
  }
  if (!Number.isFinite(s)) throw scaleOverflowError(scale)
  out.scale = s
  out.scaleBits = bits
}

/** Fits a group's grid from its minimum and maximum (already clipped, if clipping). */
export function fitIntGrid(min: number, max: number, bits: number, sym: boolean, rule: IntGridRule, out: GroupGrid): void {
  const maxq = 2 ** bits - 1
  const mid = 2 ** (bits - 1)
  if (rule === 'gptq') {
    let xmin = Math.min(min, 0)
    let xmax = Math.max(max, 0)
    if (sym) {
      xmax = Math.max(-xmin, xmax)
      xmin = -xmax
    }
    if (xmin === 0 && xmax === 0) {
      xmin = -1
      xmax = 1
    }
    storeScale((xmax - xmin) / maxq, out)
    out.zero = sym ? mid : Math.min(maxq, Math.max(0, roundHalfEven(-xmin / out.scale)))
    return
  }
  if (sym) {
    storeScale(Math.max(Math.max(-min, max), 1e-5) / (mid - 1), out)
    out.zero = mid
    return
  }
  storeScale(Math.max(max - min, 1e-5) / maxq, out)
  out.zero = Math.min(maxq, Math.max(0, -roundHalfEven(min / out.scale)))
}

/** The code of w on a fitted grid. */
export function quantizeToGrid(w: number, scale: number, zero: number, maxq: number): number {
  const q = roundHalfEven(w / scale) + zero
  return q < 0 ? 0 : q > maxq ? maxq : q
}

/** Exact bytes: packed codes, fp16 group scales (+ fp16 per-column scales), packed zero points. */
export function intGroupStorage(rows: number, cols: number, bits: number, groupCols: number, sym: boolean, columnScales: boolean): StorageBreakdown {
  const groups = rows * (cols / groupCols)
  return {
    codes: packedBytes(rows * cols, bits),
    scales: groups * 2 + (columnScales ? cols * 2 : 0),
    zeros: sym ? 0 : packedBytes(groups, bits),
    tables: 0,
    outliers: 0,
  }
}

/** Stores a fitted grid's scale at `i` of an fp16 array (bits and value). */
export function storeGridScale(scales: F16Array, i: number, grid: GroupGrid): void {
  scales.bits[i] = grid.scaleBits
  scales.values[i] = grid.scale
}

/**
 * A tensor stored as packed integer codes on per-group grids (+ optional per-column divisors);
 * dequantizes from the stored values only: ŵ_ij = scale_g·(q_ij − zero_g) [/ s_j].
 */
export class IntGroupTensor extends PackedCodesTensor {
  /** Packed zero points, one per (row, group), `bits` bits each; null when symmetric (implicit 2^(bits−1)). */
  readonly zeros: Uint8Array | null

  constructor(
    method: string,
    rows: number,
    cols: number,
    readonly bits: number,
    readonly groupCols: number,
    /** One code per weight, row-major, unpacked (packed here). */
    codes: Uint8Array,
    /** fp16 scale per (row, group). */
    readonly scales: F16Array,
    /** Zero point per (row, group), unpacked; null for symmetric grids. */
    zeros: Uint8Array | null,
    /** fp16 divisor per input column (AWQ's s), or null. */
    readonly columnScales: F16Array | null,
    /** Which dequantization loop to run (same values either way); unset = WASM when it loads. */
    readonly kernel?: QuantKernelKind,
  ) {
    super(method, rows, cols, bits, packCodes(codes, bits), intGroupStorage(rows, cols, bits, groupCols, zeros === null, columnScales !== null))
    this.zeros = zeros ? packCodes(zeros, bits) : null
  }

  override dequantizeRows(r0: number, r1: number): Float32Array {
    if (!useWasmKernels(this.kernel)) return super.dequantizeRows(r0, r1)
    checkRowRange(this.rows, r0, r1)
    const perRow = this.cols / this.groupCols
    const zeros = this.zeros ? Float32Array.from(unpackCodes(this.zeros, this.bits, r0 * perRow, (r1 - r0) * perRow, new Uint8Array((r1 - r0) * perRow))) : null
    // The kernel indexes offsets from the tensor's first group: place the slice accordingly.
    const offsets = zeros ? new Float32Array(this.rows * perRow) : null
    offsets?.set(zeros!, r0 * perRow)
    return dequantizeWasm(this.codes, this.bits, this.cols, r0, r1, {
      mode: 1,
      groupCols: this.groupCols,
      scales: this.scales.values,
      offsets,
      offset: 2 ** (this.bits - 1),
      colDiv: this.columnScales?.values ?? null,
    })
  }

  /** Zero point of group slot `gi` (row·groupsPerRow + group). */
  zero(gi: number): number {
    return this.zeros ? unpackCodes(this.zeros, this.bits, gi, 1, new Uint8Array(1))[0]! : 2 ** (this.bits - 1)
  }

  protected decodeRow(row: number, codes: Uint8Array, out: Float32Array): void {
    const g = this.groupCols
    const perRow = this.cols / g
    const zeros = this.zeros ? unpackCodes(this.zeros, this.bits, row * perRow, perRow, new Uint8Array(perRow)) : null
    const mid = 2 ** (this.bits - 1)
    const div = this.columnScales?.values
    for (let k = 0; k < perRow; k++) {
      const scale = this.scales.values[row * perRow + k]!
      const zero = zeros ? zeros[k]! : mid
      for (let c = k * g; c < (k + 1) * g; c++) {
        const v = scale * (codes[c]! - zero)
        out[c] = div ? v / div[c]! : v
      }
    }
  }

  levels(row: number, col = 0): Float32Array {
    this.checkLevelsArgs(row, col)
    const gi = row * (this.cols / this.groupCols) + Math.floor(col / this.groupCols)
    const scale = this.scales.values[gi]!
    const zero = this.zero(gi)
    const div = this.columnScales ? this.columnScales.values[col]! : 1
    return sortedUnique(Array.from({ length: 2 ** this.bits }, (_, q) => (scale * (q - zero)) / div))
  }
}
