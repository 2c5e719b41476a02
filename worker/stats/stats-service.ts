import { resolve } from 'node:path'
import { ModelFormatError } from '../common/errors'
import { elementCount, matrixShape } from '../formats/contract'
import { abortError, withAbort } from '../jobs/abort'
import { WorkerPool } from '../jobs/pool'
import { DEFAULT_STATS_CACHE_BYTES, StatsDiskCache, statsCacheBytesFromEnv } from './disk-cache'
import { MemoryLru } from './memory-cache'
import { resolveStatsOptions, unpackTensorStats, type StatsKernelKind } from './stats-accumulator'
import { modelFingerprint, type StatsJobs, type StatsModelSummary } from './stats-protocol'
import type { StatsOptions, TensorStats } from './stats-types'
import { emptyStats } from './tensor-stats'

export interface StatsServiceOptions {
  /** Worker threads in the pool (default 2). */
  threads?: number
  /** Folder for the on-disk cache (made private: mode 0700, see worker/io/private-dir.ts); none when omitted. */
  cacheDir?: string
  /** Bound of the disk cache in bytes (default: $QUANTSCOPE_STATS_CACHE_BYTES, else 1 GiB). */
  diskCacheBytes?: number
  /** Tensors stored in fewer bytes than this are recomputed rather than kept on disk (default 64 KiB). */
  diskMinTensorBytes?: number
  /** Bound of the in-memory cache (approximate: 8 bytes per number held; default 256 MiB). */
  memoryCacheBytes?: number
  /** Kernel the workers use (default: WASM when it loads, else the TS reference). */
  kernel?: StatsKernelKind
}

export interface StatsHooks {
  /** Stored weight bytes done / total over the requested tensors (cache hits count as done). */
  onProgress?(done: number, total: number): void
  signal?: AbortSignal
}

/** Bump when TensorStats or any statistic's definition changes: old cache keys then miss. */
const CACHE_KEY_VERSION = 3
const MEMORY_CACHE_BYTES = 256 << 20
/**
 * Reading a cache file costs about what recomputing a tensor this small costs, and thousands
 * of tiny files would crowd out the entries worth keeping.
 */
const DISK_MIN_TENSOR_BYTES = 64 << 10
/** Tensors smaller than this share one worker job with others, up to the batch limits. */
const BATCH_TENSOR_BYTES = 256 << 10
const BATCH_MAX_BYTES = 4 << 20
const BATCH_MAX_TENSORS = 512
/** Disk cache lookups in flight at once. */
const DISK_LOOKUPS = 16

/** A computation shared by every caller that asked for the same cache key meanwhile. */
interface Shared {
  promise: Promise<TensorStats>
  /** Stored bytes of this tensor done so far, per subscriber. */
  listeners: Set<(doneBytes: number) => void>
  /** A subscriber lost interest; the job stops when nobody else is waiting for it. */
  release(): void
}

/**
 * Per-tensor statistics off the main thread: a WorkerPool of stats workers, results cached in
 * memory (LRU by bytes) per (model bytes, tensor, options) and optionally on disk
 * (StatsDiskCache). Requests for a result already being computed share that computation.
 * Small tensors travel to the workers in batches; tensors without elements need no worker.
 * Results may be shared between callers and the cache: treat them as read-only.
 */
export class StatsService {
  private readonly pool: WorkerPool<StatsJobs>
  private readonly kernel: StatsKernelKind | undefined
  private readonly disk: StatsDiskCache | null
  private readonly diskMinTensorBytes: number
  private readonly memory: MemoryLru<TensorStats>
  private readonly inflight = new Map<string, Shared>()
  private readonly summaries = new Map<string, Promise<StatsModelSummary>>()
  /** Results for tensors without elements, one per (shape, options): they only differ in name. */
  private readonly emptyTemplates = new Map<string, TensorStats>()
  private closed = false
  /** Where results came from since construction (for diagnostics and tests). */
  readonly counters = { computed: 0, memoryHits: 0, diskHits: 0, empty: 0, jobs: 0 }

