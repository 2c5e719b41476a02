/**
 * Applying a plan: read a planned weight, quantize it with its method, and hand the
 * dequantised rows to whoever needs them — the evaluation graph (as weight overrides), the
 * `quantize` report (error metrics), later the exporters. One tensor at a time, so at most one
 * weight and its quantized form are held beyond what the consumer keeps.
 */
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { readTensor, type RowProducer, type WeightOverrides } from '../inference/weights'
import { classifyTensor } from '../model/logical-model'
import { QuantParamError, type LayerCalibration, type QuantizedTensor, type QuantizeHooks } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import { orientationPlan } from '../stats/orientation'
import { captureCalibration, type CalibrationOptions } from './calibration'
import { PlanError, resolvePlan, type Plan, type ResolvedEntry } from './plan'

/** [out, in] shape the quantizer sees: ONNX MatMul weights are stored [in, out]. */
export function orientedShape(model: OpenedModel, t: TensorEntry): [number, number] {
  const [a, b] = t.shape as [number, number]
  return isTransposed(model, t) ? [b, a] : [a, b]
}

function isTransposed(model: OpenedModel, t: TensorEntry): boolean {
  return orientationPlan(model, t.name, classifyTensor(t.alias ?? t.name).role).transpose
}

export function resolvePlanFor(model: OpenedModel, plan: Plan, source: string, allowOtherModel = false): ResolvedEntry[] {
  return resolvePlan(model, plan, source, { orientedShape: (t) => orientedShape(model, t), allowOtherModel })
}

function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length)
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!
  return out
}

/** The weight in [out, in] orientation, float32. */
export async function readOrientedWeight(model: OpenedModel, entry: ResolvedEntry, signal?: AbortSignal): Promise<Float32Array> {
  const stored = await readTensor(model, entry.tensor.name, undefined, signal)
  return isTransposed(model, entry.tensor) ? transpose(stored, entry.cols, entry.rows) : stored
}

/** Rows read per step of the finiteness scan (~16 MB of float32). */
const SCAN_VALUES = 4 << 20

/**
 * Refuses NaN/Inf in any planned weight before any work starts (a quantizer would fail on it
 * minutes later, or a scale would silently become NaN). One streaming read per tensor.
 */
export async function checkPlannedWeightsFinite(model: OpenedModel, entries: readonly ResolvedEntry[], signal?: AbortSignal): Promise<void> {
  for (const e of entries) {
    const [rows, cols] = e.tensor.shape as [number, number]
    const step = Math.max(1, Math.floor(SCAN_VALUES / cols))
    for (let r0 = 0; r0 < rows; r0 += step) {
      signal?.throwIfAborted()
      const r1 = Math.min(rows, r0 + step)
      const part = await model.readRows(e.tensor.name, r0, r1)
      for (let i = 0; i < part.length; i++) {
        const x = part[i]!
        if (x - x !== 0) {
          throw new PlanError(e.tensor.file, e.tensor.name, `stored value [${r0 + Math.floor(i / cols)}, ${i % cols}] is ${x}: NaN/Inf weights cannot be quantized`)
        }
      }
    }
  }
}

/** Quantizes one planned tensor; errors name the tensor. */
export function quantizeEntry(entry: ResolvedEntry, weight: Float32Array, calibration: LayerCalibration | undefined, hooks?: QuantizeHooks): QuantizedTensor {
  const method = QUANT_METHODS.get(entry.methodId)!
  try {
    return method.quantize(weight, entry.rows, entry.cols, entry.params, calibration, hooks)
  } catch (err) {
    if (err instanceof QuantParamError) throw new PlanError(entry.tensor.file, entry.tensor.name, err.problem)
    throw err
  }
}

export interface PlanOverridesOptions {
  plan: Plan
  /** Where the plan came from (a file path, or 'spec rtn:bits=4'), for error messages. */
  source: string
  calibration?: CalibrationOptions
  /** Use a plan made for another model of the same layout names (default false). */
  allowOtherModel?: boolean
}

/**
 * Weight overrides that quantize each planned tensor when the graph first reads it: the
 * variant "base model + dequantised plan". Calibration is captured once, up front, because
 * every method that needs it must see the full-precision model's activations.
 * This is the `overridesModule` entry the inference worker imports (jobs/spawn-worker.ts
 * ENGINE_MODULES), so the inference layer never depends on the quantizers.
 */
export async function createOverrides(model: OpenedModel, options: PlanOverridesOptions): Promise<WeightOverrides> {
  const entries = resolvePlanFor(model, options.plan, options.source, options.allowOtherModel)
  await checkPlannedWeightsFinite(model, entries)
  const calibration = await captureCalibration(model, entries, options.calibration)
  const overrides = new Map<string, RowProducer>()
  for (const entry of entries) {
    let current: { stored: Float32Array | null; quantized: QuantizedTensor | null } | null = null
    const transposed = isTransposed(model, entry.tensor)
    const load = async () => {
      const weight = await readOrientedWeight(model, entry)
      const quantized = quantizeEntry(entry, weight, calibration.get(entry.tensor.name))
      // Transposed weights are served from their whole dequantised, re-transposed copy.
      current = transposed ? { stored: transpose(quantized.dequantizeRows(0, entry.rows), entry.rows, entry.cols), quantized: null } : { stored: null, quantized }
      return current
    }
    const storedRows = entry.tensor.shape[0]!
    const storedCols = entry.tensor.shape[1]!
    overrides.set(entry.tensor.name, async (r0: number, r1: number) => {
      const c = current ?? (await load())
      const rows = c.stored ? c.stored.slice(r0 * storedCols, r1 * storedCols) : c.quantized!.dequantizeRows(r0, r1)
      // The graph reads each weight once, front to back: drop it after its last row.
      if (r1 === storedRows) current = null
      return rows
    })
  }
  return overrides
}
