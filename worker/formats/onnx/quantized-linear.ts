import { bytesOf } from './external-data'
import { MS_DOMAIN, type ElemType, type GraphBuilder } from './graph-builder'

/**
 * Quantized linears as ONNX nodes, from plain arrays (the exporter recovers them from a
 * QuantizedTensor; this file knows only the ONNX side):
 *
 * - NBitsLinear → com.microsoft MatMulNBits: B uint8 [N, blocks, blockSize·bits/8] (codes least
 *   significant bits first), float32 scales [N·blocks], zero points packed uint8
 *   [N, ceil(blocks·bits/8)] or float32 [N·blocks] (absent: 2^(bits−1)); onnxruntime computes
 *   y = x·((q − zp)·scale)ᵀ. An optional per-input-column divisor (AWQ) divides x first.
 * - GroupDequantLinear → a small dequantising subgraph feeding Gemm (transB): packed codes
 *   (two per byte up to 4 bits) unpacked with BitShift, looked up in the per-row or shared table
 *   (GatherElements / Gather) or taken as integers, then per group − zero, × scale, + offset,
 *   ÷ a per-column divisor, and sparse outliers scattered in. Every step is one float32
 *   operation in the order the quantizers evaluate it, so the weight equals dequantizeRows bit
 *   for bit (the exporter checks that per tensor). All its inputs are initializers, so
 *   onnxruntime folds the subgraph once when the session loads.
 */
export type FloatData = { type: 'float16'; bits: Uint16Array } | { type: 'float32'; values: Float32Array }

export interface NBitsLinear {
  kind: 'nbits'
  N: number
  K: number
  bits: number
  blockSize: number
  /** One unsigned code per weight, row-major [N, K]. */
  codes: Uint8Array
  /** [N · blocks]. */
  scales: Float32Array
  /** Unsigned integer zero points [N · blocks], float ones, or null (2^(bits−1)). */
  zeroPoints: { type: 'uint8'; values: Uint8Array } | { type: 'float32'; values: Float32Array } | null
  /** x is divided by these per input column first (AWQ's s), or null. */
  inputDivisor: FloatData | null
}

export interface GroupDequantLinear {
  kind: 'dequant'
  rows: number
  cols: number
  bits: number
  groupCols: number
  /** One code per weight, row-major [rows, cols]. */
  codes: Uint8Array
  /** Lookup table per row [rows, 2^bits] or shared [2^bits]; null: the code itself is the value. */
  table: { perRow: boolean; data: FloatData } | null
  /** Per group [rows · groups]; a single value applies to all groups. */
  zero: FloatData | null
  scale: FloatData | null
  offset: FloatData | null
  /** Per input column [cols], or null. */
  columnDivisor: FloatData | null
  /** Columns [rows, perRow] (ascending) and values [rows, perRow] that replace decoded weights. */
  outliers: { perRow: number; cols: Int32Array; values: FloatData } | null
}

export type QuantizedLinear = NBitsLinear | GroupDequantLinear

/** Writes one initializer (external data) and returns its value name. */
export type StoreTensor = (name: string, type: ElemType, dims: number[], bytes: Uint8Array) => Promise<string>

/** MatMulNBits needs a block size that is a power of two ≥ 16; CPU kernels exist for 4 and 8 bits. */
export function nbitsBlockOk(bits: number, blockSize: number): boolean {
  return (bits === 4 || bits === 8) && blockSize >= 16 && (blockSize & (blockSize - 1)) === 0
}

/** `bits`-bit values packed least significant bits first, each row starting on a byte. */
export function packRowsLsbFirst(values: Uint8Array, rows: number, perRow: number, bits: number): Uint8Array {
  const rowBytes = Math.ceil((perRow * bits) / 8)
  const out = new Uint8Array(rows * rowBytes)
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < perRow; i++) {
      const bit = i * bits
      const at = r * rowBytes + (bit >> 3)
      const v = values[r * perRow + i]! << (bit & 7)
      out[at] = out[at]! | (v & 0xff)
      if ((bit & 7) + bits > 8) out[at + 1] = out[at + 1]! | (v >> 8)
    }
  }
  return out
}

async function storeFloat(store: StoreTensor, g: GraphBuilder, name: string, dims: number[], data: FloatData): Promise<string> {
  if (data.type === 'float32') return store(name, 'float32', dims, bytesOf(data.values))
  // fp16 storage is exact for the quantizers' fp16 scales and tables; widened once at load.
  const stored = await store(name, 'float16', dims, bytesOf(data.bits))
  return g.op('Cast', [stored], { to: { int: 1 } })
}

function floatLength(d: FloatData): number {
  return d.type === 'float32' ? d.values.length : d.bits.length
}

