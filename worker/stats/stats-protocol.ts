import { stat } from 'node:fs/promises'
import { ModelFormatError } from '../formats/errors'
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

export interface SerializedError {
  name: string
  message: string
  stack?: string
  /** ModelFormatError fields, so the main side can rebuild the same error. */
  file?: string
  tensor?: string | null
  problem?: string
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof ModelFormatError) {
    return { name: err.name, message: err.message, stack: err.stack, file: err.file, tensor: err.tensor, problem: err.problem }
  }
  if (err instanceof Error || err instanceof DOMException) return { name: err.name, message: err.message, stack: err.stack }
  return { name: 'Error', message: String(err) }
}

export function deserializeError(e: SerializedError): Error {
  if (e.name === 'ModelFormatError' && e.file !== undefined && e.problem !== undefined) {
    return new ModelFormatError(e.file, e.tensor ?? null, e.problem)
  }
  if (e.name === 'AbortError') return new DOMException(e.message, 'AbortError')
  const err = e.name === 'RangeError' ? new RangeError(e.message) : e.name === 'TypeError' ? new TypeError(e.message) : new Error(e.message)
  if (err.name !== e.name) err.name = e.name
  if (e.stack) err.stack = `${e.stack}\n    (in stats worker)`
  return err
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
