import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { Worker } from 'node:worker_threads'
import { ModelFormatError } from '../common/errors'
import { spawnEngineWorker } from '../jobs/spawn-worker'
import { resolveStatsOptions, unpackTensorStats, type StatsKernelKind } from './stats-accumulator'
import {
  deserializeError,
  modelFingerprint,
  type ModelSummary,
  type StatsWorkerMessage,
  type StatsWorkerRequest,
} from './stats-protocol'
import type { StatsOptions, TensorStats } from './stats-types'
import { abortError } from './tensor-stats'

export interface StatsServiceOptions {
  /** Worker threads in the pool (default 2). */
  threads?: number
  /** Folder for the on-disk JSON cache; none when omitted. */
  cacheDir?: string
  /** Kernel the workers use (default: WASM when it loads, else the TS reference). */
  kernel?: StatsKernelKind
}

export interface StatsHooks {
  /** Stored weight bytes done / total over the requested tensors (cache hits count as done). */
  onProgress?(done: number, total: number): void
  signal?: AbortSignal
}

/** Bump when TensorStats or any statistic's definition changes: old cache entries then miss. */
const CACHE_VERSION = 1
/** In-memory cache budget (approximate: 8 bytes per number held). */
const MEMORY_CACHE_BYTES = 256 << 20
/** How long a worker gets to stop at a chunk border after 'cancel' before it is terminated. */
const CANCEL_GRACE_MS = 1000
/** Jobs posted to one worker at a time: the next tensor is already there when one finishes. */
const PER_WORKER_DEPTH = 2

type JobRequest = Extract<StatsWorkerRequest, { type: 'describe' } | { type: 'compute' }>
type Payload = DistributiveOmit<JobRequest, 'jobId'>
type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never

interface Job {
  id: number
  payload: Payload
  resolve(msg: StatsWorkerMessage): void
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

/** A computation shared by every caller that asked for the same cache key meanwhile. */
interface Shared {
  promise: Promise<TensorStats>
  listeners: Set<(fraction: number) => void>
  cancel(): void
}

/**
 * Per-tensor statistics off the main thread: a pool of stats workers, results cached in
 * memory per (model bytes, tensor, options) and optionally as JSON files in `cacheDir`.
 * Results may be shared between callers and the cache: treat them as read-only.
 */
export class StatsService {
  private readonly threads: number
  private readonly cacheDir: string | null
  private readonly kernel: StatsKernelKind | undefined
  private readonly slots: Slot[] = []
  private readonly queue: Job[] = []
  /** Least recently used first. */
  private readonly memory = new Map<string, { stats: TensorStats; bytes: number }>()
  private memoryBytes = 0
  private readonly inflight = new Map<string, Shared>()
  private readonly summaries = new Map<string, Promise<ModelSummary>>()
  private nextId = 1
  private closed = false
  /** Where results came from since construction (for diagnostics and tests). */
  readonly counters = { computed: 0, memoryHits: 0, diskHits: 0 }

  constructor(opts: StatsServiceOptions = {}) {
    const threads = opts.threads ?? 2
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new RangeError(`threads must be an integer in [1, 64], got ${threads}`)
    this.threads = threads
    this.cacheDir = opts.cacheDir ?? null
    this.kernel = opts.kernel
  }

  async computeTensorStats(modelPath: string, tensor: string, options: Partial<StatsOptions> = {}, hooks: StatsHooks = {}): Promise<TensorStats> {
    const all = await this.computeAll(modelPath, [tensor], options, hooks)
    return all.get(tensor)!
  }

  /** Statistics of `tensors`, spread over the pool, largest first; keys in request order. */
  async computeAll(modelPath: string, tensors: string[], options: Partial<StatsOptions> = {}, hooks: StatsHooks = {}): Promise<Map<string, TensorStats>> {
    const { signal, onProgress } = hooks
    if (this.closed) throw new Error('StatsService is closed')
    if (signal?.aborted) throw abortError()
    const opts = resolveStatsOptions(options)
    const path = resolve(modelPath)
    const summary = await withAbort(this.describe(path), signal)
    const byName = new Map(summary.tensors.map((t) => [t.name, t]))
    const names = [...new Set(tensors)]
    for (const name of names) {
      const t = byName.get(name)
      if (!t) throw new ModelFormatError(path, name, 'no such tensor in this model')
      if (!t.decodable) throw new ModelFormatError(path, name, `stored type ${t.dtype} cannot be decoded by this build`)
    }

    const weight = (name: string) => Math.max(1, byName.get(name)!.byteLength)
    const total = names.reduce((s, n) => s + weight(n), 0)
    const fraction = new Map<string, number>()
    let lastReport = -1
    const report = () => {
      if (!onProgress) return
      let done = 0
      for (const [n, f] of fraction) done += f * weight(n)
      if (done !== lastReport) onProgress((lastReport = done), total)
    }

    const results = new Map<string, TensorStats>()
    const misses: string[] = []
    for (const name of names) {
      const hit = await this.cached(cacheKey(summary, name, opts))
      if (hit) {
        results.set(name, hit)
        fraction.set(name, 1)
      } else misses.push(name)
    }
    report()
    if (signal?.aborted) throw abortError()

    misses.sort((a, b) => weight(b) - weight(a))
    const unsubscribes: (() => void)[] = []
    const work = misses.map((name) => {
      const key = cacheKey(summary, name, opts)
      const shared = this.shared(key, summary, name, opts)
      const listener = (f: number) => {
        fraction.set(name, f)
        report()
      }
      shared.listeners.add(listener)
      unsubscribes.push(() => {
        shared.listeners.delete(listener)
        if (shared.listeners.size === 0) shared.cancel()
      })
      return shared.promise.then((stats) => {
        results.set(name, stats)
        fraction.set(name, 1)
        report()
      })
    })
    try {
      await withAbort(Promise.all(work), signal)
    } catch (err) {
      // Stop what nobody else is waiting for; swallow the rejections we no longer await.
      for (const u of unsubscribes) u()
      for (const w of work) w.catch(() => {})
      throw err
    }
    return new Map(names.map((n) => [n, results.get(n)!]))
  }

