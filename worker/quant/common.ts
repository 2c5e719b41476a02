/**
 * What every quantizer in this folder shares: input checks, fp16 storage of floats (through the
 * engine's one encoder in formats/dtypes.ts), row loops with cancel and progress, and the
 * parameter schema pieces, so that `rtn:bits=9` and `any3:group=100` fail the same way everywhere.
 */
import * as v from 'valibot'
import { f16ToF32, f32ToF16 } from '../formats/dtypes'
import { QuantParamError, type LayerCalibration, type QuantizeHooks } from './contract'

/** Weight length and finiteness; the first NaN/Inf is named by row and column. */
export function checkWeight(weight: Float32Array, rows: number, cols: number): void {
  checkWeightShape(weight, rows, cols)
  for (let i = 0; i < weight.length; i++) {
    const x = weight[i]!
    // x - x is 0 for finite x and NaN for ±Inf and NaN: one compare per element.
    if (x - x !== 0) {
      throw new QuantParamError(null, `weight[${Math.floor(i / cols)}, ${i % cols}] is ${x}: NaN/Inf weights cannot be quantized`)
    }
  }
}

/** checkWeight without the finiteness scan (for kernels that detect NaN/Inf themselves). */
export function checkWeightShape(weight: Float32Array, rows: number, cols: number): void {
  checkShape(rows, cols)
  if (weight.length !== rows * cols) {
    throw new QuantParamError(null, `weight has ${weight.length} values, shape [${rows}, ${cols}] needs ${rows * cols}`)
  }
}

/** A [rows, cols] shape of positive integers (storage() sizes a shape before any weight exists). */
export function checkShape(rows: number, cols: number): void {
  if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new QuantParamError(null, `shape must be two positive integers, got [${rows}, ${cols}]`)
  }
}

/** Calibration present when needed and of the right width; returns it narrowed. */
export function requireActivationMeans(method: string, cols: number, calibration: LayerCalibration | undefined): ArrayLike<number> {
  if (!calibration) throw new QuantParamError(null, `${method} needs activation statistics (calibration) for this weighting, none given`)
  const mean = calibration.mean
  if (mean.length !== cols) throw new QuantParamError(null, `${method}: calibration has ${mean.length} channel means, the weight has ${cols} input columns`)
  for (let j = 0; j < cols; j++) {
    const m = mean[j]!
    if (m - m !== 0) throw new QuantParamError(null, `${method}: calibration mean of input channel ${j} is ${m}`)
  }
  return mean
}

/** x rounded to the nearest fp16 (ties to even), as the stored value will read back. */
export function roundF16(x: number): number {
  return f16ToF32(f32ToF16(x))
}

/**
 * fp16 storage of a float array: the stored bits and their decoded float32 values (what
 * dequantization multiplies with). Values outside fp16's range are an error, not an Inf.
 */
export class F16Array {
  readonly bits: Uint16Array
  readonly values: Float32Array
  constructor(length: number) {
    this.bits = new Uint16Array(length)
    this.values = new Float32Array(length)
  }
  /** Stores x (rounded) at i and returns the value that will be read back. */
  set(i: number, x: number, what: () => string): number {
    const h = f32ToF16(x)
    const back = f16ToF32(h)
    if (!Number.isFinite(back)) throw new QuantParamError(null, `${what()} = ${x} does not fit fp16 (|x| > 65504)`)
    this.bits[i] = h
    this.values[i] = back
    return back
  }
}

/** Calls `body(row)` for each row, checking cancel and reporting progress about 100 times. */
export function forEachRow(rows: number, hooks: QuantizeHooks | undefined, body: (row: number) => void): void {
  const every = Math.max(1, Math.floor(rows / 100))
  for (let r = 0; r < rows; r++) {
    if (r % every === 0) {
      hooks?.signal?.throwIfAborted()
      if (r > 0) hooks?.onProgress?.(r, rows)
    }
    body(r)
  }
  hooks?.onProgress?.(rows, rows)
}

/** Rows range check for dequantizeRows. */
export function checkRowRange(rows: number, r0: number, r1: number): void {
  if (!Number.isInteger(r0) || !Number.isInteger(r1) || r0 < 0 || r1 > rows || r0 > r1) {
    throw new RangeError(`dequantizeRows(${r0}, ${r1}) is outside the tensor's ${rows} rows`)
  }
}

/** Sorted unique values of `xs` (levels of a grid, where fp16 rounding may merge neighbours). */
export function sortedUnique(xs: ArrayLike<number>): Float32Array {
  const a = Float32Array.from(xs).sort()
  let n = 0
  for (let i = 0; i < a.length; i++) if (i === 0 || a[i] !== a[n - 1]) a[n++] = a[i]!
  return a.slice(0, n)
}

// ---- schema pieces -------------------------------------------------------------------------

export function bitsSchema(min: number, max: number, fallback: number) {
  return v.optional(
    v.pipe(
      v.number('bits must be a number'),
      v.integer(`bits must be an integer from ${min} to ${max}`),
      v.minValue(min, `bits must be an integer from ${min} to ${max}`),
      v.maxValue(max, `bits must be an integer from ${min} to ${max}`),
    ),
    fallback,
  )
}

/** Group size: 0 = one group per row; divisibility by the row length is checked per shape. */
export function groupSchema(fallback: number) {
  return v.optional(
    v.pipe(v.number('group must be a number'), v.integer('group must be a non-negative integer (0 = per row)'), v.minValue(0, 'group must be a non-negative integer (0 = per row)')),
    fallback,
  )
}

export function seedSchema() {
  return v.optional(v.pipe(v.number('seed must be a number'), v.integer('seed must be an integer'), v.minValue(0, 'seed must be ≥ 0')), 0)
}
