/**
 * Runs one activation/KV job on its own worker thread (actkv-view.worker.ts). Cancel asks the
 * worker to stop at its next runtime call; one that has not answered within the grace period
 * is terminated. Nothing is written to disk.
 */
import { namedError, runJobInWorker } from '../jobs/run-job-in-worker'
import type { ActKvJob, ActKvMessage, ActKvProgress, ActKvResult, ActivationViewJob, ActivationViewResult, CodebooksJob, CodebooksResult, KvViewJob, KvViewResult } from './actkv-protocol'

const CANCEL_GRACE_MS = 2000

/** Engine errors keep their name across the thread boundary (the UI shows 'InferenceInputError'). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  InferenceInputError: namedError('InferenceInputError'),
  QuantParamError: namedError('QuantParamError'),
  PlanError: namedError('PlanError'),
  ActivationValueError: namedError('ActivationValueError'),
}

type ResultOf<J extends ActKvJob> = J extends CodebooksJob ? CodebooksResult : J extends ActivationViewJob ? ActivationViewResult : J extends KvViewJob ? KvViewResult : never

export function runActKvInWorker<J extends ActKvJob>(job: J, hooks: { signal?: AbortSignal; onProgress?(p: ActKvProgress): void } = {}): Promise<ResultOf<J>> {
  return runJobInWorker<J, ActKvProgress, Extract<ActKvMessage, { type: 'result' }>, ResultOf<J>>(
    {
      worker: 'actkv',
      label: 'activation/KV worker',
      // The worker answers a job of kind K with K's result.
      resultOf: (msg) => msg.result as ActKvResult as ResultOf<J>,
      knownErrors: KNOWN_ERRORS,
      cancelGraceMs: CANCEL_GRACE_MS,
      cancelledMessage: `the ${job.kind} job was cancelled`,
    },
    job,
    hooks,
  )
}
