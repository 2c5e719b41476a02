import { parentPort } from 'node:worker_threads'
import { abortError } from './abort'
import type { JobName, JobParams, JobResult, JobSpec, PoolToWorker, WorkerToPool } from './job-protocol'
import { serializeError } from './serialized-error'

/**
 * The worker side of a WorkerPool: runs the jobs posted to this thread one at a time, in
 * arrival order, and answers each with exactly one 'result' or 'error'. A handler gets an
 * AbortSignal ('cancel' aborts it; handlers check it between chunks), a progress callback
 * (throttled here to ~20 messages a second per job, the last one always sent) and a way to
 * transfer typed-array buffers with its result instead of copying them.
 */

export interface JobContext {
  signal: AbortSignal
  progress(done: number, total: number): void
  /** Buffers inside the result to move to the main thread (they become unusable here). */
  transfer(buffers: ArrayBuffer[]): void
}

export type JobHandlers<S extends JobSpec<S>> = { [K in JobName<S>]: (params: JobParams<S, K>, ctx: JobContext) => Promise<JobResult<S, K>> }

const PROGRESS_INTERVAL_MS = 50

export function serveJobs<S extends JobSpec<S>>(handlers: JobHandlers<S>): void {
  const port = parentPort
  if (!port) throw new Error('serveJobs must run in a worker thread')
  type Run = Extract<PoolToWorker<S>, { type: 'run' }>
  const queue: Run[] = []
  let running: { jobId: number; controller: AbortController } | null = null
  const post = (msg: WorkerToPool<S>, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer)

  const runOne = async (job: Run): Promise<void> => {
    const controller = new AbortController()
    running = { jobId: job.jobId, controller }
    let lastPost = 0
    const transfer: ArrayBuffer[] = []
    const ctx: JobContext = {
      signal: controller.signal,
      progress(done, total) {
        const now = performance.now()
        if (done < total && now - lastPost < PROGRESS_INTERVAL_MS) return
        lastPost = now
        post({ type: 'progress', jobId: job.jobId, done, total })
      },
      transfer: (buffers) => void transfer.push(...buffers),
    }
    try {
      const handler = handlers[job.kind as JobName<S>] as (params: unknown, ctx: JobContext) => Promise<unknown>
      if (!handler) throw new Error(`this worker has no job '${String(job.kind)}'`)
      const result = await handler(job.params, ctx)
      // postMessage refuses a buffer listed twice (results of a batch may share one).
      post({ type: 'result', jobId: job.jobId, kind: job.kind, result } as WorkerToPool<S>, [...new Set(transfer)])
    } catch (err) {
      post({ type: 'error', jobId: job.jobId, error: serializeError(err) })
    } finally {
      running = null
    }
  }

  let draining = false
  const drain = async (): Promise<void> => {
    if (draining) return
    draining = true
    try {
      for (let job = queue.shift(); job; job = queue.shift()) await runOne(job)
    } finally {
      draining = false
    }
  }

  port.on('message', (msg: PoolToWorker<S>) => {
    switch (msg.type) {
      case 'run':
        queue.push(msg as Run)
        void drain()
        break
      case 'cancel': {
        const i = queue.findIndex((j) => j.jobId === msg.jobId)
        if (i >= 0) {
          queue.splice(i, 1)
          post({ type: 'error', jobId: msg.jobId, error: serializeError(abortError()) })
        } else if (running?.jobId === msg.jobId) running.controller.abort()
        break
      }
    }
  })
}
