/**
 * One job on a worker thread of its own, the shape every one-shot engine job shares (export,
 * layer importance, allocation): post `{ type: 'run', job }`, relay `progress` messages, resolve
 * on `result`, rebuild the error on `error`. Cancel posts `{ type: 'cancel' }` so the worker can
 * stop at its next step and clean up itself; a worker that has not answered within the grace
 * period (inside one long call) is terminated and `afterTerminate` removes what it left behind.
 * The thread is terminated whichever way the job ends.
 */
import { abortError } from './abort'
import { deserializeError, type SerializedError } from './serialized-error'
import { spawnEngineWorker, type EngineWorkerName } from './spawn-worker'

/** What a job's worker posts: progress, the result (its payload under a job-specific key), or the error. */
export type JobWorkerMessage<P, M extends { type: 'result' }> = { type: 'progress'; progress: P } | M | { type: 'error'; error: SerializedError }

export type JobWorkerRequest<J> = { type: 'run'; job: J } | { type: 'cancel' }

export interface WorkerJobSpec<M extends { type: 'result' }, R> {
  /** The engine worker entry (spawn-worker.ts ENGINE_WORKERS). */
  worker: EngineWorkerName
  /** Names the worker in messages and stack traces ('export worker'). */
  label: string
  /** The result out of the worker's result message. */
  resultOf(msg: M): R
  /** Error names of the engine that keep their name across the thread boundary (the UI shows 'PlanError'). */
  knownErrors?: Record<string, (message: string) => Error>
  /** How long a cancelled job may take to stop before its thread is terminated. */
  cancelGraceMs: number
  /** The AbortError's message when the grace period ran out. */
  cancelledMessage: string
  /** Clean-up after a terminate on cancel (e.g. the export's staged output). */
  afterTerminate?(): Promise<void> | void
}

/** A named engine error rebuilt on this side of the boundary. */
export function namedError(name: string): (message: string) => Error {
  return (message) => Object.assign(new Error(message), { name })
}

export function runJobInWorker<J, P, M extends { type: 'result' }, R>(
  spec: WorkerJobSpec<M, R>,
  job: J,
  hooks: { signal?: AbortSignal; onProgress?(p: P): void } = {},
): Promise<R> {
  const { signal, onProgress } = hooks
  if (signal?.aborted) return Promise.reject(abortError())
  const worker = spawnEngineWorker(spec.worker)
  return new Promise<R>((resolve, reject) => {
    let settled = false
    let graceTimer: NodeJS.Timeout | null = null
    const finish = (err: Error | null, result?: R): void => {
      if (settled) return
      settled = true
      signal?.removeEventListener('abort', onAbort)
      if (graceTimer) clearTimeout(graceTimer)
      void worker.terminate()
      if (err) reject(err)
      else resolve(result as R)
    }
    const onAbort = (): void => {
      worker.postMessage({ type: 'cancel' } satisfies JobWorkerRequest<J>)
      graceTimer = setTimeout(() => {
        void worker.terminate().then(() => spec.afterTerminate?.())
        finish(abortError(spec.cancelledMessage))
      }, spec.cancelGraceMs)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    worker.on('message', (msg: JobWorkerMessage<P, M>) => {
      if (msg.type === 'progress') {
        if (!settled) onProgress?.((msg as { progress: P }).progress)
      } else if (msg.type === 'result') {
        finish(null, spec.resultOf(msg as M))
      } else {
        finish(deserializeError((msg as { error: SerializedError }).error, spec.label, spec.knownErrors))
      }
    })
    worker.on('error', (err) => finish(err))
    worker.on('exit', (code) => finish(new Error(`the ${spec.label} exited (code ${code}) before finishing`)))
    worker.postMessage({ type: 'run', job } satisfies JobWorkerRequest<J>)
  })
}
