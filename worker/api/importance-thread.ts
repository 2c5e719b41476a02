/**
 * Runs one layer-importance job on its own worker thread (importance.worker.ts). Cancel asks
 * the worker to stop at its next runtime call; one that has not answered within the grace
 * period (inside a long call) is terminated. Nothing is staged on disk, so nothing is left.
 */
import { abortError } from '../jobs/abort'
import { deserializeError } from '../jobs/serialized-error'
import { spawnEngineWorker } from '../jobs/spawn-worker'
import type { ImportanceWorkerJob, ImportanceWorkerMessage, ImportanceWorkerProgress, ImportanceWorkerRequest, ImportanceWorkerResult } from './importance-protocol'

const CANCEL_GRACE_MS = 2000

/** Errors of the engine keep their name across the thread boundary (the UI shows 'PlanError'). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  PlanError: (message) => Object.assign(new Error(message), { name: 'PlanError' }),
  InferenceInputError: (message) => Object.assign(new Error(message), { name: 'InferenceInputError' }),
  QuantParamError: (message) => Object.assign(new Error(message), { name: 'QuantParamError' }),
}

export function runImportanceInWorker(
  job: ImportanceWorkerJob,
  hooks: { signal?: AbortSignal; onProgress?(p: ImportanceWorkerProgress): void } = {},
): Promise<ImportanceWorkerResult> {
  const { signal, onProgress } = hooks
  if (signal?.aborted) return Promise.reject(abortError())
  const worker = spawnEngineWorker('importance')
  return new Promise<ImportanceWorkerResult>((resolve, reject) => {
    let settled = false
    let graceTimer: NodeJS.Timeout | null = null
    const finish = (err: Error | null, result?: ImportanceWorkerResult): void => {
      if (settled) return
      settled = true
      signal?.removeEventListener('abort', onAbort)
      if (graceTimer) clearTimeout(graceTimer)
      void worker.terminate()
      if (err) reject(err)
      else resolve(result!)
    }
    const onAbort = (): void => {
      worker.postMessage({ type: 'cancel' } satisfies ImportanceWorkerRequest)
      graceTimer = setTimeout(() => finish(abortError('the importance job was cancelled')), CANCEL_GRACE_MS)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    worker.on('message', (msg: ImportanceWorkerMessage) => {
      if (msg.type === 'progress') {
        if (!settled) onProgress?.(msg.progress)
      } else if (msg.type === 'result') {
        finish(null, msg.result)
      } else {
        finish(deserializeError(msg.error, 'importance worker', KNOWN_ERRORS))
      }
    })
    worker.on('error', (err) => finish(err))
    worker.on('exit', (code) => finish(new Error(`the importance worker exited (code ${code}) before finishing`)))
    worker.postMessage({ type: 'run', job } satisfies ImportanceWorkerRequest)
  })
}
