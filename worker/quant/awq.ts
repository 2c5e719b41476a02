/**
 * AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
 * Acceleration"), for one linear layer, following the reference mit-han-lab/llm-awq:
 * - auto_scale.py `_search_module_scale`: per-input-channel scales s = mean|x|^α (clamped at
 *   1e-4), normalised by √(max s · min s), α ∈ {0, 1/20, …, 19/20}; each candidate quantizes
 *   W·diag(s) with integer RTN, divides by s again and is scored by the layer's output error.
 *   The reference scores a whole block's output on the calibration tokens; here it is this
 *   layer's exact output error over the calibration tokens, tr(E·G·Eᵀ) with E = Ŵ − W and
 *   G = XᵀX, so no activation is kept (and α is chosen per layer, not shared by q/k/v).
 * - auto_clip.py `auto_clip_layer`: per (row, group) of W·diag(s), the clip max|w|·(1 − i/20),
 *   i = 0 … 9 (shrink down to 0.55, as the reference's int(0.5·20) steps), each scored by the
 *   output error restricted to the group's columns, e·G_gg·eᵀ (the reference measures the
 *   group's partial output on 512 sampled tokens; G_gg is all of them). The reference skips
 *   clipping for q/k projections ("hard to clip precisely" through the q·k product): a plan can
 *   do the same with clip=false.
 * - Grid: quantizer.py `pseudo_quantize_tensor` (int-grid.ts rule 'awq').
 * Storage (a choice, documented): the integer codes and fp16 group scales (+ zeros) of the clipped
 * W·diag(s), plus s itself as fp16 per input column; ŵ_ij = deq(q_ij)/s_j. Real AWQ folds 1/s
 * into the previous op (a norm's weight or the previous linear) and stores only the quantized
 * W·diag(s); for evaluating this layer's weight alone the division is the same thing, and the
 * 2 bytes per input column of s are counted under `scales`.
 */
import * as v from 'valibot'
import { f16ToF32, f32ToF16 } from '../formats/dtypes'
import { type LayerCalibration, type QuantMethod, type QuantizeHooks, QuantParamError, groupColumns } from './contract'
import { quadraticForm, requireGram, rowsQuadraticForm } from './gram'
import { F16Array, bitsSchema, checkWeight, groupSchema } from './common'
import { IntGroupTensor, fitIntGrid, intGroupStorage, newGroupGrid, quantizeToGrid, storeGridScale } from './int-grid'
import { QUADRATIC_CHUNK_ROWS, quadraticRowsWasm, useWasmKernels } from './wasm-kernels'

/** α candidates (auto_scale.py n_grid). */
export const AWQ_ALPHA_GRID = 20
/** Clip candidates 1 − i/20 for i < 10 (auto_clip.py n_grid = 20, max_shrink = 0.5). */
export const AWQ_CLIP_GRID = 20
export const AWQ_CLIP_STEPS = 10

export const awqParamsSchema = v.strictObject({
  bits: bitsSchema(2, 8, 4),
  group: groupSchema(128),
  /** The reference only ever uses asymmetric (zero-point) grids. */
  sym: v.optional(v.boolean('sym must be true or false'), false),
  /** Per-group clipping search after the scale search. */
  clip: v.optional(v.boolean('clip must be true or false'), true),
})
export type AwqParams = v.InferOutput<typeof awqParamsSchema>

/** What the searches chose, for reports and the inspector. */
export interface AwqSearch {
  /** The chosen exponent α. */
  alpha: number
  /** Output error tr(E·G·Eᵀ) (summed over calibration tokens) of each α candidate, before clipping. */
  alphaErrors: Float64Array
  /** Output error of the stored result (after clipping). */
  error: number
}

export class AwqTensor extends IntGroupTensor {
  constructor(
    rows: number,
    cols: number,
    bits: number,
    groupCols: number,
    codes: Uint8Array,
    scales: F16Array,
    zeros: Uint8Array | null,
    columnScales: F16Array,
    readonly search: AwqSearch,
  ) {
    super('awq', rows, cols, bits, groupCols, codes, scales, zeros, columnScales)
  }
}

