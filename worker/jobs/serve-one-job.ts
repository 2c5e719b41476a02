/**
 * The worker side of runJobInWorker (run-job-in-worker.ts): a thread that runs one job. It
 * answers `{ type: 'run', job }` with progress messages — at most ~20 a second, a stage's
 * first and last step always — then exactly one result message or `{ type: 'error' }`;
 * `{ type: 'cancel' }` aborts the signal the job was given, which stops it at its next step.
 */
import { parentPort } from 'node:worker_threads'
import type { JobWorkerRequest } from './run-job-in-worker'
import { serializeError } from './serialized-error'

const PROGRESS_INTERVAL_MS = 50

export interface OneJobContext<P> {
  signal: AbortSignal
  progress(p: P): void
}

/**
 * Serves `run` in this worker thread. `resultMessage` wraps the result (default
 * `{ type: 'result', result }`; the export posts `{ type: 'result', report }`).
 */
export function serveOneJob<J, P extends { stage: string; done: number; total: number }, R>(
  name: string,
  run: (job: J, ctx: OneJobContext<P>) => Promise<R>,
  resultMessage: (result: R) => { type: 'result' } = (result) => ({ type: 'result', result }) as { type: 'result' },
): void {
  const port = parentPort
  if (!port) throw new Error(`${name} must run in a worker thread`)
  const controller = new AbortController()
  let last = 0
  let lastStage = ''
  const progress = (p: P): void => {
    const now = performance.now()
    if (p.stage === lastStage && p.done > 0 && p.done < p.total && now - last < PROGRESS_INTERVAL_MS) return
    last = now
    lastStage = p.stage
    port.postMessage({ type: 'progress', progress: p })
  }
  port.on('message', (msg: JobWorkerRequest<J>) => {
    if (msg.type === 'cancel') {
      controller.abort()
      return
    }
    run(msg.job, { signal: controller.signal, progress }).then(
      (result) => port.postMessage(resultMessage(result)),
      (err: unknown) => port.postMessage({ type: 'error', error: serializeError(err) }),
    )
  })
}
