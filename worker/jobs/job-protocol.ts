import type { SerializedError } from './serialized-error'

/**
 * The wire protocol between a WorkerPool (pool.ts) and an engine worker that serves jobs
 * (job-worker.ts). A worker declares its jobs once as a spec, kind → params and result:
 *
 *   type StatsJobs = {
 *     describe: { params: { path: string }; result: ModelSummary }
 *     compute: { params: ComputeParams; result: ComputeResult }
 *   }
 *
 * and both sides are typed from it: `pool.run('describe', { path })` resolves to a
 * ModelSummary, the worker's `describe` handler must return one. Every message carries the
 * jobId the pool gave the job; the worker runs its jobs one at a time in arrival order.
 */

export interface JobKind {
  params: unknown
  result: unknown
}

/** A worker's job spec: every key names a kind of job. */
export type JobSpec<S> = { [K in keyof S]: JobKind }

export type JobName<S> = keyof S & string
export type JobParams<S, K extends keyof S> = S[K] extends JobKind ? S[K]['params'] : never
export type JobResult<S, K extends keyof S> = S[K] extends JobKind ? S[K]['result'] : never

/** Pool → worker. */
export type PoolToWorker<S> =
  | { [K in JobName<S>]: { type: 'run'; jobId: number; kind: K; params: JobParams<S, K> } }[JobName<S>]
  /** Drop the job if queued, abort it at its next check if running; it answers 'error' (AbortError). */
  | { type: 'cancel'; jobId: number }

/** Worker → pool. Exactly one 'result' or 'error' ends each job; 'progress' may come before. */
export type WorkerToPool<S> =
  | { type: 'progress'; jobId: number; done: number; total: number }
  | { [K in JobName<S>]: { type: 'result'; jobId: number; kind: K; result: JobResult<S, K> } }[JobName<S>]
  | { type: 'error'; jobId: number; error: SerializedError }
