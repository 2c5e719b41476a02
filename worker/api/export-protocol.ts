/**
 * Messages between the engine (export-thread.ts) and the export worker (export.worker.ts).
 * An export runs on a thread of its own because runExport quantizes, encodes and writes the
 * whole model: the engine thread keeps answering the UI meanwhile. Plain data only
 * (structured clone): the worker opens the model itself from its path.
 */
import type { ExportFormatId, ExportOptions, ExportProgress, ExportReport } from '../export/contract'
import type { SerializedError } from '../jobs/serialized-error'
import type { Plan } from '../plan/plan'

export interface ExportWorkerJob {
  /** The source model's path as opened (folder or file). */
  modelPath: string
  plan: Plan
  /** What the report names as the plan's source ("plan 'q8'"). */
  planSource: string
  format: ExportFormatId
  /** Absolute destination, already checked by the engine (staging.ts checkDestination). */
  out: string
  options: ExportOptions
}

export type ExportWorkerRequest = { type: 'run'; job: ExportWorkerJob } | { type: 'cancel' }

export type ExportWorkerMessage =
  | { type: 'progress'; progress: ExportProgress }
  | { type: 'result'; report: ExportReport }
  | { type: 'error'; error: SerializedError }
