import type { Worker } from 'node:worker_threads'
import { abortError, withAbort } from './abort'
import type { JobName, JobParams, JobResult, JobSpec, PoolToWorker, WorkerToPool } from './job-protocol'
import { deserializeError } from './serialized-error'
import { spawnEngineWorker, type EngineWorkerName } from './spawn-worker'

/**
 * A pool of engine worker threads of one kind (stats, quantizers …), typed by the worker's
 * job spec (job-protocol.ts). Jobs wait in one FIFO queue; each worker holds up to
 * `perWorkerDepth` of them so it never idles waiting for the main thread between jobs.
 * Workers start on demand, up to `threads`, and do not keep the process alive while idle.
 *
 * Cancel: a queued job is dropped at once; a running one is asked to stop ('cancel') and its
 * worker is terminated and replaced if it has not answered within `cancelGraceMs` (a kernel
 * stuck inside one long chunk). A worker that crashes rejects the job it was running and
 * hands the jobs queued behind it to the others.
 *
 * A new kind of worker: add its entry to ENGINE_WORKERS (spawn-worker.ts; the build picks it
 * up from there), declare its JobSpec, call `serveJobs<Spec>({ kind: handler, … })` in the
 * worker (job-worker.ts), and run jobs with `new WorkerPool<Spec>({ worker: name })`.
 */

export interface WorkerPoolOptions {
  /** Which engine worker (worker/jobs/spawn-worker.ts). */
  worker: EngineWorkerName
  /** Worker threads at most (default 2). */
  threads?: number
  /** Passed to every worker as `workerData`. */
  workerData?: Record<string, unknown>
  /** Jobs posted to one worker at a time (default 2: the next is there when one finishes). */
  perWorkerDepth?: number
  /** How long a cancelled running job has to stop before its worker is terminated (default 1000 ms). */
  cancelGraceMs?: number
  /** Error names of this worker rebuilt as their own classes (see deserializeError). */
  knownErrors?: Record<string, (message: string) => Error>
}

export interface JobHooks {
  onProgress?(done: number, total: number): void
  signal?: AbortSignal
}

export interface PoolJob<R> {
  promise: Promise<R>
  /** Idempotent; the promise then rejects with an AbortError (unless it already settled). */
  cancel(): void
}

interface Job {
  id: number
  request: PoolToWorker<unknown> & { type: 'run' }
  resolve(result: unknown): void
  reject(err: Error): void
  onProgress(done: number, total: number): void
  slot: Slot | null
  /** 'cancel' was sent; the worker's answer (or the kill timer) settles it. */
  cancelled: boolean
}

interface Slot {
  worker: Worker
  /** Jobs posted to this worker, in the order it runs them (the first one is running). */
  jobs: Job[]
  killTimer: NodeJS.Timeout | null
}

export class WorkerPool<S extends JobSpec<S>> {
  readonly threads: number
  private readonly opts: Required<Omit<WorkerPoolOptions, 'workerData' | 'knownErrors'>> & Pick<WorkerPoolOptions, 'workerData' | 'knownErrors'>
  private readonly slots: Slot[] = []
  /** Jobs not yet posted to a worker; `head` avoids O(n) shifts on long queues. */
  private queue: Job[] = []
  private head = 0
  private nextId = 1
  private closed = false
  /** Workers started and workers dropped (crashed, or terminated after a cancel's grace period). */
  readonly counters = { started: 0, replaced: 0 }

