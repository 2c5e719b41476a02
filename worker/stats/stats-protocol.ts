import type { PackedTensorStats, StatsKernelKind } from './stats-accumulator'
import type { StatsOptions } from './stats-types'

/**
 * The stats worker's jobs (see worker/jobs/job-protocol.ts for the wire format): StatsService
 * runs them on a WorkerPool<StatsJobs>, stats.worker.ts serves them.
 */
export type StatsJobs = {
  /** Opens the model (kept open for the compute jobs that follow) and lists its tensors. */
  describe: { params: { path: string }; result: DescribedModel }
  /**
   * Statistics of one tensor, or of a batch of small ones (one round trip for many).
   * Progress is in stored bytes over the batch.
   */
  compute: { params: ComputeParams; result: ComputeResult }
}

/** What the service needs to know about a model to schedule, validate and cache. */
export interface StatsModelSummary {
  /** Absolute model path as given to openModel. */
  path: string
  /** Identity of the bytes (see modelFingerprint). */
  fingerprint: string
  files: string[]
  tensors: { name: string; dtype: string; shape: number[]; byteLength: number; decodable: boolean }[]
}

/**
 * StatsModelSummary on the wire: the tensor table as one JSON string. structuredClone of
 * 300,000 small objects took seconds; one string crosses at memcpy speed.
 */
export interface DescribedModel extends Omit<StatsModelSummary, 'tensors'> {
  tensorsJson: string
}

export interface ComputeParams {
  path: string
  /** Fingerprint the service saw; the worker reopens the model when its own differs. */
  fingerprint: string
  tensors: string[]
  options: StatsOptions
  kernel?: StatsKernelKind
}

export interface ComputeResult {
  /** One per requested tensor, in order; typed arrays are transferred, not cloned. */
  stats: PackedTensorStats[]
  /** The bytes the worker actually read (the service caches under these). */
  fingerprint: string
}

/**
 * Identity of a model's bytes. Both sides compute it the same way, so a result is cached
 * under the bytes it was computed from.
 */
export { filesFingerprint as modelFingerprint } from '../io/file-fingerprint'
