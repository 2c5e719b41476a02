/**
 * The engine's quantization API on the default model, through EngineService (and the
 * transports' edge where the error shape matters): the method list read from the schemas,
 * exact plan sizes and plan errors as the UI receives them, tensor previews as cancellable
 * jobs equal to the quantizers run in this thread (GPTQ with its output MSE from the cached
 * capture), saved plans per model across a restart, and evaluate/generate of an inline plan
 * equal to the inference service given the same plan.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import * as v from 'valibot'
import { dispatchRequest } from '../../main/api-dispatcher'
import { SavedPlansFile } from '../../main/plans-store'
import type { ApiEvent } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { evalPerplexity } from '../../worker/inference/inference-service'
import { engineModuleUrl } from '../../worker/jobs/spawn-worker'
import { readOrientedWeight, resolvePlanFor } from '../../worker/plan/apply'
import { captureCalibration } from '../../worker/plan/calibration'
import { planFromSpec, PLAN_FORMAT, PLAN_VERSION, type Plan } from '../../worker/plan/plan'
import { planSize } from '../../worker/plan/size'
import { quantErrorMetrics } from '../../worker/quant/metrics'
import { QUANT_METHODS } from '../../worker/quant/registry'

const DEFAULT = resolve('resources/models/default')
const HELDOUT = resolve('resources/eval/heldout.txt')
const UP = 'model.layers.3.mlp.up_proj.weight' // [768, 256]
const THREADS = 2

let dir: string
let plansFile: string
let engine: EngineService
let modelId: string
let model: OpenedModel
const events: ApiEvent[] = []

const makeEngine = (): EngineService =>
  new EngineService({ statsThreads: 1, inferenceThreads: THREADS, quantThreads: 2, plans: new SavedPlansFile(plansFile), calibrationCacheDir: join(dir, 'calib') })

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-engine-quant-'))
  plansFile = join(dir, 'state', 'plans.json')
  engine = makeEngine()
  engine.onEvent((e) => events.push(e))
  modelId = (await engine.openModel({ path: DEFAULT })).modelId
  model = await openModel(DEFAULT)
})
afterAll(async () => {
  await engine?.close()
  await model?.close()
  await rm(dir, { recursive: true, force: true })
})

describe('listQuantMethods', () => {
  it('lists every registry method with params whose defaults and limits are the schema’s own', async () => {
    const methods = await engine.listQuantMethods()
    expect(methods.map((m) => m.id)).toEqual([...QUANT_METHODS.keys()])
    const rtn = methods.find((m) => m.id === 'rtn')!
    expect(rtn).toMatchObject({ bits: 4, needs: 'none' })
    expect(rtn.params).toEqual([
      { key: 'bits', type: 'integer', default: 4, min: 2, max: 8 },
      { key: 'group', type: 'integer', default: 128, min: 0 },
      { key: 'sym', type: 'boolean', default: false },
      { key: 'clip', type: 'enum', default: 'none', options: ['none', 'mse'] },
    ])
    expect(methods.find((m) => m.id === 'gptq')!.needs).toBe('gram')
    expect(methods.find((m) => m.id === 'any3')).toMatchObject({ bits: 3, needs: 'activation-stats' })
    for (const m of methods) {
      const schema = QUANT_METHODS.get(m.id)!.schema
      // The described defaults are what parsing gives (required params, default null, given their
      // first option); each limit is exactly where the schema starts refusing.
      const required = Object.fromEntries(m.params.filter((p) => p.default === null).map((p) => [p.key, p.options![0]]))
      expect(Object.fromEntries(m.params.map((p) => [p.key, p.default ?? required[p.key]]))).toEqual(v.parse(schema, required))
      for (const p of m.params.filter((q) => q.default === null)) expect(v.safeParse(schema, { ...required, [p.key]: undefined }).success).toBe(false)
      for (const p of m.params) {
        if (p.min !== undefined) {
          expect(v.safeParse(schema, { ...required, [p.key]: p.min }).success).toBe(true)
          expect(v.safeParse(schema, { ...required, [p.key]: p.min - (p.type === 'integer' ? 1 : 1e-9) }).success).toBe(false)
        }
        if (p.max !== undefined) expect(v.safeParse(schema, { ...required, [p.key]: p.max + 1 }).success).toBe(false)
        for (const o of p.options ?? []) expect(v.safeParse(schema, { ...required, [p.key]: o }).success).toBe(true)
        if (p.type === 'integer') expect(v.safeParse(schema, { ...required, [p.key]: (p.min ?? 0) + 1.5 }).success).toBe(false)
      }
    }
  })
})

describe('planSize', () => {
  it('the model summary reports the fingerprint plans carry', async () => {
    const summary = await engine.openModel({ path: DEFAULT })
    expect(summary.fingerprint).toBe(planFromSpec(model, 'nf4').model.fingerprint)
    await engine.closeModel({ modelId: summary.modelId })
  })

  it('gives the exact planned size; a plan that does not fit fails as a PlanError naming the tensor', async () => {
    const plan = planFromSpec(model, 'rtn:bits=4,group=128')
    const size = await engine.planSize({ modelId, plan })
    expect(size).toEqual(planSize(model, resolvePlanFor(model, plan, 'x')))
    expect(size.bitsPerWeight).toBe(4.25)

    const bad: Plan = { ...plan, tensors: { ...plan.tensors, [UP]: { method: 'rtn', params: { bits: 4, group: 100 } } } }
    const res = await dispatchRequest(engine, { id: 1, method: 'planSize', params: { modelId, plan: bad } })
    expect(res).toMatchObject({ ok: false, error: { name: 'PlanError', tensor: UP, problem: 'group 100 does not divide the row length 256', file: 'plan' } })

    const other = await dispatchRequest(engine, { id: 2, method: 'planSize', params: { modelId, plan: { ...plan, model: { name: 'x', fingerprint: 'f00' } } } })
    expect(!other.ok && other.error.message).toMatch(/^plan: made for another model \('x', fingerprint f00\)/)

    const schema = await dispatchRequest(engine, { id: 3, method: 'planSize', params: { modelId, plan: { ...plan, version: 2 } } })
    expect(schema).toMatchObject({ ok: false, error: { name: 'BadRequest' } })
  })
})

describe('quantizePreview', () => {
  it('rtn and nf4 side by side: metrics and levels equal the methods run here; progress and a finished event', async () => {
    const res = await engine.quantizePreview({
      jobId: 'qp-1',
      modelId,
      tensor: UP,
      methods: [{ methodId: 'rtn', params: { bits: 3, group: 64 } }, { methodId: 'nf4' }],
      row: 500,
      col: 200,
      bins: 32,
      heatmapSize: 8,
    })
    expect(res).toMatchObject({ tensor: UP, rows: 768, cols: 256, calibrationSeconds: 0 })
    expect(res.methods.map((m) => m.spec)).toEqual(['rtn:bits=3,group=64,sym=false,clip=none', 'nf4:group=64'])
    for (const p of res.methods) {
      const entry = resolvePlanFor(model, { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: '', fingerprint: '-' }, tensors: { [UP]: { method: p.methodId, params: p.params } } }, 'x', true)[0]!
      const weight = await readOrientedWeight(model, entry)
      const q = QUANT_METHODS.get(p.methodId)!.quantize(weight, 768, 256, entry.params)
      const m = quantErrorMetrics(weight, q)
      expect(p.metrics).toEqual({ ...m, sqnrDb: m.sqnrDb })
      expect(p.metrics.outputMse).toBeNull()
      expect(p.bytes).toBe(q.bytes)
      expect(p.bitsPerWeight).toBe((8 * q.bytes) / (768 * 256))
      expect(p.levels).toEqual({ row: 500, col: 200, group: { index: 3, col0: 192, col1: 256 }, values: Array.from(q.levels(500, 200)) })
      expect(p.errorHistogram.counts.reduce((a, b) => a + b, 0)).toBe(768 * 256)
      expect(p.errorHeatmap).toMatchObject({ rows: 8, cols: 8 })
    }
    expect(res.methods[0]!.levels.values).toHaveLength(8)
    expect(res.methods[1]!.levels.values).toHaveLength(16)
    const progress = events.filter((e) => e.type === 'job-progress' && e.jobId === 'qp-1')
    expect(progress.at(-1)).toMatchObject({ done: 2000, total: 2000, detail: { stage: 'quantizing' } })
    expect(events).toContainEqual({ type: 'job-finished', jobId: 'qp-1', outcome: 'done' })
  })

  it('GPTQ with 2 calibration windows: output MSE equals the metric on the same capture, run here', async () => {
    const res = await engine.quantizePreview({ jobId: 'qp-gptq', modelId, tensor: UP, methods: [{ methodId: 'gptq', params: { bits: 3, group: 64 } }], calibrationWindows: 2 })
    const p = res.methods[0]!
    const entries = resolvePlanFor(model, { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: '', fingerprint: '-' }, tensors: { [UP]: { method: 'gptq', params: { bits: 3, group: 64 } } } }, 'x', true)
    const calib = (await captureCalibration(model, entries, { maxWindows: 2, cacheDir: null })).get(UP)!
    const weight = await readOrientedWeight(model, entries[0]!)
    const q = QUANT_METHODS.get('gptq')!.quantize(weight, 768, 256, entries[0]!.params, calib)
    const m = quantErrorMetrics(weight, q, calib)
    expect(p.metrics.outputMse).not.toBeNull()
    expect(p.metrics.outputMse! / m.outputMse! - 1).toBeLessThan(1e-9)
    expect(p.metrics.mse).toBe(m.mse)
    expect(p.bytes).toBe(q.bytes)
    expect(events.some((e) => e.type === 'job-progress' && e.jobId === 'qp-gptq' && e.detail?.stage === 'calibrating')).toBe(true)
    // Asked again, the capture comes from the cache.
    const again = await engine.quantizePreview({ jobId: 'qp-gptq-2', modelId, tensor: UP, methods: [{ methodId: 'gptq', params: { bits: 3, group: 64 } }], calibrationWindows: 2 })
    expect(again.methods[0]!.metrics).toEqual(p.metrics)
    expect(again.calibrationSeconds).toBeLessThan(res.calibrationSeconds)
  }, 60_000)

  it('bad requests fail before any work; cancelJob stops a running preview', async () => {
    await expect(engine.quantizePreview({ jobId: 'qp-x', modelId, tensor: 'nope', methods: [{ methodId: 'rtn' }] })).rejects.toMatchObject({ name: 'NotFound' })
    await expect(engine.quantizePreview({ jobId: 'qp-x', modelId, tensor: UP, methods: [{ methodId: 'int5' }] })).rejects.toMatchObject({
      name: 'PlanError',
      tensor: UP,
      problem: expect.stringMatching(/^unknown method 'int5'/),
    })
    await expect(engine.quantizePreview({ jobId: 'qp-x', modelId, tensor: UP, methods: [{ methodId: 'rtn' }], row: 768 })).rejects.toMatchObject({ name: 'BadRequest' })

    const off = engine.onEvent((e) => {
      if (e.type === 'job-progress' && e.jobId === 'qp-cancel') void engine.cancelJob({ jobId: 'qp-cancel' })
    })
    const err = await engine
      .quantizePreview({ jobId: 'qp-cancel', modelId, tensor: UP, methods: [{ methodId: 'kmeans', params: { bits: 8, maxIter: 1000, tol: 0 } }] })
      .catch((e: unknown) => e)
    off()
    expect(err).toMatchObject({ name: 'AbortError' })
    expect(events).toContainEqual({ type: 'job-finished', jobId: 'qp-cancel', outcome: 'cancelled' })
  })
})

describe('saved plans', () => {
  it('save, replace, list newest first, delete; kept across a restart; a plan for another model is refused', async () => {
    const a = planFromSpec(model, 'rtn:bits=4,group=128')
    const b = planFromSpec(model, 'nf4:group=64')
    const first = await engine.savePlan({ modelId, name: 'int4', plan: a })
    expect(first).toMatchObject({ name: 'int4', modelPath: DEFAULT, plan: a })
    await new Promise((r) => setTimeout(r, 5))
    const second = await engine.savePlan({ modelId, name: 'nf4', plan: b })
    expect((await engine.listPlans({ modelId })).map((p) => p.name)).toEqual(['nf4', 'int4'])
    await new Promise((r) => setTimeout(r, 5))
    const renamed = await engine.savePlan({ modelId, id: first.id, name: 'int4 g128', plan: a })
    expect(renamed.id).toBe(first.id)
    expect((await engine.listPlans({ modelId })).map((p) => p.name)).toEqual(['int4 g128', 'nf4'])

    await expect(engine.savePlan({ modelId, name: 'x', plan: { ...a, model: { name: 'x', fingerprint: 'f00' } } })).rejects.toMatchObject({ name: 'PlanError' })

    const restarted = makeEngine()
    try {
      const id = (await restarted.openModel({ path: `${DEFAULT}/` })).modelId
      expect(await restarted.listPlans({ modelId: id })).toEqual(await engine.listPlans({ modelId }))
    } finally {
      await restarted.close()
    }
    expect(await engine.deletePlan({ modelId, planId: second.id })).toEqual({ deleted: true })
    expect(await engine.deletePlan({ modelId, planId: second.id })).toEqual({ deleted: false })
    expect((await engine.listPlans({ modelId })).map((p) => p.id)).toEqual([first.id])
  })

  it('two stores writing one file at once (two processes) lose no plan: the lock orders them', async () => {
    const file = join(dir, 'shared-plans.json')
    const plan = planFromSpec(model, 'nf4')
    const [a, b] = [new SavedPlansFile(file), new SavedPlansFile(file)]
    const saves = []
    for (let i = 0; i < 40; i++) {
      saves.push(a.save({ id: `a${i}`, name: `a${i}`, modelPath: '/m', savedAt: i, plan }))
      saves.push(b.save({ id: `b${i}`, name: `b${i}`, modelPath: '/m', savedAt: i, plan }))
    }
    await Promise.all(saves)
    expect((await a.list('/m')).length).toBe(80)
  })

  it('a corrupt plans file record is skipped with a warning, the good ones kept', async () => {
    const file = join(dir, 'other-plans.json')
    const good = { id: 'p1', name: 'ok', modelPath: '/m', savedAt: 1, plan: planFromSpec(model, 'nf4') }
    await writeFile(file, JSON.stringify({ version: 1, models: { '/m': [good, { ...good, id: 'p2', plan: { ...good.plan, format: 'other' } }] } }))
    const warnings: string[] = []
    const store = new SavedPlansFile(file, 500, (w) => warnings.push(w))
    expect(await store.list('/m')).toEqual([good])
    expect(warnings).toHaveLength(1)
    expect(warnings[0]).toContain('skipped plan 1 of /m')
  })
})

describe('plan variants', () => {
  it('evaluate: ppl equal to the inference service with the same plan; the run names the plan and records its size', async () => {
    const plan = planFromSpec(model, 'rtn:bits=3,group=64')
    const run = await engine.evaluate({ jobId: 'ev-plan', modelId, text: { kind: 'heldout' }, ctx: 256, maxWindows: 1, backend: 'wasm', variant: { kind: 'plan', plan } })
    const size = planSize(model, resolvePlanFor(model, plan, 'x'))
    expect(run).toMatchObject({ variantLabel: 'rtn:bits=3,group=64,sym=false,clip=none', bytes: size.bytes, bitsPerWeight: size.bitsPerWeight, variant: { kind: 'plan', plan } })
    const direct = await evalPerplexity(
      DEFAULT,
      { file: HELDOUT },
      {
        ctx: 256,
        maxWindows: 1,
        backend: 'wasm',
        threads: THREADS,
        variant: { overridesModule: { module: engineModuleUrl('plan-overrides'), exportName: 'createOverrides', options: { plan, source: 'test' } } },
      },
    )
    const base = await evalPerplexity(DEFAULT, { file: HELDOUT }, { ctx: 256, maxWindows: 1, backend: 'wasm', threads: THREADS })
    expect(Math.abs(run.ppl / direct.ppl - 1)).toBeLessThan(1e-9)
    expect(Math.abs(run.ppl / base.ppl - 1)).toBeGreaterThan(1e-4)
    // Kept with the model's runs, plan and all.
    expect((await engine.listRuns({ modelId }))[0]).toEqual(run)
  }, 120_000)

  it('generate: base and a named plan side by side', async () => {
    const plan = planFromSpec(model, 'nf4:group=64')
    const res = await engine.generate({
      jobId: 'gen-plan',
      modelId,
      prompt: 'The',
      maxTokens: 4,
      sampling: { kind: 'greedy' },
      variants: [
        { kind: 'listed', id: 'base' },
        { kind: 'plan', plan, name: 'my nf4' },
      ],
      backend: 'wasm',
    })
    expect(res.outputs.map((o) => o.label)).toEqual(['base', 'my nf4'])
    for (const o of res.outputs) expect(o.tokens).toBeGreaterThan(0)
    await expect(
      engine.generate({ jobId: 'gen-bad', modelId, prompt: 'The', maxTokens: 2, sampling: { kind: 'greedy' }, variants: [{ kind: 'plan', plan: { ...plan, model: { name: 'x', fingerprint: 'f' } } }] }),
    ).rejects.toMatchObject({ name: 'PlanError' })
  }, 120_000)
})
