/**
 * The quant worker's jobs (wire format: worker/jobs/job-protocol.ts), served by
 * quant.worker.ts on a WorkerPool<QuantJobs> ({ worker: 'quant' }): one tensor of a model on
 * disk quantized per job, so a pool of N threads quantizes N tensors at once, each thread
 * reading its own weights (only one tensor per thread is ever decoded to float32).
 */
import type { StorageBreakdown } from './contract'

export type QuantJobs = {
  /** Reads `tensor` of the model at `path`, quantizes it by `spec` and reports what it stored. */
  'quantize-tensor': { params: QuantizeTensorParams; result: QuantizeTensorResult }
}

export interface QuantizeTensorParams {
  /** Model path as given to openModel. */
  path: string
  tensor: string
  /** METHOD[:key=value,...] (quant/spec.ts). Methods that need calibration are refused. */
  spec: string
  /** Hot loops in TS or WASM; unset = WASM when it loads. */
  kernel?: 'ts' | 'wasm'
}

export interface QuantizeTensorResult {
  tensor: string
  rows: number
  cols: number
  bytes: number
  storage: StorageBreakdown
  /** Reading and decoding the weights to float32. */
  readMs: number
  /** The method's quantize() alone. */
  quantizeMs: number
}
