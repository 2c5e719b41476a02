/**
 * Calibration captures cached (worker/plan/calibration-cache.ts) on the default model: the
 * second call is served from memory, a fresh memory from the disk folder, both with arrays
 * equal to the capture's; a tampered entry is refused and recomputed; another window count is
 * another entry; the payload codec round-trips exactly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { resolvePlanFor } from '../../worker/plan/apply'
import { captureCalibration } from '../../worker/plan/calibration'
import { CalibrationCache, calibrationCacheFor, decodeCapture, encodeCapture, type CachedCapture } from '../../worker/plan/calibration-cache'
import { PLAN_FORMAT, PLAN_VERSION, type ResolvedEntry } from '../../worker/plan/plan'
import type { LayerCalibration } from '../../worker/quant/contract'

const DEFAULT = resolve('resources/models/default')
const Q = 'model.layers.1.self_attn.q_proj.weight'
const DOWN = 'model.layers.5.mlp.down_proj.weight'

let model: OpenedModel
let dir: string
let entries: ResolvedEntry[]

beforeAll(async () => {
  model = await openModel(DEFAULT)
  dir = await mkdtemp(join(tmpdir(), 'qs-calib-cache-'))
  const plan = {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    model: { name: '', fingerprint: '-' },
    tensors: { [Q]: { method: 'gptq', params: { bits: 4, group: 64 } }, [DOWN]: { method: 'awq', params: { bits: 4, group: 64 } } },
  } as const
  entries = resolvePlanFor(model, plan, 'test', true)
})
afterAll(async () => {
  await model.close()
  await rm(dir, { recursive: true, force: true })
})

function expectSame(a: Map<string, LayerCalibration>, b: Map<string, LayerCalibration>): void {
  expect([...b.keys()]).toEqual([...a.keys()])
  for (const [name, x] of a) {
    const y = b.get(name)!
    expect(y.count).toBe(x.count)
    for (const key of ['mean', 'meanAbs', 'meanSq'] as const) expect(y[key]).toEqual(x[key])
    expect(y.gram).toBeInstanceOf(Float64Array)
    expect(Buffer.from(y.gram!.buffer, y.gram!.byteOffset, y.gram!.byteLength).equals(Buffer.from(x.gram!.buffer, x.gram!.byteOffset, x.gram!.byteLength))).toBe(true)
  }
}

describe('calibration cache', () => {
  it('memory, then disk, then a tampered entry recomputed; another window count is another entry', async () => {
    const options = { cacheDir: dir, maxWindows: 2 }
    const cache = calibrationCacheFor(dir)
    const first = await captureCalibration(model, entries, options)
    expect(cache.counters).toEqual({ memoHits: 0, diskHits: 0, captures: 1 })
    const q = first.get(Q)!
    expect(q.gram).toHaveLength(256 * 256)
    expect(first.get(DOWN)!.gram).toHaveLength(768 * 768)
    // 2 windows of 256 tokens; XᵀX's diagonal is count × mean x² (both reduced in float32 by the graph).
    expect(q.count).toBe(512)
    for (const j of [0, 17, 255]) expect(q.gram![j * 256 + j]! / (q.count * Number(q.meanSq[j]))).toBeCloseTo(1, 5)

    const second = await captureCalibration(model, entries, options)
    expect(cache.counters).toEqual({ memoHits: 1, diskHits: 0, captures: 1 })
    expectSame(first, second)

    cache.clearMemory()
    const third = await captureCalibration(model, entries, options)
    expect(cache.counters).toEqual({ memoHits: 1, diskHits: 1, captures: 1 })
    expectSame(first, third)

    // Change one byte of the stored payload: the checksum refuses it and the capture runs again.
    const files = (await readdir(dir)).filter((n) => n.endsWith('.qsc'))
    expect(files).toHaveLength(1)
    const path = join(dir, files[0]!)
    const bytes = await readFile(path)
    bytes[bytes.length - 3] ^= 0x40
    await writeFile(path, bytes)
    cache.clearMemory()
    const fourth = await captureCalibration(model, entries, options)
    expect(cache.counters).toEqual({ memoHits: 1, diskHits: 1, captures: 2 })
    expect(cache.disk!.counters.rejected).toBe(1)
    expectSame(first, fourth)

    const one = await captureCalibration(model, entries, { cacheDir: dir, maxWindows: 1 })
    expect(cache.counters.captures).toBe(3)
    expect(one.get(Q)!.count).toBe(256)
  }, 60_000)

  it('memory holds captures up to its byte bound; a larger one is recomputed next time (no disk folder)', async () => {
    const capture = (n: number): CachedCapture => ({
      ctx: 2,
      windows: 1,
      tokens: 2,
      linearInputs: { t: 'p' },
      points: [{ id: 'p', count: 2, mean: new Float64Array(n), meanAbs: new Float64Array(n), meanSq: new Float64Array(n), gram: new Float64Array(n * n) }],
    })
    // 4 channels: 3·32 + 128 bytes = 224 bytes per capture.
    const small = new CalibrationCache(null, 0, 500)
    for (let i = 0; i < 3; i++) await small.get('k', async () => capture(4))
    expect(small.counters).toEqual({ memoHits: 2, diskHits: 0, captures: 1 })
    await small.get('k2', async () => capture(4))
    await small.get('k3', async () => capture(4)) // 3 × 224 > 500: the oldest ('k') goes
    await small.get('k', async () => capture(4))
    expect(small.counters.captures).toBe(4)
    const tiny = new CalibrationCache(null, 0, 100)
    await tiny.get('k', async () => capture(4))
    await tiny.get('k', async () => capture(4))
    expect(tiny.counters).toEqual({ memoHits: 0, diskHits: 0, captures: 2 })
  })

  it('the payload codec round-trips every array exactly', () => {
    const capture: CachedCapture = {
      ctx: 256,
      windows: 3,
      tokens: 768,
      linearInputs: { a: 'L0.attn_in', b: 'L0.attn_in', c: 'L0.down_in' },
      points: [
        { id: 'L0.attn_in', count: 768, mean: Float64Array.of(1.5, -2, Math.PI), meanAbs: Float64Array.of(1, 2, 3), meanSq: Float64Array.of(4, 5, 6), gram: Float64Array.from({ length: 9 }, (_, i) => i / 7) },
        { id: 'L0.down_in', count: 768, mean: Float64Array.of(1e-300), meanAbs: Float64Array.of(0), meanSq: Float64Array.of(-0), gram: null },
      ],
    }
    const back = decodeCapture(encodeCapture(capture))
    expect(back).toEqual(capture)
    expect(Object.is(back.points[1]!.meanSq[0], -0)).toBe(true)
    // Every array owns its buffer (posting one layer's XᵀX to a worker must not copy the others).
    for (const p of back.points) for (const a of [p.mean, p.meanAbs, p.meanSq, p.gram]) if (a) expect(a.buffer.byteLength).toBe(a.byteLength)
    expect(() => decodeCapture(encodeCapture(capture).subarray(0, -8))).toThrow(/shorter/)
  })
})
