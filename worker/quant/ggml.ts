/**
 * llama.cpp's ggml quantization types as a method of the library: `ggml:type=Q4_K`
 * (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), optionally
 * `ggml:type=Q4_K,imatrix=true` to weight by activations as `llama-quantize --imatrix` does.
 *
 * Each row (one output channel, `cols` input values) becomes cols/32 or cols/256 ggml blocks,
 * computed as ggml's `quantize_q*` of ggml-quants.c does (the *_ref routines without
 * importance weights, the *_impl ones with them; see ggml-legacy-quants.ts and
 * ggml-k-quants.ts). The tensor keeps exactly those block bytes, rows back to back — the
 * data of a GGUF tensor of that type with ne = [cols, rows] — so an exporter writes them
 * unchanged, and it dequantizes them with the GGUF reader's decoders (formats/gguf/dequant.ts).
 *
 * Importance weights: llama.cpp's imatrix of a tensor is the mean of x² over calibration
 * tokens per input column, which is `LayerCalibration.meanSq`; llama-quantize passes it as
 * `quant_weights` to every row. Q8_0 has no weighted variant (ggml ignores the weights).
 *
 * Storage: `codes` counts the bytes holding per-value bits (qs, and qh/hmask high bits);
 * `scales` the per-block floats and the packed sub-block scale/min integers.
 */
import * as v from 'valibot'
import { QuantParamError, type LayerCalibration, type QuantMethod, type QuantizeHooks, type QuantizedTensor, type StorageBreakdown } from './contract'
import { checkRowRange, checkShape, checkWeight, forEachRow, sortedUnique } from './common'
import { dequantize } from '../formats/gguf/dequant'
import { ggmlTypeByName } from '../formats/gguf/ggml-types'
import { quantizeRowQ4_0, quantizeRowQ4_1, quantizeRowQ5_0, quantizeRowQ5_1, quantizeRowQ8_0 } from './ggml-legacy-quants'
import { quantizeRowQ2_K, quantizeRowQ3_K, quantizeRowQ4_K, quantizeRowQ5_K, quantizeRowQ6_K } from './ggml-k-quants'
import { ggmlBlockLevels } from './ggml-levels'

export const GGML_QUANT_TYPES = ['Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'] as const
export type GgmlQuantType = (typeof GGML_QUANT_TYPES)[number]

type RowQuantizer = (x: Float32Array, xo: number, n: number, out: Uint8Array, o: number, qw: ArrayLike<number> | null) => void

interface TypeSpec {
  /** Values per block. */
  block: number
  /** Bytes per block, and how many of them hold per-value code bits. */
  bytes: number
  codeBytes: number
  /** Nominal bits per value of the codes. */
  bits: number
  quantizeRow: RowQuantizer
}

// Byte counts from the block_* structs of ggml-common.h; checked against formats/gguf/ggml-types.ts below.
const TYPES: Readonly<Record<GgmlQuantType, TypeSpec>> = Object.freeze({
  Q8_0: { block: 32, bytes: 34, codeBytes: 32, bits: 8, quantizeRow: quantizeRowQ8_0 },
  Q4_0: { block: 32, bytes: 18, codeBytes: 16, bits: 4, quantizeRow: quantizeRowQ4_0 },
  Q4_1: { block: 32, bytes: 20, codeBytes: 16, bits: 4, quantizeRow: quantizeRowQ4_1 },
  Q5_0: { block: 32, bytes: 22, codeBytes: 20, bits: 5, quantizeRow: quantizeRowQ5_0 },
  Q5_1: { block: 32, bytes: 24, codeBytes: 20, bits: 5, quantizeRow: quantizeRowQ5_1 },
  Q2_K: { block: 256, bytes: 84, codeBytes: 64, bits: 2, quantizeRow: quantizeRowQ2_K },
  Q3_K: { block: 256, bytes: 110, codeBytes: 96, bits: 3, quantizeRow: quantizeRowQ3_K },
  Q4_K: { block: 256, bytes: 144, codeBytes: 128, bits: 4, quantizeRow: quantizeRowQ4_K },
  Q5_K: { block: 256, bytes: 176, codeBytes: 160, bits: 5, quantizeRow: quantizeRowQ5_K },
  Q6_K: { block: 256, bytes: 210, codeBytes: 192, bits: 6, quantizeRow: quantizeRowQ6_K },
})

for (const [name, t] of Object.entries(TYPES)) {
  const info = ggmlTypeByName(name)
  if (!info || info.blockSize !== t.block || info.typeSize !== t.bytes) throw new Error(`ggml quant table: ${name} disagrees with ggml-types.ts`)
}

export const ggmlSchema = v.strictObject({
  type: v.picklist(GGML_QUANT_TYPES, `type must be one of ${GGML_QUANT_TYPES.join(', ')}`),
  imatrix: v.optional(v.boolean('imatrix must be true or false'), false),
})
export type GgmlParams = v.InferOutput<typeof ggmlSchema>

/** Blocks per row; a row length that is not a whole number of blocks is refused, as llama-quantize refuses it. */
function blocksPerRow(cols: number, type: GgmlQuantType): number {
  const t = TYPES[type]
  if (cols % t.block !== 0) {
    throw new QuantParamError(null, `ggml ${type} needs rows of a multiple of ${t.block} values (its block size), this tensor's rows have ${cols}`)
  }
  return cols / t.block
}

export function ggmlStorage(rows: number, cols: number, params: GgmlParams): StorageBreakdown {
  checkShape(rows, cols)
  const t = TYPES[params.type]
  const blocks = rows * blocksPerRow(cols, params.type)
  return { codes: blocks * t.codeBytes, scales: blocks * (t.bytes - t.codeBytes), zeros: 0, tables: 0, outliers: 0 }
}

