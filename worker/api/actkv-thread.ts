/**
 * Runs one activation/KV job on its own worker thread (actkv-view.worker.ts). Cancel asks the
 * worker to stop at its next runtime call; one that has not answered within the grace period
 * is terminated. Nothing is written to disk.
 */
import { abortError } from '../jobs/abort'
import { deserializeError } from '../jobs/serialized-error'
import { spawnEngineWorker } from '../jobs/spawn-worker'
import type { ActKvJob, ActKvMessage, ActKvProgress, ActKvRequest, ActKvResult, ActivationViewJob, ActivationViewResult, CodebooksJob, CodebooksResult, KvViewJob, KvViewResult } from './actkv-protocol'

const CANCEL_GRACE_MS = 2000

const named = (name: string) => (message: string) => Object.assign(new Error(message), { name })
/** Engine errors keep their name across the thread boundary (the UI shows 'InferenceInputError'). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  InferenceInputError: named('InferenceInputError'),
  QuantParamError: named('QuantParamError'),
  PlanError: named('PlanError'),
  ActivationValueError: named('ActivationValueError'),
}

type ResultOf<J extends ActKvJob> = J extends CodebooksJob ? CodebooksResult : J extends ActivationViewJob ? ActivationViewResult : J extends KvViewJob ? KvViewResult : never

export function runActKvInWorker<J extends ActKvJob>(job: J, hooks: { signal?: AbortSignal; onProgress?(p: ActKvProgress): void } = {}): Promise<ResultOf<J>> {
  const { signal, onProgress } = hooks
  if (signal?.aborted) return Promise.reject(abortError())
  const worker = spawnEngineWorker('actkv')
  return new Promise<ResultOf<J>>((resolve, reject) => {
    let settled = false
    let graceTimer: NodeJS.Timeout | null = null
    const finish = (err: Error | null, result?: ActKvResult): void => {
      if (settled) return
      settled = true
      signal?.removeEventListener('abort', onAbort)
      if (graceTimer) clearTimeout(graceTimer)
      void worker.terminate()
      if (err) reject(err)
      else resolve(result as ResultOf<J>)
    }
    const onAbort = (): void => {
      worker.postMessage({ type: 'cancel' } satisfies ActKvRequest)
      graceTimer = setTimeout(() => finish(abortError(`the ${job.kind} job was cancelled`)), CANCEL_GRACE_MS)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    worker.on('message', (msg: ActKvMessage) => {
      if (msg.type === 'progress') {
        if (!settled) onProgress?.(msg.progress)
      } else if (msg.type === 'result') finish(null, msg.result)
      else finish(deserializeError(msg.error, 'activation/KV worker', KNOWN_ERRORS))
    })
    worker.on('error', (err) => finish(err))
    worker.on('exit', (code) => finish(new Error(`the activation/KV worker exited (code ${code}) before finishing`)))
    worker.postMessage({ type: 'run', job } satisfies ActKvRequest)
  })
}