  /** Terminates the workers; running and queued jobs reject. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    const closedErr = () => new Error('StatsService was closed')
    for (const job of this.queue.splice(0)) job.reject(closedErr())
    await Promise.all(
      this.slots.splice(0).map(async (slot) => {
        if (slot.killTimer) clearTimeout(slot.killTimer)
        for (const job of slot.jobs.splice(0)) job.reject(closedErr())
        await slot.worker.terminate()
      }),
    )
  }

  // ---- caching ---------------------------------------------------------------------------

  private async cached(key: string): Promise<TensorStats | null> {
    const hit = this.memory.get(key)
    if (hit) {
      this.memory.delete(key)
      this.memory.set(key, hit)
      this.counters.memoryHits++
      return hit.stats
    }
    if (!this.cacheDir) return null
    try {
      const text = await readFile(join(this.cacheDir, diskName(key)), 'utf8')
      const entry = JSON.parse(text) as { key?: string; stats?: TensorStats }
      if (entry.key !== key || !entry.stats) return null
      this.counters.diskHits++
      this.remember(key, entry.stats)
      return entry.stats
    } catch {
      return null // absent or unreadable: recompute
    }
  }

  private remember(key: string, stats: TensorStats): void {
    const old = this.memory.get(key)
    if (old) this.memoryBytes -= old.bytes
    const bytes = 8 * (64 + stats.histogram.counts.length + stats.rowAbsmax.length + stats.colAbsmax.length + stats.heatmap.values.length + 4 * stats.topK.length)
    this.memory.delete(key)
    this.memory.set(key, { stats, bytes })
    this.memoryBytes += bytes
    for (const [k, v] of this.memory) {
      if (this.memoryBytes <= MEMORY_CACHE_BYTES || k === key) break
      this.memory.delete(k)
      this.memoryBytes -= v.bytes
    }
  }

  private async persist(key: string, stats: TensorStats): Promise<void> {
    if (!this.cacheDir) return
    try {
      await mkdir(this.cacheDir, { recursive: true })
      const file = join(this.cacheDir, diskName(key))
      const tmp = `${file}.${process.pid}.${this.nextId++}.tmp`
      await writeFile(tmp, JSON.stringify({ key, stats }))
      await rename(tmp, file)
    } catch (err) {
      // The disk cache is an optimisation; a full or read-only disk must not fail the job.
      console.warn(`stats cache: could not write to ${this.cacheDir}: ${(err as Error).message}`)
    }
  }

  /** Model summary, re-read when any of its files changed size or mtime. */
  private async describe(path: string): Promise<ModelSummary> {
    const pending = this.summaries.get(path)
    if (pending) {
      const summary = await pending.catch(() => null)
      if (summary) {
        const now = await modelFingerprint(summary.files).catch(() => null)
        if (now === summary.fingerprint) return summary
      }
      if (this.summaries.get(path) === pending) this.summaries.delete(path)
    }
    const fresh = this.submit({ type: 'describe', path }).promise.then((msg) => {
      if (msg.type !== 'described') throw new Error(`stats worker answered ${msg.type} to describe`)
      return msg.model
    })
    this.summaries.set(path, fresh)
    fresh.catch(() => {
      if (this.summaries.get(path) === fresh) this.summaries.delete(path)
    })
    return fresh
  }

  private shared(key: string, summary: ModelSummary, tensor: string, options: StatsOptions): Shared {
    const existing = this.inflight.get(key)
    if (existing) return existing
    const listeners = new Set<(fraction: number) => void>()
    const job = this.submit(
      { type: 'compute', path: summary.path, fingerprint: summary.fingerprint, tensor, options, kernel: this.kernel },
      (done, total) => {
        for (const l of listeners) l(total > 0 ? done / total : 0)
      },
    )
    const promise = job.promise.then(async (msg) => {
      if (msg.type !== 'result') throw new Error(`stats worker answered ${msg.type} to compute`)
      this.counters.computed++
      // Cache under the bytes the worker actually read.
      const realKey = msg.fingerprint === summary.fingerprint ? key : cacheKey({ ...summary, fingerprint: msg.fingerprint }, tensor, options)
      const stats = unpackTensorStats(msg.stats)
      this.remember(realKey, stats)
      await this.persist(realKey, stats)
      return stats
    })
    const entry: Shared = {
      promise,
      listeners,
      cancel: () => {
        // Later callers must not subscribe to a job that is being cancelled.
        if (this.inflight.get(key) === entry) this.inflight.delete(key)
        job.cancel()
      },
    }
    this.inflight.set(key, entry)
    const done = () => {
      if (this.inflight.get(key) === entry) this.inflight.delete(key)
    }
    promise.then(done, done)
    return entry
  }

