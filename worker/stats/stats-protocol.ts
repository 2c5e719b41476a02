import { stat } from 'node:fs/promises'
import { deserializeError as deserializeShared, type SerializedError } from '../jobs/serialized-error'
import type { PackedTensorStats, StatsKernelKind } from './stats-accumulator'
import type { StatsOptions } from './stats-types'

/**
 * Messages between StatsService (main side) and stats.worker.ts. One union per direction,
 * one `switch` on `type` at each end. Every job carries the jobId the service gave it. The
 * worker runs its jobs one at a time in arrival order; the service keeps up to two queued
 * per worker so a worker never waits for the main thread between tensors.
 */

/** What the service needs to know about a model to schedule, validate and cache. */
export interface ModelSummary {
  /** Absolute model path as given to openModel. */
  path: string
  /** Identity of the bytes: every file's path, size and mtime (see modelFingerprint). */
  fingerprint: string
  files: string[]
  tensors: { name: string; dtype: string; shape: number[]; byteLength: number; decodable: boolean }[]
}

export type StatsWorkerRequest =
  | { type: 'describe'; jobId: number; path: string }
  | {
      type: 'compute'
      jobId: number
      path: string
      /** Fingerprint the service saw; the worker reopens the model when its own differs. */
      fingerprint: string
      tensor: string
      options: StatsOptions
      kernel?: StatsKernelKind
    }
  | { type: 'cancel'; jobId: number }

export type StatsWorkerMessage =
  | { type: 'progress'; jobId: number; done: number; total: number }
  /** Typed arrays inside `stats` are transferred, not cloned; unpackTensorStats rebuilds TensorStats. */
  | { type: 'result'; jobId: number; stats: PackedTensorStats; fingerprint: string }
  | { type: 'described'; jobId: number; model: ModelSummary }
  | { type: 'error'; jobId: number; error: SerializedError }

export type { SerializedError } from '../jobs/serialized-error'
export { serializeError } from '../jobs/serialized-error'

export function deserializeError(e: SerializedError): Error {
  return deserializeShared(e, 'stats worker')
}

/**
 * Identity of a model's bytes: path, size and mtime of each file. Both sides compute it the
 * same way, so a result is cached under the bytes it was computed from.
 */
export async function modelFingerprint(files: readonly string[]): Promise<string> {
  const parts = await Promise.all(
    files.map(async (f) => {
      const s = await stat(f)
      return `${f}\u0000${s.size}\u0000${s.mtimeMs}`
    }),
  )
  return parts.join('\u0001')
}