/** s = mean|x|^α clamped at 1e-4, normalised by √(max·min), rounded to fp16 (as stored). */
export function awqScales(meanAbs: ArrayLike<number>, alpha: number, bitsOut: Uint16Array, valuesOut: Float64Array): void {
  const n = bitsOut.length
  let max = -Infinity
  let min = Infinity
  for (let j = 0; j < n; j++) {
    const s = Math.max(Math.pow(meanAbs[j]!, alpha), 1e-4)
    valuesOut[j] = s
    if (s > max) max = s
    if (s < min) min = s
  }
  const norm = Math.sqrt(max * min)
  for (let j = 0; j < n; j++) {
    const bits = f32ToF16(valuesOut[j]! / norm)
    const s = f16ToF32(bits)
    if (!(s > 0 && Number.isFinite(s))) throw new QuantParamError(null, `awq: channel ${j}'s scale ${valuesOut[j]! / norm} at α=${alpha} is outside fp16 (activation magnitudes span too wide a range)`)
    bitsOut[j] = bits
    valuesOut[j] = s
  }
}

function checkMeanAbs(calibration: LayerCalibration, cols: number): void {
  const m = calibration.meanAbs
  if (m.length !== cols) throw new QuantParamError(null, `awq: calibration.meanAbs has ${m.length} channels, expected ${cols}`)
  for (let j = 0; j < cols; j++) {
    if (!(Number.isFinite(m[j]!) && m[j]! >= 0)) throw new QuantParamError(null, `awq: calibration.meanAbs[${j}] is ${m[j]}, not a finite mean |x|`)
  }
}

/**
 * Quantizes columns [c0, c1) of row `off` of W·diag(s), clipped to ±maxVal, into the error row
 * `e` (absolute columns: deq/s − w) and, when `codes` is given, stores codes and the grid.
 */
function quantizeGroup(W: Float32Array, off: number, c0: number, c1: number, s: Float64Array, maxVal: number, p: AwqParams, grid: ReturnType<typeof newGroupGrid>, e: Float64Array, codes: Uint8Array | null): void {
  let lo = Infinity
  let hi = -Infinity
  for (let c = c0; c < c1; c++) {
    const ws = W[off + c]! * s[c]!
    if (ws < lo) lo = ws
    if (ws > hi) hi = ws
  }
  fitIntGrid(Math.max(lo, -maxVal), Math.min(hi, maxVal), p.bits, p.sym, 'awq', grid)
  const maxq = 2 ** p.bits - 1
  for (let c = c0; c < c1; c++) {
    let ws = W[off + c]! * s[c]!
    if (ws > maxVal) ws = maxVal
    else if (ws < -maxVal) ws = -maxVal
    const q = quantizeToGrid(ws, grid.scale, grid.zero, maxq)
    if (codes) codes[off + c] = q
    e[c] = (grid.scale * (q - grid.zero)) / s[c]! - W[off + c]!
  }
}

/** Largest |w·s| of a group. */
function groupAbsMax(W: Float32Array, off: number, c0: number, c1: number, s: Float64Array): number {
  let m = 0
  for (let c = c0; c < c1; c++) m = Math.max(m, Math.abs(W[off + c]! * s[c]!))
  return m
}

