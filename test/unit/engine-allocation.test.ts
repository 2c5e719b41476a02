/**
 * The engine's allocatePlan and paretoSweep jobs on qwen2-tiny (measurements on an allocation
 * worker thread, a private ΔKLD cache): the allocated plan is the one plan/allocate.ts makes
 * from the same (cached) ΔKLD table, its memory breakdown equals planSize / the memory model
 * byte for byte, the budget holds, a second budget is served without measuring again, an
 * infeasible budget fails with the smallest feasible size, and a sweep's uniform point has the
 * perplexity a direct `evaluate` of the same plan gives.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { ApiEvent } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'
import { allocate, allocationTargets, parseOptionSpecs } from '../../worker/plan/allocate'
import { resolvePlanFor } from '../../worker/plan/apply'
import { parseBudget } from '../../worker/plan/budget'
import { DEFAULT_CALIBRATION_TEXT } from '../../worker/plan/calibration'
import { LLAMA_CPP_PRESETS, planFromLlamaCppPreset } from '../../worker/plan/llama-cpp-presets'
import { memoryModel } from '../../worker/plan/memory-model'
import { measureSensitivity } from '../../worker/plan/sensitivity'
import { planSize } from '../../worker/plan/size'

const TINY = resolve('resources/models/qwen2-tiny')
const DEFAULT = resolve('resources/models/default')
const OPTIONS = 'rtn:bits=4,group=32;rtn:bits=3,group=32'
const BACKEND = 'native' as const

describe('EngineService allocatePlan / paretoSweep (qwen2-tiny)', () => {
  let cache: string
  let engine: EngineService
  let modelId: string
  let model: OpenedModel
  const events: ApiEvent[] = []

  beforeAll(async () => {
    cache = await mkdtemp(join(tmpdir(), 'qs-engine-allocation-'))
    engine = new EngineService({ statsThreads: 1, inferenceThreads: 2, sensitivityCacheDir: cache, calibrationCacheDir: null })
    engine.onEvent((e) => events.push(e))
    modelId = (await engine.openModel({ path: TINY })).modelId
    model = await openModel(TINY)
  })

  afterAll(async () => {
    await model?.close()
    await engine?.close()
    await rm(cache, { recursive: true, force: true })
  })

  it('optimal at 4.5 bpw: the plan allocate() makes from the cached ΔKLD table, sized as planSize and the memory model', async () => {
    const r = await engine.allocatePlan({ jobId: 'al-1', modelId, budget: '4.5bpw', allocator: 'optimal', options: OPTIONS, windows: 1, backend: BACKEND })
    expect(r.measurement).toMatchObject({ kind: 'sensitivity', fromCache: false })
    expect(r.measurement.measured).toBe(allocationTargets(model, false).length * 2)
    // The same table, read back from the cache the job filled (no measurement here).
    const ids = await tokensOf({ file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model))
    const options = parseOptionSpecs(OPTIONS)
    let measuredNow = 0
    const costs = await measureSensitivity(
      { model, tensors: allocationTargets(model, false), options, ids, maxWindows: 1, backend: BACKEND, cacheDir: cache },
      { onProgress: (p) => void (p.cached ? 0 : measuredNow++) },
    )
    expect(measuredNow).toBe(0)
    const direct = allocate({ model, allocator: 'optimal', budget: parseBudget('4.5bpw'), options, memory: { format: 'native', kv: null }, costs })
    expect(r.plan.tensors).toEqual(direct.plan.tensors)
    expect(r.predictedKld).toBeCloseTo(direct.predictedKld!, 12)
    expect(r.bitsPerWeight).toBeLessThanOrEqual(4.5)
    expect(r.bitsPerWeight).toBe(direct.bitsPerWeight)
    // Both options are used: a real mix, not a uniform plan.
    expect(Object.keys(r.counts).sort()).toEqual(options.map((o) => o.spec).sort())

    const entries = resolvePlanFor(model, r.plan, 'test')
    const size = planSize(model, entries)
    const engineSize = await engine.planSize({ modelId, plan: r.plan })
    expect(r.memory.weights).toBe(size.bytes)
    expect(r.memory.weights).toBe(engineSize.bytes)
    expect(r.memory.codes).toBe(size.planned.storage.codes)
    expect(r.memory.scales).toBe(size.planned.storage.scales + size.planned.storage.zeros + size.planned.storage.tables + size.planned.storage.outliers)
    expect(r.memory.kept).toBe(size.kept.bytes)
    expect(r.memory.codes + r.memory.scales + r.memory.kept + r.memory.kvCache).toBe(r.memory.total)
    expect(r.memory).toMatchObject({ kvCache: 0, total: memoryModel(model, entries, { format: 'native', kv: null }).total, splitExact: true, kv: null })
    expect(events.some((e) => e.type === 'job-progress' && e.jobId === 'al-1' && e.detail?.stage === 'measuring')).toBe(true)
    expect(events.some((e) => e.type === 'job-finished' && e.jobId === 'al-1' && e.outcome === 'done')).toBe(true)
  })

  it('another budget (bytes, with a KV reserve) is allocated from the kept measurements; the byte budget bounds weights + KV', async () => {
    const t0 = performance.now()
    // Between all-3-bit (3,543,296 bytes with this KV reserve) and all-4-bit: a mix.
    const budget = 3_580_000
    const r = await engine.allocatePlan({ jobId: 'al-2', modelId, budget: String(budget), allocator: 'greedy', options: OPTIONS, windows: 1, backend: BACKEND, kv: { ctx: 512, batch: 2 } })
    expect(performance.now() - t0).toBeLessThan(3000)
    expect(r.measurement).toMatchObject({ kind: 'sensitivity', fromCache: true, measured: 0 })
    // K and V · 4 layers · 2 KV heads · head dim 32 · 512 positions · 2 sequences · 2 bytes (fp16).
    expect(r.memory.kvCache).toBe(2 * 4 * 2 * 32 * 512 * 2 * 2)
    expect(r.memory.total).toBe(r.memory.weights + r.memory.kvCache)
    expect(r.memory.total).toBeLessThanOrEqual(budget)
    expect(Object.keys(r.counts)).toHaveLength(2)
    expect(r.memory.weights).toBe((await engine.planSize({ modelId, plan: r.plan })).bytes)
  })

  it('an infeasible budget fails as PlanError with the smallest feasible size; bad requests fail early', async () => {
    await expect(engine.allocatePlan({ jobId: 'al-3', modelId, budget: '2bpw', allocator: 'optimal', options: OPTIONS, windows: 1, backend: BACKEND })).rejects.toMatchObject({
      name: 'PlanError',
      message: expect.stringMatching(/2bpw is infeasible.*smallest feasible is 4 bpw/),
    })
    const uniform3 = parseOptionSpecs(OPTIONS)[1]!
    const smallest = memoryModel(model, resolvePlanFor(model, { format: 'quantscope-plan', version: 1, model: { name: '', fingerprint: '' }, tensors: Object.fromEntries(allocationTargets(model, false).map((t) => [t.name, { method: 'rtn', params: uniform3.kind === 'method' ? (uniform3.params as Record<string, number>) : {} }])) }, 'x', true), { format: 'native', kv: null }).total
    await expect(engine.allocatePlan({ jobId: 'al-4', modelId, budget: '1MB', allocator: 'optimal', options: OPTIONS, windows: 1, backend: BACKEND })).rejects.toMatchObject({
      name: 'PlanError',
      message: expect.stringContaining(`the smallest feasible size is ${smallest} bytes`),
    })
    await expect(engine.allocatePlan({ jobId: 'al-5', modelId, budget: '12 parsecs', allocator: 'optimal', options: OPTIONS })).rejects.toMatchObject({ name: 'BadRequest', message: expect.stringContaining("budget '12 parsecs'") })
    await expect(engine.allocatePlan({ jobId: 'al-6', modelId, budget: '4bpw', allocator: 'optimal', options: 'rtn:bits=99' })).rejects.toMatchObject({ name: 'BadRequest' })
    await expect(engine.allocatePlan({ jobId: 'al-7', modelId, budget: '4bpw', allocator: 'lsaq', options: OPTIONS, allTensors: true })).rejects.toMatchObject({ name: 'BadRequest', message: expect.stringContaining('LSAQ') })
  })

  it('LSAQ: the n most important blocks high, within the budget', async () => {
    const r = await engine.allocatePlan({ jobId: 'al-8', modelId, budget: '4.5bpw', allocator: 'lsaq', options: OPTIONS, windows: 1, backend: BACKEND })
    expect(r.measurement.kind).toBe('lsaq')
    expect(r.predictedKld).toBeNull()
    expect(r.bitsPerWeight).toBeLessThanOrEqual(4.5)
    expect(r.highLayers!.length).toBeGreaterThan(0)
    expect(r.highLayers!.length).toBeLessThan(4)
    expect(r.memory.weights).toBe((await engine.planSize({ modelId, plan: r.plan })).bytes)
  })

  it('paretoSweep: allocator points within budget, the infeasible one skipped, uniform points equal a direct evaluate of their plans', async () => {
    const r = await engine.paretoSweep({ jobId: 'sw-1', modelId, allocators: ['optimal'], budgets: ['4.5bpw', '2bpw'], options: OPTIONS, windows: 1, evalWindows: 2, backend: BACKEND })
    expect(r.skipped.map((s) => s.label)).toEqual(['optimal 2bpw'])
    expect(r.points.map((p) => p.kind).sort()).toEqual(['optimal', 'uniform', 'uniform'])
    expect(r.points.map((p) => p.bytes)).toEqual([...r.points.map((p) => p.bytes)].sort((a, b) => a - b))
    expect(r.windows).toBe(2)
    const opt = r.points.find((p) => p.kind === 'optimal')!
    expect(opt.bpw).toBeLessThanOrEqual(4.5)
    expect(opt.bytes).toBe((await engine.planSize({ modelId, plan: opt.plan })).bytes)
    for (const u of r.points.filter((p) => p.kind === 'uniform')) {
      const run = await engine.evaluate({ jobId: `ev-${u.label}`, modelId, text: { kind: 'heldout' }, ctx: r.ctx, maxWindows: 2, backend: BACKEND, variant: { kind: 'plan', plan: u.plan } })
      expect(u.ppl).toBeCloseTo(run.ppl, 9)
    }
    // The mix lies between the uniform plans in size.
    const [u3, u4] = r.points.filter((p) => p.kind === 'uniform')
    expect(opt.bytes).toBeGreaterThan(u3!.bytes)
    expect(opt.bytes).toBeLessThan(u4!.bytes)
  })

  it('cancel stops a sweep: it rejects as cancelled and finishes with outcome cancelled', async () => {
    const jobId = 'sw-cancel'
    const p = engine.paretoSweep({ jobId, modelId, allocators: ['lsaq'], budgets: ['4.5bpw'], options: OPTIONS, windows: 1, evalWindows: 500, backend: BACKEND, text: { kind: 'heldout' } })
    const outcome = p.catch((e: Error) => e)
    await new Promise((r) => setTimeout(r, 1500))
    expect((await engine.cancelJob({ jobId })).cancelled).toBe(true)
    expect(await outcome).toMatchObject({ name: 'AbortError' })
    expect(events.some((e) => e.type === 'job-finished' && e.jobId === jobId && e.outcome === 'cancelled')).toBe(true)
  })

  it('paretoSweep over ggml types adds the llama.cpp presets within ±15 % of its sizes (default model, GGUF sizes)', async () => {
    const opened = await engine.openModel({ path: DEFAULT })
    const big = await openModel(DEFAULT)
    try {
      const r = await engine.paretoSweep({ jobId: 'sw-ggml', modelId: opened.modelId, allocators: ['lsaq'], budgets: ['4bpw'], options: 'ggml:type=Q4_K;ggml:type=Q3_K', layout: 'gguf', windows: 1, evalWindows: 1, uniform: false })
      const lsaq = r.points.find((p) => p.kind === 'lsaq')!
      const gguf = (plan: Parameters<typeof resolvePlanFor>[1]) => memoryModel(big, resolvePlanFor(big, plan, 'test'), { format: 'gguf', kv: null }).weights
      expect(lsaq.bytes).toBe(gguf(lsaq.plan))
      // Exactly the presets whose GGUF data lies within 15 % of the one allocation, each the library's plan.
      const expected = LLAMA_CPP_PRESETS.filter((p) => {
        const b = gguf(planFromLlamaCppPreset(big, p))
        return b >= lsaq.bytes * 0.85 && b <= lsaq.bytes * 1.15
      })
      expect(expected.length).toBeGreaterThan(0)
      expect(expected.length).toBeLessThan(LLAMA_CPP_PRESETS.length)
      const presets = r.points.filter((p) => p.kind === 'preset')
      expect(presets.map((p) => p.label).sort()).toEqual(expected.map((p) => `llama.cpp ${p}`).sort())
      for (const p of presets) {
        expect(p.plan).toEqual(planFromLlamaCppPreset(big, p.label.slice('llama.cpp '.length)))
        expect(p.bytes).toBe(gguf(p.plan))
        expect(Number.isFinite(p.ppl) && p.ppl > 1).toBe(true)
      }
      // The same allocation as allocatePlan (LSAQ importance kept from the sweep): GGUF bytes, a KV reserve.
      const one = await engine.allocatePlan({ jobId: 'al-ggml', modelId: opened.modelId, budget: '4bpw', allocator: 'lsaq', options: 'ggml:type=Q4_K;ggml:type=Q3_K', layout: 'gguf', windows: 1, kv: { ctx: 2048 } })
      expect(one.measurement.fromCache).toBe(true)
      expect(one.plan).toEqual(lsaq.plan)
      const m = memoryModel(big, resolvePlanFor(big, one.plan, 'test'), { format: 'gguf', kv: { ctx: 2048 } })
      expect(one.memory).toMatchObject({ layout: 'gguf', splitExact: false, weights: m.weights, kvCache: m.kvCache, total: m.total, kept: m.kept })
      expect(one.memory.codes + one.memory.scales).toBe(m.planned)
      expect(one.memory.scales).toBeGreaterThan(0)
    } finally {
      await big.close()
      await engine.closeModel({ modelId: opened.modelId })
    }
  })
})
