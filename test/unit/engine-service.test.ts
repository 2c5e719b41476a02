import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ApiEvent, TensorStats } from '../../worker/api/contract'
import { EngineService, type StatsBackend } from '../../worker/api/engine-service'
import { resolveDefaultModel } from '../../main/default-model'
import { RecentModelsFile } from '../../main/recent-models'
import { float64Stats } from '../helpers/stats-float64'
import { writeTinyLlama } from '../helpers/tiny-llama'

const OPTS = { bins: 256, topK: 32, heatmapSize: 128 }

describe('EngineService on a real model', () => {
  let dir: string
  let modelDir: string
  let values: Map<string, Float64Array>
  let engine: EngineService
  const events: ApiEvent[] = []

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-engine-'))
    modelDir = join(dir, 'tiny')
    values = await writeTinyLlama(modelDir, { hidden: 32, layers: 2, intermediate: 64, vocab: 96, dtype: 'F16' })
    engine = new EngineService({
      statsThreads: 1,
      recent: new RecentModelsFile(join(dir, 'state', 'recent.json')),
      defaultModel: { path: modelDir, source: 'argument', message: null },
    })
    engine.onEvent((e) => events.push(e))
  })

  afterAll(async () => {
    await engine?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('summarises a model: totals, dtypes, files, tensor placement', async () => {
    const m = await engine.openModel({ path: modelDir })
    let params = 0
    for (const v of values.values()) params += v.length
    expect(m.params).toBe(params)
    expect(m.bytes).toBe(params * 2)
    expect(m.bytesByDtype).toEqual([{ dtype: 'F16', tensors: values.size, params, bytes: params * 2 }])
    expect(m.format).toBe('safetensors')
    expect(m.architecture).toBe('llama')
    expect(m.config?.numLayers).toBe(2)
    expect(m.linearRoles).toEqual(['q', 'k', 'v', 'o', 'gate', 'up', 'down'])
    expect(m.blocks.map((b) => b.index)).toEqual([0, 1])
    expect(m.blocks[1]!.linears.down).toBe('model.layers.1.mlp.down_proj.weight')
    const weights = m.files.find((f) => f.name === 'model.safetensors')!
    expect(weights.tensors).toBe(values.size)
    expect(m.files.find((f) => f.name === 'config.json')?.tensors).toBe(0)
    const q = m.tensors.find((t) => t.name === 'model.layers.0.self_attn.q_proj.weight')!
    expect(q).toMatchObject({ layer: 0, role: 'q', group: 'block', dtype: 'F16', shape: [32, 32], params: 1024, bytes: 2048, file: 'model.safetensors' })
    expect(m.tensors.find((t) => t.name === 'model.embed_tokens.weight')?.group).toBe('embeddings')
    expect(m.tensors.find((t) => t.name === 'lm_head.weight')?.group).toBe('lm_head')
    expect(m.tensors.find((t) => t.name === 'model.norm.weight')?.group).toBe('final_norm')
    expect((await engine.listRecent())[0]).toMatchObject({ path: modelDir, name: 'tiny', format: 'safetensors' })
  })

  it('computes tensor statistics as a job, equal to a float64 reference', async () => {
    const m = await engine.openModel({ path: modelDir })
    const name = 'model.layers.1.mlp.up_proj.weight'
    const s = await engine.tensorStats({ modelId: m.modelId, tensor: name, jobId: 'job-1' })
    const ref = float64Stats(values.get(name)!, 64, 32, OPTS)
    expect(s.count).toBe(ref.count)
    expect(s.absmax).toBe(ref.absmax)
    expect(s.min).toBe(ref.min)
    expect(s.max).toBe(ref.max)
    // The WASM kernel sums float32 lanes before folding into float64: mean agrees to a tiny
    // fraction of the spread, std to 1e-6 relative (the kernel contract, see stats-kernels.test).
    expect(Math.abs(s.mean - ref.mean)).toBeLessThan(1e-6 * ref.std)
    expect(Math.abs(s.std - ref.std) / ref.std).toBeLessThan(1e-6)
    expect(s.histogram.counts).toEqual(ref.histogram)
    expect(events).toContainEqual({ type: 'job-finished', jobId: 'job-1', outcome: 'done' })
  })

  it('fills the layer grid with one cell per block and role', async () => {
    const m = await engine.openModel({ path: modelDir })
    const grid = await engine.layerGridStats({ modelId: m.modelId, jobId: 'grid-1' })
    expect(grid.blocks).toEqual([0, 1])
    expect(grid.cells).toHaveLength(14)
    expect(grid.skipped).toEqual([])
    for (const cell of grid.cells) {
      const v = values.get(cell.tensor)!
      let absmax = 0
      for (const x of v) absmax = Math.max(absmax, Math.abs(x))
      expect(cell.stats.absmax, cell.tensor).toBe(absmax)
    }
    const down1 = grid.cells.find((c) => c.block === 1 && c.role === 'down')!
    expect(down1.tensor).toBe('model.layers.1.mlp.down_proj.weight')
  })

  it('reports bad paths, unknown models and unknown tensors with names', async () => {
    await expect(engine.openModel({ path: join(dir, 'missing') })).rejects.toMatchObject({ name: 'ModelFormatError', file: join(dir, 'missing') })
    await expect(engine.tensorStats({ modelId: 'nope', tensor: 'x', jobId: 'j' })).rejects.toMatchObject({ name: 'NotFound' })
    const m = await engine.openModel({ path: modelDir })
    await expect(engine.tensorStats({ modelId: m.modelId, tensor: 'no.such.tensor', jobId: 'j2' })).rejects.toMatchObject({ name: 'NotFound' })
    expect(await engine.defaultModelPath()).toEqual({ path: modelDir, source: 'argument', message: null })
  })
})

