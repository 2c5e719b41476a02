/**
 * The plan quant worker's jobs (wire format: worker/jobs/job-protocol.ts), served by
 * quant.worker.ts on a WorkerPool<PlanQuantJobs> ({ worker: 'plan-quant' }, quant-service.ts).
 * One job quantizes one tensor of a model on disk: the worker reads the weight itself, so a
 * pool of N threads quantizes N tensors at once without the caller holding any weight. The
 * calibration a method needs travels with the job (structured clone; XᵀX as a Float64Array).
 */
import type { QuantErrorMetrics } from '../quant/metrics'
import type { LayerCalibration, StorageBreakdown } from '../quant/contract'
import type { CalibrationOptions } from './calibration'
import type { PreviewOptions, TensorPreview } from './quant-preview'

export type { PreviewOptions, TensorPreview }

export type PlanQuantJobs = {
  quantizeTensor: { params: QuantizeTensorParams; result: QuantizeTensorResult }
  /** Captures (or reads from the cache) the calibration the given tensors' methods need. */
  captureCalibration: { params: CaptureCalibrationParams; result: CaptureCalibrationResult }
}

export interface QuantizeTensorParams {
  /** Model path as given to openModel. */
  modelPath: string
  tensor: string
  methodId: string
  /** The method's params as a plan stores them; the method's schema fills in defaults. */
  params: Record<string, unknown>
  /** For methods that need it (anyN means, GPTQ/AWQ XᵀX); also gives the output MSE when it has XᵀX. */
  calibration?: LayerCalibration
  /** Also return what the tensor inspector draws. */
  preview?: PreviewOptions
  /** Hot loops in TS or WASM; unset = WASM when it loads. */
  kernel?: 'ts' | 'wasm'
}

export interface QuantizeTensorResult {
  tensor: string
  methodId: string
  /** Params with every default filled in. */
  params: Record<string, unknown>
  /** HF orientation [out, in]. */
  rows: number
  cols: number
  storedBytes: number
  storage: StorageBreakdown
  bytes: number
  metrics: QuantErrorMetrics
  /** quantize() alone. */
  seconds: number
  /** Reading the weight. */
  readSeconds: number
  preview?: TensorPreview
}

export interface CaptureCalibrationParams {
  modelPath: string
  /** Tensors and the methods planned for them (only those that need calibration are captured). */
  entries: { tensor: string; methodId: string; params: Record<string, unknown> }[]
  options: CalibrationOptions
}

export interface CaptureCalibrationResult {
  /** Per entry, in order: its calibration, or null when its method needs none. */
  calibration: (LayerCalibration | null)[]
  seconds: number
}
