/**
 * Runs one allocation job (measurements, a sweep's evaluations) on its own worker thread
 * (allocation.worker.ts). Cancel asks the worker to stop at its next runtime call; one that has
 * not answered within the grace period is terminated. ΔKLD entries are written to their cache
 * one by one, so a cancelled measurement keeps what it finished and leaves nothing half-written.
 */
import { namedError, runJobInWorker } from '../jobs/run-job-in-worker'
import type { AllocationWorkerJob, AllocationWorkerMessage, AllocationWorkerProgress, AllocationWorkerResult } from './allocation-protocol'

const CANCEL_GRACE_MS = 2000

const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  PlanError: namedError('PlanError'),
  InferenceInputError: namedError('InferenceInputError'),
  QuantParamError: namedError('QuantParamError'),
}

export function runAllocationInWorker(
  job: AllocationWorkerJob,
  hooks: { signal?: AbortSignal; onProgress?(p: AllocationWorkerProgress): void } = {},
): Promise<AllocationWorkerResult> {
  return runJobInWorker<AllocationWorkerJob, AllocationWorkerProgress, Extract<AllocationWorkerMessage, { type: 'result' }>, AllocationWorkerResult>(
    {
      worker: 'allocation',
      label: 'allocation worker',
      resultOf: (msg) => msg.result,
      knownErrors: KNOWN_ERRORS,
      cancelGraceMs: CANCEL_GRACE_MS,
      cancelledMessage: 'the allocation job was cancelled',
    },
    job,
    hooks,
  )
}
