/**
 * A planned tensor's QuantizedTensor as an ONNX linear (worker/formats/onnx/quantized-linear.ts),
 * recovered from the values the method stores and checked against dequantizeRows:
 *
 * - RTN symmetric, GPTQ (4 or 8 bits, block a power of two ≥ 16): MatMulNBits with the plan's
 *   codes and scales (uint8 zero points when asymmetric) — exact.
 * - AWQ (same bits/blocks): MatMulNBits on its codes, the input divided by its per-channel scale
 *   s_j first — the same stored values, the division applied to x instead of W (float rounding
 *   order differs, ~1e-7 relative).
 * - RTN asymmetric stores an fp16 minimum m (ŵ = q·s + m), not an integer zero point:
 *   MatMulNBits with a float zero point −m/s, whose ŵ differs from the plan's by float
 *   rounding (measured per tensor, reported as a fallback).
 * - Other bit widths or blocks of those methods, and the lookup-table methods (anyN, k-means,
 *   NF4, FP4): the dequantising subgraph (table lookup, − zero, × scale, + offset, ÷ column
 *   scale, outliers) — exact, checked value by value.
 * - ggml block types: no ONNX operator holds them; refused (export GGUF for those).
 */
import { f16ToF32 } from '../formats/dtypes'
import { nbitsBlockOk, type FloatData, type GroupDequantLinear, type NBitsLinear, type QuantizedLinear } from '../formats/onnx/quantized-linear'
import type { ResolvedEntry } from '../plan/plan'
import { AbsmaxTableTensor } from '../quant/absmax-table'
import { AnyNTensor } from '../quant/anyn'
import type { F16Array } from '../quant/common'
import type { QuantizedTensor } from '../quant/contract'
import { IntGroupTensor } from '../quant/int-grid'
import { KMeansTensor } from '../quant/kmeans'
import { unpackCodes } from '../quant/packing'
import { RtnTensor } from '../quant/rtn'
import { intGroupPacked } from './compressed-tensors'
import type { TensorSupport } from './contract'

const f = Math.fround

const f16 = (a: F16Array): FloatData => ({ type: 'float16', bits: a.bits })

function entryGroup(entry: ResolvedEntry): number {
  const g = (entry.params.group as number | undefined) ?? 0
  return g === 0 ? entry.cols : g
}

/** What ONNX holds of a planned tensor, from the method and params alone (before quantizing). */
export function onnxSupport(entry: ResolvedEntry): TensorSupport {
  const bits = entry.params.bits as number
  const group = entryGroup(entry)
  switch (entry.methodId) {
    case 'rtn':
    case 'gptq':
    case 'awq':
      if (!nbitsBlockOk(bits, group)) return { kind: 'exact' }
      if (entry.methodId === 'rtn' && entry.params.sym !== true) {
        return { kind: 'fallback', description: "MatMulNBits with a float zero point −min/scale for RTN's fp16 group minimum (ŵ = (q − z)·s instead of q·s + m): float rounding differs, measured" }
      }
      return { kind: 'exact' }
    case 'nf4':
    case 'fp4':
    case 'any4':
    case 'any3':
    case 'any2':
    case 'kmeans':
      return { kind: 'exact' }
    case 'ggml':
      return { kind: 'unsupported', reason: 'ggml block types have no ONNX operator (MatMulNBits holds integer blocks with one scale and zero point); export GGUF for these, or plan an integer or table method' }
    default:
      return { kind: 'unsupported', reason: `method '${entry.methodId}' has no ONNX encoding in this build` }
  }
}

export interface OnnxLinear {
  linear: QuantizedLinear
  writtenType: string
  /** The weight the runtime multiplies with (float32, as computed by the encoding), for the check. */
  values: Float32Array
  exact: boolean
  note?: string
}

function unpackAll(q: { codes: Uint8Array; codeBits: number; rows: number; cols: number }): Uint8Array {
  return unpackCodes(q.codes, q.codeBits, 0, q.rows * q.cols, new Uint8Array(q.rows * q.cols))
}