export class GgmlQuantizedTensor implements QuantizedTensor {
  readonly method = 'ggml'
  readonly storage: StorageBreakdown
  readonly bytes: number
  /** Bytes of one row of blocks. */
  readonly rowBytes: number

  constructor(
    readonly rows: number,
    readonly cols: number,
    readonly type: GgmlQuantType,
    /** The ggml blocks of all rows, row-major: GGUF tensor data of `type`, ne = [cols, rows]. */
    readonly blocks: Uint8Array,
  ) {
    this.storage = ggmlStorage(rows, cols, { type, imatrix: false })
    this.bytes = this.storage.codes + this.storage.scales
    this.rowBytes = (cols / TYPES[type].block) * TYPES[type].bytes
    if (blocks.length !== rows * this.rowBytes) throw new QuantParamError(null, `ggml ${type}: [${rows}, ${cols}] needs ${rows * this.rowBytes} bytes of blocks, got ${blocks.length}`)
  }

  dequantizeRows(r0: number, r1: number): Float32Array {
    checkRowRange(this.rows, r0, r1)
    return dequantize(this.type, this.blocks.subarray(r0 * this.rowBytes, r1 * this.rowBytes), (r1 - r0) * this.cols)
  }

  levels(row: number, col = 0): Float32Array {
    if (!Number.isInteger(row) || row < 0 || row >= this.rows) throw new RangeError(`levels: row ${row} is outside [0, ${this.rows})`)
    if (!Number.isInteger(col) || col < 0 || col >= this.cols) throw new RangeError(`levels: column ${col} is outside [0, ${this.cols})`)
    const t = TYPES[this.type]
    const at = row * this.rowBytes + Math.floor(col / t.block) * t.bytes
    return sortedUnique(ggmlBlockLevels(this.type, this.blocks.subarray(at, at + t.bytes), col % t.block))
  }
}

/** The per-column importance of llama.cpp's imatrix: calibration mean x², checked. */
function importanceWeights(cols: number, calibration: LayerCalibration | undefined): Float32Array {
  if (!calibration) throw new QuantParamError(null, 'ggml with imatrix=true needs activation statistics (calibration meanSq), none given')
  const ms = calibration.meanSq
  if (ms.length !== cols) throw new QuantParamError(null, `ggml imatrix: calibration has ${ms.length} channel mean squares, the weight has ${cols} input columns`)
  const w = Float32Array.from(ms)
  for (let j = 0; j < cols; j++) {
    if (!(w[j]! >= 0) || !Number.isFinite(w[j]!)) throw new QuantParamError(null, `ggml imatrix: mean square of input channel ${j} is ${ms[j]}`)
  }
  return w
}

/** The method, with `quantize` typed to give the block bytes (the GGUF exporter writes them). */
export interface GgmlMethod extends QuantMethod<GgmlParams> {
  quantize(weight: Float32Array, rows: number, cols: number, params: GgmlParams, calibration?: LayerCalibration, hooks?: QuantizeHooks): GgmlQuantizedTensor
}

export const ggmlMethod: GgmlMethod = {
  id: 'ggml',
  label: 'ggml block types (llama.cpp Q8_0 … Q6_K)',
  schema: ggmlSchema,
  needs: (p) => (p.imatrix ? 'activation-stats' : 'none'),
  bits: (p) => TYPES[p.type].bits,
  storage: ggmlStorage,
  quantize(weight: Float32Array, rows: number, cols: number, params: GgmlParams, calibration?: LayerCalibration, hooks?: QuantizeHooks): GgmlQuantizedTensor {
    checkWeight(weight, rows, cols)
    const t = TYPES[params.type]
    const rowBytes = blocksPerRow(cols, params.type) * t.bytes
    const qw = params.imatrix && params.type !== 'Q8_0' ? importanceWeights(cols, calibration) : null
    if (params.imatrix && params.type === 'Q8_0') importanceWeights(cols, calibration) // same contract, even if unused
    const out = new Uint8Array(rows * rowBytes)
    forEachRow(rows, hooks, (r) => {
      t.quantizeRow(weight, r * cols, cols, out, r * rowBytes, qw)
      if (rowAbsMax(weight, r * cols, cols) >= FP16_SAFE_ABSMAX) checkRowScalesFinite(out, r, rowBytes, params.type)
    })
    return new GgmlQuantizedTensor(rows, cols, params.type, out)
  },
}

/**
 * Every fp16 value a ggml block stores (scales, minima, super-block scales) is at most twice
 * the block's largest |w| (a scale is a range over at least one code step; a minimum is a
 * weight), so rows below half of fp16's largest value cannot overflow and skip the
 * dequantising probe below, which cost most of a GGUF export's checking time.
 */
const FP16_SAFE_ABSMAX = 65504 / 2

function rowAbsMax(weight: Float32Array, offset: number, cols: number): number {
  let m = 0
  for (let j = offset; j < offset + cols; j++) {
    const a = Math.abs(weight[j]!)
    if (a > m) m = a
  }
  return m
}

/** ggml would store an Inf scale for weights beyond fp16's range; refuse them instead, naming the row. */
function checkRowScalesFinite(out: Uint8Array, row: number, rowBytes: number, type: GgmlQuantType): void {
  const t = TYPES[type]
  const probe = dequantize(type, out.subarray(row * rowBytes, (row + 1) * rowBytes), (rowBytes / t.bytes) * t.block)
  for (let i = 0; i < probe.length; i++) {
    if (!Number.isFinite(probe[i]!)) throw new QuantParamError(null, `ggml ${type}: row ${row} has weights too large for fp16 block scales (|w| beyond ~65504 × the code range)`)
  }
}