export function awqQuantize(weight: Float32Array, rows: number, cols: number, p: AwqParams, calibration?: LayerCalibration, hooks: QuantizeHooks = {}): AwqTensor {
  const g = groupColumns(cols, p.group)
  checkWeight(weight, rows, cols)
  const { gram } = requireGram(calibration, cols, 'awq')
  checkMeanAbs(calibration!, cols)
  const { signal, onProgress } = hooks
  const groupsPerRow = cols / g
  const steps = AWQ_ALPHA_GRID + 1
  const grid = newGroupGrid()
  const e = new Float64Array(cols)

  // 1. Scale search over α.
  const sBits = new Uint16Array(cols)
  const s = new Float64Array(cols)
  const alphaErrors = new Float64Array(AWQ_ALPHA_GRID)
  let bestAlpha = 0
  // The hot loop: Σ_rows e·G·eᵀ per α, over chunks of error rows (WASM SIMD when it loads;
  // both kernels give the same bits, test/unit/quant-kernels.test.ts).
  const chunkRows = QUADRATIC_CHUNK_ROWS
  const chunk = new Float64Array(chunkRows * cols)
  const rowErrors = new Float64Array(chunkRows)
  const simd = useWasmKernels(hooks.kernel) ? quadraticRowsWasm(gram, cols) : null
  try {
    for (let a = 0; a < AWQ_ALPHA_GRID; a++) {
      const alpha = a / AWQ_ALPHA_GRID
      awqScales(calibration!.meanAbs, alpha, sBits, s)
      let err = 0
      for (let r0 = 0; r0 < rows; r0 += chunkRows) {
        signal?.throwIfAborted()
        const n = Math.min(chunkRows, rows - r0)
        for (let b = 0; b < n; b++) {
          const row = chunk.subarray(b * cols, (b + 1) * cols)
          for (let k = 0; k < groupsPerRow; k++) quantizeGroup(weight, (r0 + b) * cols, k * g, k * g + g, s, Infinity, p, grid, row, null)
        }
        if (simd) simd.run(chunk, n, rowErrors)
        else rowsQuadraticForm(chunk, n, cols, gram, rowErrors)
        for (let b = 0; b < n; b++) err += rowErrors[b]!
      }
      alphaErrors[a] = err
      if (err < alphaErrors[bestAlpha]!) bestAlpha = a
      onProgress?.(Math.round((rows * (a + 1)) / steps), rows)
    }
  } finally {
    simd?.release()
  }
  const alpha = bestAlpha / AWQ_ALPHA_GRID
  awqScales(calibration!.meanAbs, alpha, sBits, s)

  // 2. Per-group clipping of W·diag(s), scored on the group's block of G; then the stored codes.
  const codes = new Uint8Array(rows * cols)
  const scales = new F16Array(rows * groupsPerRow)
  const zeros = new Uint8Array(rows * groupsPerRow)
  let error = 0
  for (let r = 0; r < rows; r++) {
    if (signal && r % 16 === 0) signal.throwIfAborted()
    const off = r * cols
    for (let k = 0; k < groupsPerRow; k++) {
      const c0 = k * g
      const c1 = c0 + g
      const absMax = groupAbsMax(weight, off, c0, c1, s)
      // i = 0 clips at max|w·s|, which is no clipping.
      let bestShrink = 0
      let bestErr = Infinity
      for (let i = 0; p.clip && i < AWQ_CLIP_STEPS; i++) {
        quantizeGroup(weight, off, c0, c1, s, absMax * (1 - i / AWQ_CLIP_GRID), p, grid, e, null)
        const err = quadraticForm(e, 0, gram, cols, c0, c1)
        if (err < bestErr) {
          bestErr = err
          bestShrink = i
        }
      }
      quantizeGroup(weight, off, c0, c1, s, absMax * (1 - bestShrink / AWQ_CLIP_GRID), p, grid, e, codes)
      storeGridScale(scales, r * groupsPerRow + k, grid)
      zeros[r * groupsPerRow + k] = grid.zero
    }
    error += quadraticForm(e, 0, gram, cols, 0, cols)
  }
  onProgress?.(rows, rows)

  const columnScales = new F16Array(cols)
  columnScales.bits.set(sBits)
  columnScales.values.set(s)
  return new AwqTensor(rows, cols, p.bits, g, codes, scales, p.sym ? null : zeros, columnScales, { alpha, alphaErrors, error })
}

export const awqMethod: QuantMethod<AwqParams> = {
  id: 'awq',
  label: 'AWQ: activation-aware channel scales and clipping from calibration',
  schema: awqParamsSchema,
  needs: () => 'gram',
  bits: (p) => p.bits,
  storage: (rows, cols, p) => intGroupStorage(rows, cols, p.bits, groupColumns(cols, p.group), p.sym, true),
  quantize: (weight, rows, cols, p, calibration, hooks) => awqQuantize(weight, rows, cols, p, calibration, hooks),
}
