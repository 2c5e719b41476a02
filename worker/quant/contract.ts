/**
 * The contract every weight quantizer implements (one file per method: rtn.ts, nf4.ts, fp4.ts,
 * anyn.ts, kmeans.ts, gptq.ts, awq.ts, later the ggml types), and what `registry.ts` maps ids
 * to — like onnxruntime-web's op table: adding a method never touches the others.
 *
 * Conventions:
 * - A weight is a float32 matrix [rows, cols] in HF orientation: one row per output channel,
 *   `cols` input channels (a linear weight [N, K] as stored in safetensors).
 * - "Group" = `group` consecutive input columns of one row. group 0 (or group = cols) means one
 *   group per row (per output channel). A group that does not divide `cols` is an error.
 * - A QuantizedTensor holds exactly what the method stores (packed codes, fp16 scales, zero
 *   points, per-row tables, sparse outliers) and dequantizes from those stored values only, so
 *   what the app evaluates is what an exporter writes, bit for bit.
 * - Pure computation: no I/O, no Electron, no DOM. Long loops check `signal` between rows.
 */
import type * as v from 'valibot'

/** What a method needs besides the weight. */
export type CalibrationNeed =
  /** Nothing: the weight alone. */
  | 'none'
  /** Per-input-channel activation statistics of the layer input (means). */
  | 'activation-stats'
  /** The input Gram matrix XᵀX of calibration activations (GPTQ, AWQ's output error). */
  | 'gram'

/**
 * Calibration data of one linear layer's input, as activation capture produces it
 * (worker/inference/activation-capture.ts): statistics over `count` tokens of the `cols` input
 * channels, and optionally Σ xᵀx.
 */
export interface LayerCalibration {
  /** Tokens reduced. */
  count: number
  /** Signed mean x̄_j per input channel. */
  mean: ArrayLike<number>
  /** Mean |x_j|. */
  meanAbs: ArrayLike<number>
  /** Mean x_j². */
  meanSq: ArrayLike<number>
  /** Σ over tokens of xᵀx, [cols × cols] row-major (not divided by count). */
  gram?: Float64Array
}

/** Bytes of a quantized tensor by kind, so size breakdowns (memory bars, reports) add up. */
export interface StorageBreakdown {
  /** Packed codes (indices / integers), n bits per weight. */
  codes: number
  /** Scales (and any per-group float, e.g. any4's group minimum). */
  scales: number
  /** Integer zero points. */
  zeros: number
  /** Lookup tables / codebooks. */
  tables: number
  /** Sparse outliers: index + fp16 value each. */
  outliers: number
}

export function totalBytes(s: StorageBreakdown): number {
  return s.codes + s.scales + s.zeros + s.tables + s.outliers
}

export interface QuantizedTensor {
  /** Method id (registry key). */
  readonly method: string
  readonly rows: number
  readonly cols: number
  /** Exact storage by kind; `bytes` is their sum. Equals the method's `storage()` for the same shape and params. */
  readonly storage: StorageBreakdown
  readonly bytes: number
  /** Dequantized float32 rows [r0, r1) (length (r1 − r0)·cols), from the stored values only. */
  dequantizeRows(r0: number, r1: number): Float32Array
  /**
   * The values the weight at (row, col) can take (its group's grid or its row's table),
   * ascending, outliers excluded. For the UI overlay: e.g. any4's lookup table of a row.
   */
  levels(row: number, col?: number): Float32Array
}

export interface QuantizeHooks {
  signal?: AbortSignal
  /** Rows done / rows. */
  onProgress?(done: number, total: number): void
  /**
   * Hot loops in plain TS or WASM SIMD (quant/wasm-kernels.ts); unset = WASM when it loads.
   * Both give bit-identical results; this is for tests and the benchmark.
   */
  kernel?: 'ts' | 'wasm'
}

export interface QuantMethod<P extends object = Record<string, unknown>> {
  /** Registry key and the METHOD of a CLI spec: 'rtn', 'nf4', 'any4', 'gptq', … */
  readonly id: string
  /** One line for menus. */
  readonly label: string
  /** Parameters with their defaults; parsing `{}` gives the defaults. */
  readonly schema: v.GenericSchema<unknown, P>
  /** What `quantize` needs for these params (any4's 'weights' weighting needs nothing). */
  needs(params: P): CalibrationNeed
  /** Nominal bits per weight of the codes (4 for any4), for the grid and menus. */
  bits(params: P): number
  /**
   * Exact bytes a [rows, cols] tensor takes under these params, without quantizing it (plans
   * and allocation size models before any work). Throws QuantParamError when the shape does
   * not fit the params (e.g. the group does not divide cols).
   */
  storage(rows: number, cols: number, params: P): StorageBreakdown
  quantize(weight: Float32Array, rows: number, cols: number, params: P, calibration?: LayerCalibration, hooks?: QuantizeHooks): QuantizedTensor
}

/** Bad params, a shape they do not fit, bad weights or missing calibration; names the tensor when known. */
export class QuantParamError extends Error {
  constructor(
    readonly tensor: string | null,
    readonly problem: string,
  ) {
    super(tensor ? `${tensor}: ${problem}` : problem)
    this.name = 'QuantParamError'
  }
}

/** Columns per group: 0 or cols → cols; otherwise must divide cols. */
export function groupColumns(cols: number, group: number): number {
  if (group === 0 || group === cols) return cols
  if (!Number.isInteger(group) || group < 1) throw new QuantParamError(null, `group must be a positive integer or 0 (per row), got ${group}`)
  if (cols % group !== 0) throw new QuantParamError(null, `group ${group} does not divide the row length ${cols}`)
  return group
}

/** groupColumns, or 0 where it would throw (for callers that leave the error to a later check). */
export function groupColumnsOrZero(cols: number, group: number): number {
  try {
    return groupColumns(cols, group)
  } catch {
    return 0
  }
}

/** Bytes of n codes of `bits` bits each, packed contiguously over the whole tensor. */
export function packedBytes(n: number, bits: number): number {
  return Math.ceil((n * bits) / 8)
}