  constructor(opts: StatsServiceOptions = {}) {
    this.kernel = opts.kernel
    this.pool = new WorkerPool<StatsJobs>({ worker: 'stats', threads: opts.threads, workerData: opts.kernel ? { kernel: opts.kernel } : {} })
    this.memory = new MemoryLru(opts.memoryCacheBytes ?? MEMORY_CACHE_BYTES, statsBytes)
    this.diskMinTensorBytes = opts.diskMinTensorBytes ?? DISK_MIN_TENSOR_BYTES
    this.disk = opts.cacheDir
      ? new StatsDiskCache(opts.cacheDir, {
          maxBytes: opts.diskCacheBytes ?? statsCacheBytesFromEnv() ?? DEFAULT_STATS_CACHE_BYTES,
          onWarning: (message) => console.warn(message),
        })
      : null
  }

  /** The disk cache, when there is one (its folder, counters, why it is disabled). */
  get diskCache(): StatsDiskCache | null {
    return this.disk
  }

  async computeTensorStats(modelPath: string, tensor: string, options: Partial<StatsOptions> = {}, hooks: StatsHooks = {}): Promise<TensorStats> {
    const all = await this.computeAll(modelPath, [tensor], options, hooks)
    return all.get(tensor)!
  }

  /**
   * Statistics of `tensors`, spread over the pool, largest first; keys in request order.
   * Cost is linear in the number of tensors: progress keeps a running sum, empty tensors are
   * answered here, small ones go to the workers in batches.
   */
  async computeAll(modelPath: string, tensors: string[], options: Partial<StatsOptions> = {}, hooks: StatsHooks = {}): Promise<Map<string, TensorStats>> {
    const { signal, onProgress } = hooks
    if (this.closed) throw new Error('StatsService is closed')
    if (signal?.aborted) throw abortError()
    const opts = resolveStatsOptions(options)
    const path = resolve(modelPath)
    const summary = await withAbort(this.describe(path), signal)
    const byName = tensorsByName(summary)
    const names = [...new Set(tensors)]
    for (const name of names) {
      const t = byName.get(name)
      if (!t) throw new ModelFormatError(path, name, 'no such tensor in this model')
      if (!t.decodable) throw new ModelFormatError(path, name, `stored type ${t.dtype} cannot be decoded by this build`)
    }

    const weight = (name: string) => Math.max(1, byName.get(name)!.byteLength)
    let total = 0
    for (const n of names) total += weight(n)
    // Running sum of stored bytes done; each tensor only ever moves forward.
    const doneOf = new Map<string, number>()
    let done = 0
    let lastReport = -1
    const advance = (name: string, bytes: number) => {
      const prev = doneOf.get(name) ?? 0
      if (bytes <= prev) return
      doneOf.set(name, bytes)
      done += bytes - prev
    }
    const report = () => {
      if (onProgress && done !== lastReport) onProgress((lastReport = done), total)
    }

    const results = new Map<string, TensorStats>()
    // Tensors answered without a job never reported progress: add their weight directly.
    const finishNow = (name: string, stats: TensorStats) => {
      results.set(name, stats)
      done += weight(name)
    }
    const finish = (name: string, stats: TensorStats) => {
      results.set(name, stats)
      advance(name, weight(name))
    }
    const keyOf = (name: string) => cacheKey(summary, name, opts)
    const toDisk: string[] = []
    const rest: string[] = []
    for (const name of names) {
      const t = byName.get(name)!
      if (elementCount(t.shape) === 0) {
        finishNow(name, this.emptyResult(name, t.shape, opts))
        continue
      }
      const hit = this.memory.get(keyOf(name))
      if (hit) {
        this.counters.memoryHits++
        finishNow(name, hit)
      } else if (this.disk && t.byteLength >= this.diskMinTensorBytes && !this.inflight.has(keyOf(name))) toDisk.push(name)
      else rest.push(name)
    }
    report()
    if (toDisk.length) {
      await withAbort(
        forEachLimited(toDisk, DISK_LOOKUPS, async (name) => {
          const hit = await this.disk!.get(keyOf(name), name)
          if (!hit) return void rest.push(name)
          this.counters.diskHits++
          this.memory.set(keyOf(name), hit)
          finishNow(name, hit)
          report()
        }),
        signal,
      )
    }
    if (signal?.aborted) throw abortError()

    // Join computations already running; batch the rest, largest jobs first.
    const shares: { name: string; shared: Shared }[] = []
    const fresh: string[] = []
    for (const name of rest) {
      const running = this.inflight.get(keyOf(name))
      if (running) shares.push({ name, shared: running })
      else fresh.push(name)
    }
    for (const batch of planBatches(fresh, (n) => byName.get(n)!.byteLength)) {
      const started = this.startJob(summary, batch, opts, weight)
      batch.forEach((name, i) => shares.push({ name, shared: started[i]! }))
    }
    const releases: (() => void)[] = []
    const work = shares.map(({ name, shared }) => {
      const listener = (bytes: number) => {
        advance(name, bytes)
        report()
      }
      shared.listeners.add(listener)
      releases.push(() => {
        shared.listeners.delete(listener)
        shared.release()
      })
      return shared.promise.then((stats) => {
        shared.listeners.delete(listener)
        finish(name, stats)
        report()
      })
    })
    try {
      await withAbort(Promise.all(work), signal)
    } catch (err) {
      // Stop what nobody else is waiting for; swallow the rejections we no longer await.
      for (const release of releases) release()
      for (const w of work) w.catch(() => {})
      throw err
    }
    return new Map(names.map((n) => [n, results.get(n)!]))
  }

