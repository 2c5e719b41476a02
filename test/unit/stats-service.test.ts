import { afterAll, beforeAll, describe, it, expect } from 'vitest'
import { mkdtemp, readdir, rm, utimes } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ModelFormatError } from '../../worker/common/errors'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { StatsService } from '../../worker/stats/stats-service'
import type { StatsOptions } from '../../worker/stats/stats-types'
import { adversarial, bf16Bits, bf16Value, expectMatchesFloat64, f16Bits, f16Value } from '../helpers/stats-float64'

interface Spec {
  name: string
  dtype: 'F32' | 'F16' | 'BF16'
  shape: number[]
}

const SPECS: Spec[] = [
  { name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'F16', shape: [64, 33] },
  { name: 'model.layers.0.mlp.down_proj.weight', dtype: 'BF16', shape: [5, 7, 9] },
  { name: 'model.norm.weight', dtype: 'F32', shape: [37] },
  { name: 'model.layers.0.mlp.up_proj.weight', dtype: 'F32', shape: [37, 50] },
  // Several 4 MB chunks, so progress arrives in steps and cancel can land between chunks.
  { name: 'model.embed_tokens.weight', dtype: 'F16', shape: [1500, 2048] },
]
const OPTS: StatsOptions = { bins: 50, topK: 9, heatmapSize: 12 }

/** Encodes values to the dtype; returns the stored bytes and the values they decode to. */
function encode(dtype: Spec['dtype'], v: Float32Array): { bytes: Uint8Array; decoded: Float32Array } {
  if (dtype === 'F32') return { bytes: new Uint8Array(v.buffer.slice(0)), decoded: v }
  const bits = new Uint16Array(v.length)
  const decoded = new Float32Array(v.length)
  for (let i = 0; i < v.length; i++) {
    bits[i] = dtype === 'F16' ? f16Bits(v[i]!) : bf16Bits(v[i]!)
    decoded[i] = dtype === 'F16' ? f16Value(bits[i]!) : bf16Value(bits[i]!)
  }
  return { bytes: new Uint8Array(bits.buffer), decoded }
}

let dir: string
let modelPath: string
const decoded = new Map<string, Float32Array>()

async function writeModel(seed: number): Promise<void> {
  decoded.clear()
  await writeSafetensorsFile(modelPath, SPECS, (spec, i) => {
    const s = SPECS[i]!
    const rows = s.shape.slice(0, -1).reduce((a, b) => a * b, 1)
    const { bytes, decoded: d } = encode(s.dtype, adversarial(rows, s.shape.at(-1)!, seed + i))
    decoded.set(spec.name, d)
    return bytes
  })
}