  // ---- worker pool -----------------------------------------------------------------------

  private submit(payload: Payload, onProgress: (done: number, total: number) => void = () => {}): { promise: Promise<StatsWorkerMessage>; cancel(): void } {
    if (this.closed) return { promise: Promise.reject(new Error('StatsService is closed')), cancel() {} }
    let job!: Job
    const promise = new Promise<StatsWorkerMessage>((resolve, reject) => {
      job = { id: this.nextId++, payload, resolve, reject, onProgress, slot: null, cancelled: false }
    })
    this.queue.push(job)
    this.pump()
    const cancel = () => {
      const queued = this.queue.indexOf(job)
      if (queued >= 0) {
        this.queue.splice(queued, 1)
        job.reject(abortError())
        return
      }
      const slot = job.slot
      if (!slot || !slot.jobs.includes(job) || job.cancelled) return
      job.cancelled = true
      slot.worker.postMessage({ type: 'cancel', jobId: job.id } satisfies StatsWorkerRequest)
      // A worker stuck inside one long chunk is terminated and replaced.
      slot.killTimer ??= setTimeout(() => {
        slot.killTimer = null
        if (slot.jobs.some((j) => j.cancelled)) this.replaceWorker(slot, abortError())
      }, CANCEL_GRACE_MS)
    }
    return { promise, cancel }
  }

  /** Hands queued jobs to workers, up to PER_WORKER_DEPTH each; starts workers as needed. */
  private pump(): void {
    if (this.closed) return
    const busy = this.slots.filter((s) => s.jobs.length > 0).length
    while (this.slots.length < this.threads && this.slots.length < busy + this.queue.length) this.slots.push(this.spawn())
    // Fill idle workers first, then give each a second job to start right after the first.
    for (let depth = 1; depth <= PER_WORKER_DEPTH; depth++) {
      for (const slot of this.slots) {
        if (this.queue.length === 0) return
        if (slot.jobs.length >= depth) continue
        const job = this.queue.shift()!
        slot.jobs.push(job)
        job.slot = slot
        slot.worker.ref()
        slot.worker.postMessage({ ...job.payload, jobId: job.id } as StatsWorkerRequest)
      }
    }
  }

  private spawn(): Slot {
    const worker = spawnEngineWorker('stats', this.kernel ? { kernel: this.kernel } : {})
    const slot: Slot = { worker, jobs: [], killTimer: null }
    worker.unref()
    worker.on('message', (msg: StatsWorkerMessage) => this.onMessage(slot, msg))
    worker.on('error', (err) => this.replaceWorker(slot, err))
    worker.on('exit', (code) => {
      if (this.slots.includes(slot)) this.replaceWorker(slot, new Error(`stats worker exited with code ${code}`))
    })
    return slot
  }

  private onMessage(slot: Slot, msg: StatsWorkerMessage): void {
    const i = slot.jobs.findIndex((j) => j.id === msg.jobId)
    if (i < 0) return // a late message of a job already settled
    const job = slot.jobs[i]!
    if (msg.type === 'progress') {
      job.onProgress(msg.done, msg.total)
      return
    }
    slot.jobs.splice(i, 1)
    this.settled(slot)
    if (msg.type === 'error') job.reject(deserializeError(msg.error))
    else job.resolve(msg)
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
   * running rejects with `err` (unless cancelled); jobs still waiting behind it are requeued.
   */
  private replaceWorker(slot: Slot, err: Error): void {
    const i = this.slots.indexOf(slot)
    if (i < 0) return
    this.slots.splice(i, 1)
    if (slot.killTimer) clearTimeout(slot.killTimer)
    slot.killTimer = null
    void slot.worker.terminate()
    const [running, ...waiting] = slot.jobs
    slot.jobs = []
    if (running) running.cancelled ? running.reject(abortError()) : running.reject(err)
    for (const job of waiting) {
      job.slot = null
      if (job.cancelled) job.reject(abortError())
      else this.queue.unshift(job)
    }
    this.pump()
  }
}

function cacheKey(summary: ModelSummary, tensor: string, o: StatsOptions): string {
  return JSON.stringify([CACHE_VERSION, summary.path, summary.fingerprint, tensor, o.bins, o.topK, o.heatmapSize])
}

function diskName(key: string): string {
  return `${createHash('sha256').update(key).digest('hex').slice(0, 40)}.json`
}

/** Rejects with an AbortError as soon as `signal` fires; `p` keeps running. */
function withAbort<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p
  if (signal.aborted) return Promise.reject(abortError())
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError())
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}