export async function emitMatMulNBits(g: GraphBuilder, store: StoreTensor, x: string, name: string, q: NBitsLinear): Promise<string> {
  const blocks = q.K / q.blockSize
  if (!Number.isInteger(blocks)) throw new Error(`${name}: K = ${q.K} is not a multiple of the block size ${q.blockSize}`)
  const B = await store(`${name}.B`, 'uint8', [q.N, blocks, (q.blockSize * q.bits) / 8], packRowsLsbFirst(q.codes, q.N, q.K, q.bits))
  const scales = await store(`${name}.scales`, 'float32', [q.N * blocks], bytesOf(q.scales))
  let zp = ''
  if (q.zeroPoints?.type === 'uint8') {
    const packed = packRowsLsbFirst(q.zeroPoints.values, q.N, blocks, q.bits)
    zp = await store(`${name}.zero_points`, 'uint8', [packed.length], packed)
  } else if (q.zeroPoints) {
    zp = await store(`${name}.zero_points`, 'float32', [q.N * blocks], bytesOf(q.zeroPoints.values))
  }
  let input = x
  if (q.inputDivisor) input = g.op('Div', [x, await storeFloat(store, g, `${name}.input_scale`, [q.K], q.inputDivisor)])
  const inputs = zp ? [input, B, scales, zp] : [input, B, scales]
  return g.op(
    'MatMulNBits',
    inputs,
    { K: { int: q.K }, N: { int: q.N }, bits: { int: q.bits }, block_size: { int: q.blockSize }, accuracy_level: { int: 0 } },
    MS_DOMAIN,
  )
}

/** Codes as stored: two per byte (low nibble first) up to 4 bits with an even row, else one per byte. */
function packCodes(codes: Uint8Array, bits: number, cols: number): { bytes: Uint8Array; perByte: 1 | 2 } {
  if (bits > 4 || cols % 2 !== 0) return { bytes: codes, perByte: 1 }
  const out = new Uint8Array(codes.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = codes[2 * i]! | (codes[2 * i + 1]! << 4)
  return { bytes: out, perByte: 2 }
}

/** The dequantised weight [rows, cols] as a value of the graph. */
export async function emitGroupDequant(g: GraphBuilder, store: StoreTensor, name: string, q: GroupDequantLinear): Promise<string> {
  const { rows, cols } = q
  const groups = cols / q.groupCols
  const shape = (...dims: number[]): string => g.constInt64(dims)
  const packed = packCodes(q.codes, q.bits, cols)
  const stored = await store(`${name}.codes`, 'uint8', packed.perByte === 2 ? [rows, cols / 2] : [rows, cols], packed.bytes)
  let codes = stored
  if (packed.perByte === 2) {
    const four = g.constUint8(4)
    const high = g.op('BitShift', [stored, four], { direction: { string: 'RIGHT' } })
    const low = g.op('BitShift', [g.op('BitShift', [stored, four], { direction: { string: 'LEFT' } }), four], { direction: { string: 'RIGHT' } })
    const last = g.constInt64([-1])
    const pairs = g.op('Concat', [g.op('Unsqueeze', [low, last]), g.op('Unsqueeze', [high, last])], { axis: { int: -1 } })
    codes = g.op('Reshape', [pairs, shape(rows, cols)])
  }
  let w: string
  if (q.table) {
    const levels = q.table.perRow ? floatLength(q.table.data) / rows : floatLength(q.table.data)
    const table = await storeFloat(store, g, `${name}.table`, q.table.perRow ? [rows, levels] : [levels], q.table.data)
    const index = g.op('Cast', [codes], { to: { int: 7 } })
    w = q.table.perRow ? g.op('GatherElements', [table, index], { axis: { int: 1 } }) : g.op('Gather', [table, index], { axis: { int: 0 } })
  } else {
    w = g.op('Cast', [codes], { to: { int: 1 } })
  }
  // Per-group terms broadcast over [rows, groups, groupCols].
  const perGroup = async (part: string, d: FloatData | null): Promise<string | null> => {
    if (!d) return null
    const n = floatLength(d)
    return storeFloat(store, g, `${name}.${part}`, n === 1 ? [] : [rows, groups, 1], d)
  }
  const zero = await perGroup('zero', q.zero)
  const scale = await perGroup('scale', q.scale)
  const offset = await perGroup('offset', q.offset)
  if (zero || scale || offset) {
    w = g.op('Reshape', [w, shape(rows, groups, q.groupCols)])
    if (zero) w = g.op('Sub', [w, zero])
    if (scale) w = g.op('Mul', [w, scale])
    if (offset) w = g.op('Add', [w, offset])
    w = g.op('Reshape', [w, shape(rows, cols)])
  }
  if (q.columnDivisor) w = g.op('Div', [w, await storeFloat(store, g, `${name}.column_scale`, [cols], q.columnDivisor)])
  if (q.outliers && q.outliers.perRow > 0) {
    const at = await store(`${name}.outlier_cols`, 'int64', [rows, q.outliers.perRow], bytesOf(BigInt64Array.from(q.outliers.cols, (c) => BigInt(c))))
    const values = await storeFloat(store, g, `${name}.outlier_values`, [rows, q.outliers.perRow], q.outliers.values)
    w = g.op('ScatterElements', [w, at, values], { axis: { int: 1 } })
  }
  return w
}

/** y = x·Wᵀ for one quantized linear. */
export async function emitQuantizedLinear(g: GraphBuilder, store: StoreTensor, x: string, name: string, q: QuantizedLinear): Promise<string> {
  if (q.kind === 'nbits') return emitMatMulNBits(g, store, x, name, q)
  return g.op('Gemm', [x, await emitGroupDequant(g, store, name, q)], { transB: { int: 1 } })
}