  /** Terminates the workers; running and queued jobs reject. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool.close()
  }

  /** Stats of a tensor with no elements: nothing to read, so no worker round trip. */
  private emptyResult(name: string, shape: number[], opts: StatsOptions): TensorStats {
    this.counters.empty++
    const { rows, cols } = matrixShape(shape)
    const key = JSON.stringify([rows, cols, opts.bins, opts.topK, opts.heatmapSize])
    let template = this.emptyTemplates.get(key)
    if (!template) {
      template = unpackTensorStats(emptyStats('', rows, cols, opts))
      // Shapes of empty tensors are few; the bound only guards against a hostile header.
      if (this.emptyTemplates.size < 1024) this.emptyTemplates.set(key, template)
    }
    // Shares the template's arrays (results are read-only, see the class comment).
    return { ...template, tensor: name }
  }

  /** Model summary, re-read when any of its files changed (see modelFingerprint). */
  private async describe(path: string): Promise<StatsModelSummary> {
    const pending = this.summaries.get(path)
    if (pending) {
      const summary = await pending.catch(() => null)
      if (summary) {
        const now = await modelFingerprint(summary.files).catch(() => null)
        if (now === summary.fingerprint) return summary
      }
      if (this.summaries.get(path) === pending) this.summaries.delete(path)
    }
    const fresh = this.pool.run('describe', { path }).then(({ tensorsJson, ...rest }): StatsModelSummary => ({ ...rest, tensors: JSON.parse(tensorsJson) }))
    this.summaries.set(path, fresh)
    fresh.catch(() => {
      if (this.summaries.get(path) === fresh) this.summaries.delete(path)
    })
    return fresh
  }