  constructor(options: WorkerPoolOptions) {
    const threads = options.threads ?? 2
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new RangeError(`threads must be an integer in [1, 64], got ${threads}`)
    const depth = options.perWorkerDepth ?? 2
    if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`perWorkerDepth must be a positive integer, got ${depth}`)
    this.threads = threads
    this.opts = { ...options, threads, perWorkerDepth: depth, cancelGraceMs: options.cancelGraceMs ?? 1000 }
  }

  /** Jobs queued or running. */
  get pending(): number {
    return this.queue.length - this.head + this.slots.reduce((s, slot) => s + slot.jobs.length, 0)
  }

  /** Runs a job; rejects with an AbortError when `hooks.signal` fires (the job is cancelled). */
  run<K extends JobName<S>>(kind: K, params: JobParams<S, K>, hooks: JobHooks = {}): Promise<JobResult<S, K>> {
    if (hooks.signal?.aborted) return Promise.reject(abortError())
    const job = this.submit(kind, params, hooks.onProgress)
    if (!hooks.signal) return job.promise
    const onAbort = () => job.cancel()
    hooks.signal.addEventListener('abort', onAbort, { once: true })
    const done = () => hooks.signal!.removeEventListener('abort', onAbort)
    job.promise.then(done, done)
    return withAbort(job.promise, hooks.signal)
  }

  /** Queues a job; the handle cancels it (for callers that share one job among several waiters). */
  submit<K extends JobName<S>>(kind: K, params: JobParams<S, K>, onProgress: (done: number, total: number) => void = () => {}): PoolJob<JobResult<S, K>> {
    if (this.closed) return { promise: Promise.reject(new Error(`${this.opts.worker} worker pool is closed`)), cancel() {} }
    let job!: Job
    const id = this.nextId++
    const promise = new Promise<JobResult<S, K>>((resolve, reject) => {
      const request = { type: 'run', jobId: id, kind, params } as Job['request']
      job = { id, request, resolve: resolve as (r: unknown) => void, reject, onProgress, slot: null, cancelled: false }
    })
    this.queue.push(job)
    this.pump()
    return { promise, cancel: () => this.cancel(job) }
  }

  /** Terminates the workers; running and queued jobs reject. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    const closedErr = () => new Error(`${this.opts.worker} worker pool was closed`)
    for (const job of this.takeQueue()) job.reject(closedErr())
    await Promise.all(
      this.slots.splice(0).map(async (slot) => {
        if (slot.killTimer) clearTimeout(slot.killTimer)
        for (const job of slot.jobs.splice(0)) job.reject(closedErr())
        await slot.worker.terminate()
      }),
    )
  }

  private cancel(job: Job): void {
    if (!job.slot) {
      const i = this.queue.indexOf(job, this.head)
      if (i >= 0) {
        this.queue.splice(i, 1)
        job.reject(abortError())
      }
      return
    }
    const slot = job.slot
    if (!slot.jobs.includes(job) || job.cancelled) return
    job.cancelled = true
    slot.worker.postMessage({ type: 'cancel', jobId: job.id } satisfies PoolToWorker<S>)
    // A worker stuck inside one long step is terminated and replaced.
    slot.killTimer ??= setTimeout(() => {
      slot.killTimer = null
      if (slot.jobs.some((j) => j.cancelled)) this.replaceWorker(slot, abortError())
    }, this.opts.cancelGraceMs)
  }

  private takeQueue(): Job[] {
    const rest = this.queue.slice(this.head)
    this.queue = []
    this.head = 0
    return rest
  }

  private shiftQueue(): Job | undefined {
    if (this.head >= this.queue.length) return undefined
    const job = this.queue[this.head++]
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head)
      this.head = 0
    }
    return job
  }

  /** Hands queued jobs to workers, up to perWorkerDepth each; starts workers as needed. */
  private pump(): void {
    if (this.closed) return
    const queued = () => this.queue.length - this.head
    const busy = this.slots.filter((s) => s.jobs.length > 0).length
    while (this.slots.length < this.threads && this.slots.length < busy + queued()) this.slots.push(this.spawn())
    // Fill idle workers first, then give each a second job to start right after the first.
    for (let depth = 1; depth <= this.opts.perWorkerDepth; depth++) {
      for (const slot of this.slots) {
        if (queued() === 0) return
        if (slot.jobs.length >= depth) continue
        const job = this.shiftQueue()!
        slot.jobs.push(job)
        job.slot = slot
        slot.worker.ref()
        slot.worker.postMessage(job.request)
      }
    }
  }

  private spawn(): Slot {
    const worker = spawnEngineWorker(this.opts.worker, this.opts.workerData ?? {})
    this.counters.started++
    const slot: Slot = { worker, jobs: [], killTimer: null }
    worker.unref()
    worker.on('message', (msg: WorkerToPool<S>) => this.onMessage(slot, msg))
    worker.on('error', (err) => this.replaceWorker(slot, err))
    worker.on('exit', (code) => {
      if (this.slots.includes(slot)) this.replaceWorker(slot, new Error(`${this.opts.worker} worker exited with code ${code}`))
    })
    return slot
  }

  private onMessage(slot: Slot, msg: WorkerToPool<S>): void {
    // The running job is almost always first: this stays O(1) per message.
    const i = slot.jobs.findIndex((j) => j.id === msg.jobId)
    if (i < 0) return // a late message of a job already settled
    const job = slot.jobs[i]!
    if (msg.type === 'progress') {
      job.onProgress(msg.done, msg.total)
      return
    }
    slot.jobs.splice(i, 1)
    this.settled(slot)
    if (msg.type === 'error') job.reject(deserializeError(msg.error, `${this.opts.worker} worker`, this.opts.knownErrors))
    else job.resolve(msg.result)
    this.pump()
  }

  private settled(slot: Slot): void {
    if (slot.killTimer && !slot.jobs.some((j) => j.cancelled)) {
      clearTimeout(slot.killTimer)
      slot.killTimer = null
    }
    if (slot.jobs.length === 0) slot.worker.unref()
  }

  /**
   * Drops a crashed or stuck worker. Its cancelled jobs reject with AbortError; the job it was
   * running rejects with `err` (unless cancelled); jobs still waiting behind it are requeued
   * at the front, in their order.
   */
  private replaceWorker(slot: Slot, err: Error): void {
    const i = this.slots.indexOf(slot)
    if (i < 0) return
    this.slots.splice(i, 1)
    this.counters.replaced++
    if (slot.killTimer) clearTimeout(slot.killTimer)
    slot.killTimer = null
    void slot.worker.terminate()
    const [running, ...waiting] = slot.jobs
    slot.jobs = []
    if (running) running.reject(running.cancelled ? abortError() : err)
    const requeue: Job[] = []
    for (const job of waiting) {
      job.slot = null
      if (job.cancelled) job.reject(abortError())
      else requeue.push(job)
    }
    this.queue = [...requeue, ...this.queue.slice(this.head)]
    this.head = 0
    this.pump()
  }
}
