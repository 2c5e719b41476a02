/**
 * Runs one layer-importance job on its own worker thread (importance.worker.ts). Cancel asks
 * the worker to stop at its next runtime call; one that has not answered within the grace
 * period (inside a long call) is terminated. Nothing is staged on disk, so nothing is left.
 */
import { namedError, runJobInWorker } from '../jobs/run-job-in-worker'
import type { ImportanceWorkerJob, ImportanceWorkerMessage, ImportanceWorkerProgress, ImportanceWorkerResult } from './importance-protocol'

const CANCEL_GRACE_MS = 2000

/** Errors of the engine keep their name across the thread boundary (the UI shows 'PlanError'). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  PlanError: namedError('PlanError'),
  InferenceInputError: namedError('InferenceInputError'),
  QuantParamError: namedError('QuantParamError'),
}

export function runImportanceInWorker(
  job: ImportanceWorkerJob,
  hooks: { signal?: AbortSignal; onProgress?(p: ImportanceWorkerProgress): void } = {},
): Promise<ImportanceWorkerResult> {
  return runJobInWorker<ImportanceWorkerJob, ImportanceWorkerProgress, Extract<ImportanceWorkerMessage, { type: 'result' }>, ImportanceWorkerResult>(
    {
      worker: 'importance',
      label: 'importance worker',
      resultOf: (msg) => msg.result,
      knownErrors: KNOWN_ERRORS,
      cancelGraceMs: CANCEL_GRACE_MS,
      cancelledMessage: 'the importance job was cancelled',
    },
    job,
    hooks,
  )
}
