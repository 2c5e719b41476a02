/**
 * Runs one export on its own worker thread (export.worker.ts) and resolves to its report.
 * Cancel: the worker aborts the driver, which removes the staged output; a worker that does
 * not answer within the grace period (inside one long tensor) is terminated, and the staged
 * output it leaves is removed from here (same process, so the same `.partial-<pid>` name).
 */
import type { ExportProgress, ExportReport } from '../export/contract'
import { discardStage, stagePathFor } from '../export/staging'
import { namedError, runJobInWorker } from '../jobs/run-job-in-worker'
import type { ExportWorkerJob, ExportWorkerMessage } from './export-protocol'

/** How long a cancelled export may take to stop at its next tensor before its thread is terminated. */
const CANCEL_GRACE_MS = 5000

/** Errors of the export driver keep their name across the thread boundary (the UI shows 'ExportError'). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  ExportError: namedError('ExportError'),
  PlanError: namedError('PlanError'),
}

export function runExportInWorker(job: ExportWorkerJob, hooks: { signal?: AbortSignal; onProgress?(p: ExportProgress): void } = {}): Promise<ExportReport> {
  return runJobInWorker<ExportWorkerJob, ExportProgress, Extract<ExportWorkerMessage, { type: 'result' }>, ExportReport>(
    {
      worker: 'export',
      label: 'export worker',
      resultOf: (msg) => msg.report,
      knownErrors: KNOWN_ERRORS,
      cancelGraceMs: CANCEL_GRACE_MS,
      cancelledMessage: 'the export was cancelled; the partial output was removed',
      afterTerminate: () => discardStage(stagePathFor(job.out)),
    },
    job,
    hooks,
  )
}