  /**
   * One worker job for `names` (one tensor, or a batch of small ones), registered as the
   * shared computation of each. The job is cancelled when every tensor in it was released.
   */
  private startJob(summary: StatsModelSummary, names: string[], options: StatsOptions, weight: (name: string) => number): Shared[] {
    const keys = names.map((n) => cacheKey(summary, n, options))
    // Where each tensor's bytes start and end inside the batch's progress (bytes, like the worker's).
    const ends: number[] = []
    let end = 0
    for (const n of names) ends.push((end += weight(n)))
    let cursor = 0
    const entries: Shared[] = []
    this.counters.jobs++
    const job = this.pool.submit(
      'compute',
      { path: summary.path, fingerprint: summary.fingerprint, tensors: names, options, kernel: this.kernel },
      (done) => {
        // Progress only moves forward: tensors before `cursor` are complete.
        for (; cursor < names.length && done >= ends[cursor]!; cursor++) for (const l of entries[cursor]!.listeners) l(weight(names[cursor]!))
        if (cursor < names.length) {
          const start = cursor === 0 ? 0 : ends[cursor - 1]!
          for (const l of entries[cursor]!.listeners) l(done - start)
        }
      },
    )
    const computed = job.promise.then(async (result) => {
      this.counters.computed += result.stats.length
      const stats = result.stats.map(unpackTensorStats)
      // Cache under the bytes the worker actually read.
      const sameBytes = result.fingerprint === summary.fingerprint
      const persist: Promise<void>[] = []
      stats.forEach((s, i) => {
        const key = sameBytes ? keys[i]! : cacheKey({ ...summary, fingerprint: result.fingerprint }, names[i]!, options)
        this.memory.set(key, s)
        if (this.disk && weight(names[i]!) >= this.diskMinTensorBytes) persist.push(this.persist(key, s))
      })
      await Promise.all(persist)
      return stats
    })
    let live = names.length
    names.forEach((name, i) => {
      const key = keys[i]!
      let released = false
      const entry: Shared = {
        promise: computed.then((all) => all[i]!),
        listeners: new Set(),
        release: () => {
          if (released || entry.listeners.size > 0) return
          released = true
          // Later callers must not subscribe to a job that is being cancelled.
          if (this.inflight.get(key) === entry) this.inflight.delete(key)
          if (--live === 0) job.cancel()
        },
      }
      entry.promise.catch(() => {})
      entries.push(entry)
      this.inflight.set(key, entry)
    })
    const done = () => {
      keys.forEach((key, i) => {
        if (this.inflight.get(key) === entries[i]) this.inflight.delete(key)
      })
    }
    computed.then(done, done)
    return entries
  }

  private async persist(key: string, stats: TensorStats): Promise<void> {
    try {
      await this.disk!.set(key, stats)
    } catch (err) {
      // The disk cache is an optimisation; a full or read-only disk must not fail the job.
      console.warn(`stats cache: could not write to ${this.disk!.folder}: ${(err as Error).message}`)
    }
  }
}

const tensorIndex = new WeakMap<StatsModelSummary, Map<string, StatsModelSummary['tensors'][number]>>()

/** The summary's tensors by name, built once per summary (not once per request). */
function tensorsByName(summary: StatsModelSummary): Map<string, StatsModelSummary['tensors'][number]> {
  let index = tensorIndex.get(summary)
  if (!index) tensorIndex.set(summary, (index = new Map(summary.tensors.map((t) => [t.name, t]))))
  return index
}

function cacheKey(summary: Pick<StatsModelSummary, 'path' | 'fingerprint'>, tensor: string, o: StatsOptions): string {
  return JSON.stringify([CACHE_KEY_VERSION, summary.path, summary.fingerprint, tensor, o.bins, o.topK, o.heatmapSize])
}

/** Approximate bytes a result holds (8 per number). */
function statsBytes(s: TensorStats): number {
  return 8 * (64 + s.histogram.counts.length + s.rowAbsmax.length + s.colAbsmax.length + s.heatmap.values.length + 4 * s.topK.length)
}

/**
 * Worker jobs for `names`: one per large tensor, largest first, then batches of small ones
 * (up to BATCH_MAX_BYTES / BATCH_MAX_TENSORS each), so thousands of tiny tensors cost a few
 * round trips instead of thousands.
 */
export function planBatches(names: string[], bytesOf: (name: string) => number): string[][] {
  const sorted = [...names].sort((a, b) => bytesOf(b) - bytesOf(a))
  const jobs: string[][] = []
  let batch: string[] = []
  let batchBytes = 0
  for (const name of sorted) {
    const bytes = bytesOf(name)
    if (bytes >= BATCH_TENSOR_BYTES) {
      jobs.push([name])
      continue
    }
    if (batch.length >= BATCH_MAX_TENSORS || (batch.length > 0 && batchBytes + bytes > BATCH_MAX_BYTES)) {
      jobs.push(batch)
      batch = []
      batchBytes = 0
    }
    batch.push(name)
    batchBytes += bytes
  }
  if (batch.length) jobs.push(batch)
  return jobs
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const lane = async () => {
    while (next < items.length) await fn(items[next++]!)
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane))
}
