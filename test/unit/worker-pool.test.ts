import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ModelFormatError } from '../../worker/common/errors'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { WorkerPool } from '../../worker/jobs/pool'
import type { StatsJobs } from '../../worker/stats/stats-protocol'
import { DEFAULT_STATS_OPTIONS } from '../../worker/stats/stats-types'

/**
 * The generic pool, driven with the real stats worker (the quantizer workers will use the
 * same pool): typed jobs, progress, errors that keep their class, cancel of queued and
 * running jobs, and a worker that ignores 'cancel' past the grace period being replaced.
 */

let dir: string
let modelPath: string
const BIG = 'big.weight'
const BIG_SHAPE = [2048, 2048]

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'quantscope-pool-'))
  modelPath = join(dir, 'model.safetensors')
  await writeSafetensorsFile(
    modelPath,
    [
      { name: BIG, dtype: 'F32', shape: BIG_SHAPE },
      { name: 'small.weight', dtype: 'F32', shape: [2, 3] },
    ],
    (spec) => new Uint8Array(spec.name === BIG ? Float32Array.from({ length: 2048 * 2048 }, (_, i) => (i % 1001) - 500).buffer : Float32Array.from([1, 2, 3, -4, 5, 6]).buffer),
  )
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

function computeParams(fingerprint: string, tensors: string[]) {
  return { path: modelPath, fingerprint, tensors, options: { ...DEFAULT_STATS_OPTIONS }, kernel: 'ts' as const }
}

describe('WorkerPool', () => {
  it('runs typed jobs with progress, and rebuilds errors with their class', async () => {
    const pool = new WorkerPool<StatsJobs>({ worker: 'stats', threads: 2 })
    try {
      const described = await pool.run('describe', { path: modelPath })
      const tensors = JSON.parse(described.tensorsJson) as { name: string; shape: number[] }[]
      expect(tensors.map((t) => [t.name, t.shape])).toEqual([
        [BIG, BIG_SHAPE],
        ['small.weight', [2, 3]],
      ])
      const progress: [number, number][] = []
      const result = await pool.run('compute', computeParams(described.fingerprint, ['small.weight', BIG]), { onProgress: (d, t) => progress.push([d, t]) })
      expect(result.stats.map((s) => s.head.tensor)).toEqual(['small.weight', BIG])
      expect(result.stats[0]!.head).toMatchObject({ min: -4, max: 6, count: 6 })
      expect(result.stats[1]!.head).toMatchObject({ min: -500, max: 500, count: 2048 * 2048 })
      // Progress is in stored bytes over the batch, and reaches its total.
      const total = 24 + 4 * 2048 * 2048
      expect(progress.length).toBeGreaterThan(0)
      expect(progress.every(([d, t]) => t === total && d <= t)).toBe(true)
      expect(progress.at(-1)).toEqual([total, total])

      // A reader error crosses the thread boundary as the same class, naming file and tensor.
      const err = await pool.run('compute', computeParams(described.fingerprint, ['no.such'])).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(ModelFormatError)
      expect((err as ModelFormatError).tensor).toBe('no.such')
      const bad = join(dir, 'bad.safetensors')
      await writeFile(bad, Buffer.alloc(16))
      await expect(pool.run('describe', { path: bad })).rejects.toThrow(/bad\.safetensors/)
      expect(pool.pending).toBe(0)
    } finally {
      await pool.close()
    }
    await expect(pool.run('describe', { path: modelPath })).rejects.toThrow(/closed/)
  })

  it('drops a queued job at once; stops a running one, terminating a worker that overstays its grace', async () => {
    // One worker holding one job at a time, so the second job waits in the pool's queue.
    const pool = new WorkerPool<StatsJobs>({ worker: 'stats', threads: 1, perWorkerDepth: 1, cancelGraceMs: 0 })
    try {
      const { fingerprint } = await pool.run('describe', { path: modelPath })
      expect(pool.counters.started).toBe(1)
      const running = pool.submit('compute', computeParams(fingerprint, [BIG]))
      const queued = pool.submit('compute', computeParams(fingerprint, ['small.weight']))
      queued.cancel()
      await expect(queued.promise).rejects.toMatchObject({ name: 'AbortError' })
      // A grace of 0 ms: the worker is terminated before it can reach its next chunk check.
      running.cancel()
      await expect(running.promise).rejects.toMatchObject({ name: 'AbortError' })
      expect(pool.counters.replaced).toBe(1)

      // A fresh worker takes the next job.
      const after = await pool.run('compute', computeParams(fingerprint, ['small.weight']))
      expect(after.stats[0]!.head).toMatchObject({ min: -4, max: 6 })
      expect(pool.counters.started).toBe(2)

      // An AbortSignal cancels through run().
      const ctl = new AbortController()
      const p = pool.run('compute', computeParams(fingerprint, [BIG]), { signal: ctl.signal, onProgress: () => ctl.abort() })
      await expect(p).rejects.toMatchObject({ name: 'AbortError' })
      expect(pool.pending).toBeLessThanOrEqual(1)
    } finally {
      await pool.close()
    }
  })
})
