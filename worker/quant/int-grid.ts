/**
 * Per-group integer grids for the calibrated methods (GPTQ, AWQ): value(q) = scale·(q − zero),
 * q ∈ [0, 2^bits − 1], one fp16 scale and (asymmetric only) one integer zero point per group.
 *
 * rtn.ts (plain RTN, another file) was not written when this was; its fixture convention
 * (float minimum as offset, reference.json "int4_rtn") is not what GPTQ and AWQ store anyway:
 * both references keep integer zero points, so the fitting rules here follow them:
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
import { QuantParamError, type QuantizedTensor, type StorageBreakdown, packedBytes, totalBytes } from './contract'

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

/** Rounds a positive scale to fp16; underflow becomes the smallest subnormal, overflow an error. */
function storeScale(scale: number, out: GroupGrid): void {
  let bits = f32ToF16(scale)
  let s = f16ToF32(bits)
  if (s === 0) {
    bits = 1
    s = SMALLEST_F16
  }
  if (!Number.isFinite(s)) throw new QuantParamError(null, `a group spans ${scale.toExponential(3)} per step, beyond an fp16 scale (weights larger than ~65504·2^bits)`)
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

export interface IntGroupData {
  method: string
  rows: number
  cols: number
  bits: number
  groupCols: number
  sym: boolean
  /** One code per weight, row-major (held one per byte; stored packed at `bits` bits). */
  codes: Uint8Array
  /** fp16 bits of each group's scale, [rows × cols/groupCols]. */
  scales: Uint16Array
  /** Zero point of each group (asymmetric); symmetric grids use the implicit 2^(bits−1). */
  zeros: Uint8Array | null
  /** fp16 bits of a per-input-column divisor (AWQ's s): ŵ_ij = grid value / s_j. */
  columnScales: Uint16Array | null
}

/** A tensor stored as integer codes on per-group grids; dequantizes from the stored values only. */
export class IntGroupTensor implements QuantizedTensor {
  readonly method: string
  readonly rows: number
  readonly cols: number
  readonly storage: StorageBreakdown
  readonly bytes: number
  readonly data: IntGroupData

  constructor(data: IntGroupData) {
    this.data = data
    this.method = data.method
    this.rows = data.rows
    this.cols = data.cols
    this.storage = intGroupStorage(data.rows, data.cols, data.bits, data.groupCols, data.sym, data.columnScales !== null)
    this.bytes = totalBytes(this.storage)
  }

  dequantizeRows(r0: number, r1: number): Float32Array {
    const { cols, groupCols, codes, scales, zeros, columnScales, bits } = this.data
    if (!(Number.isInteger(r0) && Number.isInteger(r1) && 0 <= r0 && r0 <= r1 && r1 <= this.rows)) throw new RangeError(`rows [${r0}, ${r1}) outside [0, ${this.rows})`)
    const out = new Float32Array((r1 - r0) * cols)
    const groupsPerRow = cols / groupCols
    const mid = 2 ** (bits - 1)
    const div = columnScales ? Float64Array.from(columnScales, (b) => f16ToF32(b)) : null
    for (let r = r0; r < r1; r++) {
      const o = (r - r0) * cols
      for (let g = 0; g < groupsPerRow; g++) {
        const gi = r * groupsPerRow + g
        const scale = f16ToF32(scales[gi]!)
        const zero = zeros ? zeros[gi]! : mid
        const c0 = g * groupCols
        for (let c = c0; c < c0 + groupCols; c++) {
          const v = scale * (codes[r * cols + c]! - zero)
          out[o + c] = div ? v / div[c]! : v
        }
      }
    }
    return out
  }

  levels(row: number, col = 0): Float32Array {
    const { cols, groupCols, scales, zeros, columnScales, bits } = this.data
    const gi = row * (cols / groupCols) + Math.floor(col / groupCols)
    const scale = f16ToF32(scales[gi]!)
    const zero = zeros ? zeros[gi]! : 2 ** (bits - 1)
    const div = columnScales ? f16ToF32(columnScales[col]!) : 1
    const out = new Float32Array(2 ** bits)
    for (let q = 0; q < out.length; q++) out[q] = (scale * (q - zero)) / div
    return out
  }
}

/** NaN/Inf weights are a clear early error. */
export function assertFiniteWeight(weight: Float32Array, rows: number, cols: number, method: string): void {
  if (weight.length !== rows * cols) throw new QuantParamError(null, `${method}: weight has ${weight.length} values, expected ${rows}×${cols}`)
  for (let i = 0; i < weight.length; i++) {
    if (!Number.isFinite(weight[i]!)) throw new QuantParamError(null, `${method}: weight is not finite at row ${Math.floor(i / cols)}, column ${i % cols} (${weight[i]})`)
  }
}