/** Stats that report progress, then wait until aborted. */
class HangingStats implements StatsBackend {
  async computeTensorStats(_p: string, _t: string, _o?: unknown, hooks?: { onProgress?(d: number, t: number): void; signal?: AbortSignal }): Promise<TensorStats> {
    hooks?.onProgress?.(1, 10)
    return new Promise((_resolve, reject) => {
      hooks?.signal?.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' })))
    })
  }
  async computeAll(): Promise<Map<string, TensorStats>> {
    return new Map()
  }
  async close(): Promise<void> {}
}

describe('EngineService jobs', () => {
  it('emits progress and cancels a running job by id', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'qs-engine-job-'))
    try {
      await writeTinyLlama(join(dir, 'm'), { hidden: 16, layers: 1, intermediate: 32, vocab: 32 })
      const engine = new EngineService({ stats: new HangingStats() })
      const events: ApiEvent[] = []
      engine.onEvent((e) => events.push(e))
      const m = await engine.openModel({ path: join(dir, 'm') })
      const job = engine.tensorStats({ modelId: m.modelId, tensor: 'model.layers.0.mlp.up_proj.weight', jobId: 'hang' })
      await expect(engine.tensorStats({ modelId: m.modelId, tensor: 'model.layers.0.mlp.up_proj.weight', jobId: 'hang' })).rejects.toMatchObject({ name: 'BadRequest' })
      expect(await engine.cancelJob({ jobId: 'hang' })).toEqual({ cancelled: true })
      await expect(job).rejects.toMatchObject({ name: 'AbortError' })
      expect(await engine.cancelJob({ jobId: 'hang' })).toEqual({ cancelled: false })
      expect(events).toEqual([
        { type: 'job-progress', jobId: 'hang', done: 1, total: 10 },
        { type: 'job-finished', jobId: 'hang', outcome: 'cancelled' },
      ])
      await engine.close()
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('start-up model and recent models', () => {
  it('prefers the argument, then the embedded default, else explains', async () => {
    const root = await mkdtemp(join(tmpdir(), 'qs-root-'))
    try {
      const none = await resolveDefaultModel(root, null)
      expect(none.path).toBeNull()
      expect(none.message).toContain('resources/models/default')
      expect(await resolveDefaultModel(root, join(root, 'x.gguf'))).toMatchObject({ path: join(root, 'x.gguf'), source: 'argument' })
      await mkdir(join(root, 'resources', 'models', 'default'), { recursive: true })
      await writeFile(join(root, 'resources', 'models', 'default', 'model.safetensors'), '')
      expect(await resolveDefaultModel(root, null)).toEqual({ path: join(root, 'resources', 'models', 'default'), source: 'embedded', message: null })
    } finally {
      await rm(root, { recursive: true, force: true })
    }
  })

  it('keeps recent models newest first, one per path, and survives a corrupt file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'qs-recent-'))
    try {
      const file = join(dir, 'recent.json')
      const recent = new RecentModelsFile(file)
      await Promise.all([
        recent.add({ path: dir, name: 'a', format: 'gguf', openedAt: 1 }),
        recent.add({ path: tmpdir(), name: 'b', format: 'onnx', openedAt: 2 }),
      ])
      await recent.add({ path: dir, name: 'a', format: 'gguf', openedAt: 3 })
      expect((await recent.list()).map((r) => r.name)).toEqual(['a', 'b'])
      await recent.add({ path: join(dir, 'gone'), name: 'gone', format: null, openedAt: 4 })
      expect((await recent.list()).map((r) => r.name)).toEqual(['a', 'b'])
      await writeFile(file, '{not json')
      expect(await recent.list()).toEqual([])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