function nbits(q: QuantizedTensor, codes: Uint8Array, bits: number, blockSize: number, scales: Float32Array, zeroPoints: NBitsLinear['zeroPoints'], inputDivisor: F16Array | null): OnnxLinear {
  const { rows, cols } = q
  const perRow = cols / blockSize
  const values = new Float32Array(rows * cols)
  const mid = 2 ** (bits - 1)
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < perRow; k++) {
      const gi = r * perRow + k
      const s = scales[gi]!
      const z = zeroPoints ? zeroPoints.values[gi]! : mid
      for (let c = k * blockSize; c < (k + 1) * blockSize; c++) {
        const w = f(f(codes[r * cols + c]! - z) * s)
        values[r * cols + c] = inputDivisor ? f(w / inputDivisor.values[c]!) : w
      }
    }
  }
  const zpText = zeroPoints === null ? 'sym' : zeroPoints.type === 'uint8' ? 'uint8 zero points' : 'float zero points'
  return {
    linear: { kind: 'nbits', N: rows, K: cols, bits, blockSize, codes, scales, zeroPoints, inputDivisor: inputDivisor ? f16(inputDivisor) : null },
    writtenType: `MatMulNBits int${bits} block ${blockSize} ${zpText}${inputDivisor ? ' (input ÷ AWQ scale)' : ''}`,
    values,
    exact: zeroPoints?.type !== 'float32',
    ...(inputDivisor ? { note: "AWQ's per-input-channel scale divides the activation before MatMulNBits (same stored values; float rounding order differs)" } : {}),
  }
}

function dequant(q: QuantizedTensor, d: Omit<GroupDequantLinear, 'kind' | 'rows' | 'cols'>, writtenType: string): OnnxLinear {
  const linear: GroupDequantLinear = { kind: 'dequant', rows: q.rows, cols: q.cols, ...d }
  return { linear, writtenType, values: evaluateDequant(linear), exact: true }
}

const valueAt = (d: FloatData, i: number): number => (d.type === 'float32' ? d.values[i]! : f16ToF32(d.bits[i]!))

/** The subgraph's arithmetic in float32, one rounding per node as onnxruntime computes it. */
export function evaluateDequant(q: GroupDequantLinear): Float32Array {
  const { rows, cols, groupCols } = q
  const groups = cols / groupCols
  const levels = q.table ? 2 ** q.bits : 0
  const term = (d: FloatData | null, gi: number): number | null => (d ? valueAt(d, (d.type === 'float32' ? d.values.length : d.bits.length) === 1 ? 0 : gi) : null)
  const out = new Float32Array(rows * cols)
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const code = q.codes[r * cols + c]!
      let w = q.table ? valueAt(q.table.data, (q.table.perRow ? r * levels : 0) + code) : code
      const gi = r * groups + Math.floor(c / groupCols)
      const z = term(q.zero, gi)
      const s = term(q.scale, gi)
      const o = term(q.offset, gi)
      if (z !== null) w = f(w - z)
      if (s !== null) w = f(w * s)
      if (o !== null) w = f(w + o)
      if (q.columnDivisor) w = f(w / valueAt(q.columnDivisor, c))
      out[r * cols + c] = w
    }
  }
  if (q.outliers) {
    const per = q.outliers.perRow
    for (let r = 0; r < rows; r++) for (let t = r * per; t < (r + 1) * per; t++) out[r * cols + q.outliers.cols[t]!] = valueAt(q.outliers.values, t)
  }
  return out
}