function rowsCols(s: Spec): [number, number] {
  return [s.shape.slice(0, -1).reduce((a, b) => a * b, 1), s.shape.at(-1)!]
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'quantscope-stats-'))
  modelPath = join(dir, 'model.safetensors')
  await writeModel(100)
  // Encoding 3M values in JS takes seconds when other test files share the 2 cores.
}, 60_000)

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('StatsService', () => {
  it('computes every tensor on 2 threads, matching float64; progress in bytes; second call hits the cache', async () => {
    const cacheDir = join(dir, 'cache')
    // diskMinTensorBytes 0: these test tensors are small, keep them on disk anyway.
    const svc = new StatsService({ threads: 2, cacheDir, diskMinTensorBytes: 0 })
    try {
      const progress: [number, number][] = []
      const names = SPECS.map((s) => s.name)
      const all = await svc.computeAll(modelPath, names, OPTS, { onProgress: (d, t) => progress.push([d, t]) })
      expect([...all.keys()]).toEqual(names)
      for (const s of SPECS) {
        const [rows, cols] = rowsCols(s)
        expectMatchesFloat64(all.get(s.name)!, decoded.get(s.name)!, rows, cols, OPTS, 1e-6)
      }
      const totalBytes = 2 * (64 * 33 + 5 * 7 * 9 + 1500 * 2048) + 4 * (37 + 37 * 50)
      expect(progress.length).toBeGreaterThan(3)
      expect(progress.every(([, t]) => t === totalBytes)).toBe(true)
      expect(progress.at(-1)![0]).toBe(totalBytes)
      for (let i = 1; i < progress.length; i++) expect(progress[i]![0]).toBeGreaterThanOrEqual(progress[i - 1]![0])
      expect(svc.counters.computed).toBe(SPECS.length)

      // Same model, same options: answered from memory, no worker job.
      const again = await svc.computeTensorStats(modelPath, names[0]!, OPTS)
      expect(again).toEqual(all.get(names[0]!))
      expect(svc.counters).toMatchObject({ computed: SPECS.length, memoryHits: 1 })
      // Other options are a different result.
      const other = await svc.computeTensorStats(modelPath, names[0]!, { ...OPTS, bins: 7 })
      expect(other.histogram.counts.length).toBe(7)
      expect(svc.counters.computed).toBe(SPECS.length + 1)
      expect((await readdir(cacheDir)).filter((f) => f.endsWith('.qsc')).length).toBe(SPECS.length + 1)
    } finally {
      await svc.close()
    }

    // A fresh service (a restart) finds the results on disk.
    const svc2 = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    try {
      const s = await svc2.computeTensorStats(modelPath, SPECS[3]!.name, OPTS)
      const [rows, cols] = rowsCols(SPECS[3]!)
      expectMatchesFloat64(s, decoded.get(SPECS[3]!.name)!, rows, cols, OPTS, 1e-6)
      expect(svc2.counters).toMatchObject({ computed: 0, diskHits: 1 })
    } finally {
      await svc2.close()
    }
  })

  it('cancels with an AbortError and keeps working afterwards', async () => {
    const svc = new StatsService({ threads: 2 })
    try {
      const big = SPECS[4]!.name
      const ctl = new AbortController()
      let events = 0
      const p = svc.computeTensorStats(modelPath, big, OPTS, {
        signal: ctl.signal,
        onProgress: (done) => {
          events++
          if (done > 0) ctl.abort()
        },
      })
      await expect(p).rejects.toMatchObject({ name: 'AbortError' })
      expect(events).toBeGreaterThan(0)
      expect(svc.counters.computed).toBe(0)

      // Already-aborted signal: rejects before any work.
      await expect(svc.computeTensorStats(modelPath, big, OPTS, { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' })

      const s = await svc.computeTensorStats(modelPath, big, OPTS)
      const [rows, cols] = rowsCols(SPECS[4]!)
      expectMatchesFloat64(s, decoded.get(big)!, rows, cols, OPTS, 1e-6)
      // Had the cancelled job run to the end, its result would have been counted (and cached).
      expect(svc.counters).toMatchObject({ computed: 1, memoryHits: 0 })
    } finally {
      await svc.close()
    }
  })

  it('recomputes when the model file changes, and names unknown tensors', async () => {
    const svc = new StatsService({ threads: 2 })
    try {
      const name = SPECS[0]!.name
      const before = await svc.computeTensorStats(modelPath, name, OPTS)
      await writeModel(200)
      // Make sure the mtime moves even on coarse-grained file systems.
      const later = new Date(Date.now() + 5000)
      await utimes(modelPath, later, later)
      const after = await svc.computeTensorStats(modelPath, name, OPTS)
      expect(after).not.toEqual(before)
      const [rows, cols] = rowsCols(SPECS[0]!)
      expectMatchesFloat64(after, decoded.get(name)!, rows, cols, OPTS, 1e-6)
      expect(svc.counters.computed).toBe(2)

      await expect(svc.computeTensorStats(modelPath, 'no.such.weight', OPTS)).rejects.toThrow(ModelFormatError)
      await expect(svc.computeTensorStats(join(dir, 'missing.safetensors'), name, OPTS)).rejects.toThrow(/missing\.safetensors/)
    } finally {
      await svc.close()
    }
  })
})