/** The ONNX form of one quantized tensor (null when the tensor's class has none). */
export function onnxLinear(q: QuantizedTensor): OnnxLinear | null {
  if (q instanceof RtnTensor) {
    const { bits } = q.params
    const codes = unpackAll(q)
    if (nbitsBlockOk(bits, q.groupCols)) {
      if (q.mins === null) {
        // Symmetric codes are q + 2^(b−1) − 1; MatMulNBits' implicit zero point is 2^(b−1).
        for (let i = 0; i < codes.length; i++) codes[i]! += 1
        return nbits(q, codes, bits, q.groupCols, q.scales.values, null, null)
      }
      const zp = Float32Array.from(q.scales.values, (s, i) => (s === 0 ? 0 : f(-q.mins!.values[i]! / s)))
      return nbits(q, codes, bits, q.groupCols, q.scales.values, { type: 'float32', values: zp }, null)
    }
    if (q.mins === null) {
      const offset = (1 << (bits - 1)) - 1
      return dequant(q, { bits, groupCols: q.groupCols, codes, table: null, zero: { type: 'float32', values: Float32Array.of(offset) }, scale: f16(q.scales), offset: null, columnDivisor: null, outliers: null }, `int${bits} g${q.groupCols} sym (dequantising subgraph)`)
    }
    return dequant(q, { bits, groupCols: q.groupCols, codes, table: null, zero: null, scale: f16(q.scales), offset: f16(q.mins), columnDivisor: null, outliers: null }, `int${bits} g${q.groupCols} asym, fp16 minimum (dequantising subgraph)`)
  }
  if (q instanceof IntGroupTensor) {
    const p = intGroupPacked(q)
    if (nbitsBlockOk(q.bits, q.groupCols)) {
      return nbits(q, p.codes, q.bits, q.groupCols, q.scales.values, p.zeros ? { type: 'uint8', values: p.zeros } : null, q.columnScales)
    }
    const zero: FloatData = p.zeros ? { type: 'float32', values: Float32Array.from(p.zeros) } : { type: 'float32', values: Float32Array.of(2 ** (q.bits - 1)) }
    return dequant(
      q,
      { bits: q.bits, groupCols: q.groupCols, codes: p.codes, table: null, zero, scale: f16(q.scales), offset: null, columnDivisor: q.columnScales ? f16(q.columnScales) : null, outliers: null },
      `int${q.bits} g${q.groupCols} ${p.zeros ? 'asym' : 'sym'} (dequantising subgraph)`,
    )
  }
  if (q instanceof AnyNTensor) {
    return dequant(
      q,
      { bits: q.codeBits, groupCols: q.groupCols, codes: unpackAll(q), table: { perRow: true, data: f16(q.lut) }, zero: null, scale: f16(q.alphas), offset: f16(q.mins), columnDivisor: null, outliers: null },
      `${q.codeBits}-bit codes, per-row fp16 table, group ${q.groupCols} scale + minimum (Gather subgraph)`,
    )
  }
  if (q instanceof AbsmaxTableTensor) {
    return dequant(
      q,
      { bits: 4, groupCols: q.groupCols, codes: unpackAll(q), table: { perRow: false, data: { type: 'float32', values: q.table.values } }, zero: null, scale: f16(q.scales), offset: null, columnDivisor: null, outliers: null },
      `4-bit codes, shared ${q.method.toUpperCase()} table, group ${q.groupCols} fp16 absmax scale (Gather subgraph)`,
    )
  }
  if (q instanceof KMeansTensor) {
    const perRowBook = q.params.per === 'row'
    const perRowOutliers = q.outlierCols.length / q.rows
    return dequant(
      q,
      {
        bits: q.params.bits,
        groupCols: q.cols,
        codes: unpackAll(q),
        table: { perRow: perRowBook, data: f16(q.codebooks) },
        zero: null,
        scale: null,
        offset: null,
        columnDivisor: null,
        outliers: perRowOutliers > 0 ? { perRow: perRowOutliers, cols: Int32Array.from(q.outlierCols), values: f16(q.outlierValues) } : null,
      },
      `${q.params.bits}-bit codes, ${perRowBook ? 'per-row' : 'shared'} fp16 codebook${perRowOutliers > 0 ? `, ${perRowOutliers} fp16 outliers per row` : ''} (Gather subgraph)`,
    )
  }
  return null
}
