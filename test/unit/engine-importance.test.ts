/**
 * The engine's layerImportance job on the default model: its LSAQ and cosine (computed on an
 * importance worker thread) equal worker/importance's direct computation on the same windows,
 * its measured sensitivity equals measureSensitivity's, and its Spearman ρ equals rank-math's
 * on the direct numbers; progress comes per stage; cancel stops it with a 'cancelled' outcome;
 * bad requests fail early with a message naming the key, spec or file.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { ApiEvent } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import { parseApiParams } from '../../worker/api/parse-request'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { computeLayerImportance } from '../../worker/importance/layer-importance'
import { spearman } from '../../worker/importance/rank-math'
import { measureSensitivity } from '../../worker/importance/sensitivity'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'

const MODEL = resolve('resources/models/default')
const HELDOUT = resolve('resources/eval/heldout.txt')
const THREADS = 2

describe('EngineService layerImportance (default model)', () => {
  let dir: string
  let engine: EngineService
  let modelId: string
  let model: OpenedModel
  let ids: number[]
  const events: ApiEvent[] = []

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-engine-importance-'))
    engine = new EngineService({ statsThreads: 1, inferenceThreads: THREADS, importanceCacheDir: null, calibrationCacheDir: null })
    engine.onEvent((e) => events.push(e))
    modelId = (await engine.openModel({ path: MODEL })).modelId
    model = await openModel(MODEL)
    ids = await tokensOf({ file: HELDOUT }, () => openTokenizer(model))
  })

  afterAll(async () => {
    await model?.close()
    await engine?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('LSAQ and cosine on 2 windows equal the direct computation, with their Spearman ρ', async () => {
    const jobId = 'imp-1'
    const r = await engine.layerImportance({ jobId, modelId, text: { kind: 'heldout' }, methods: ['lsaq', 'cosine'], k: 10, finalNorm: true, maxWindows: 2 })
    const direct = await computeLayerImportance(model, ids, { lsaq: { k: 10, finalNorm: true }, cosine: true, maxWindows: 2, threads: THREADS })
    expect(r.layers).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
    expect(r.series.map((s) => s.method)).toEqual(['lsaq', 'cosine'])
    expect(r.series[0]!.values).toEqual(direct.lsaq)
    expect(r.series[1]!.values).toEqual(direct.cosine)
    // Not a degenerate result: the layers differ, so the ranks mean something.
    expect(new Set(direct.lsaq).size).toBe(8)
    expect(r.spearman).toEqual([{ a: 'lsaq', b: 'cosine', rho: spearman(direct.lsaq!, direct.cosine!), n: 8 }])
    expect(r).toMatchObject({ k: 10, finalNorm: true, ctx: 256, windows: 2, tokens: 512, textLabel: 'held-out text', sensitivity: null })

    const stages = events.filter((e) => e.type === 'job-progress' && e.jobId === jobId).map((e) => (e.type === 'job-progress' ? e.detail?.stage : null))
    expect(stages).toContain('loading')
    const evaluating = events.filter((e) => e.type === 'job-progress' && e.jobId === jobId && e.detail?.stage === 'evaluating')
    expect(evaluating.at(-1)).toMatchObject({ done: 2, total: 2 })
    expect(events.some((e) => e.type === 'job-finished' && e.jobId === jobId && e.outcome === 'done')).toBe(true)
  })

  it('the final-norm toggle and k reach the lens (a different LSAQ, the same as computed directly)', async () => {
    const r = await engine.layerImportance({ jobId: 'imp-2', modelId, text: { kind: 'heldout' }, methods: ['lsaq'], k: 5, finalNorm: false, maxWindows: 1 })
    const direct = await computeLayerImportance(model, ids, { lsaq: { k: 5, finalNorm: false }, maxWindows: 1, threads: THREADS })
    expect(r.series[0]!.values).toEqual(direct.lsaq)
    expect(r.spearman).toEqual([])
    expect(r).toMatchObject({ k: 5, finalNorm: false, windows: 1 })
  })

  it('measured sensitivity equals measureSensitivity (ΔKLD per block), ranked against cosine', async () => {
    const spec = 'rtn:bits=3,group=128'
    const r = await engine.layerImportance({ jobId: 'imp-3', modelId, text: { kind: 'heldout' }, methods: ['sensitivity', 'cosine'], quant: spec, maxWindows: 1 })
    // The same base log-probs as the job's (the KL cache, 2 bytes per logit: with 'off' ΔKLD differs by ~2e-4 relative).
    const direct = await measureSensitivity(model, ids, { spec, maxWindows: 1, threads: THREADS, cacheDir: null })
    const cos = await computeLayerImportance(model, ids, { cosine: true, maxWindows: 1, threads: THREADS })
    const dk = direct.blocks.map((b) => b.deltaKld)
    expect(r.series[0]!.values).toHaveLength(8)
    // The job reads its base log-probs from the KL cache (2 bytes per logit) when an earlier run
    // filled it, the direct call computes them: in a clean CI run the two differed by 4.5e-5
    // relative, so blocks agree to 5e-4 relative (a wrong block or spec moves ΔKLD by > 10 %).
    r.series[0]!.values.forEach((v, l) => expect(Math.abs(v! / dk[l]! - 1)).toBeLessThan(5e-4))
    expect(r.sensitivity!.spec).toBe(spec)
    expect(r.sensitivity!.basePpl).toBeCloseTo(direct.basePpl, 9)
    expect(r.sensitivity!.cached).toBe(false)
    expect(r.spearman[0]!.rho).toBeCloseTo(spearman(dk, cos.cosine!)!, 12)
    expect(events.some((e) => e.type === 'job-progress' && e.jobId === 'imp-3' && e.detail?.stage === 'measuring' && e.done === 8)).toBe(true)
  })

  it('cancel stops the job: it rejects as cancelled and finishes with outcome cancelled', async () => {
    const jobId = 'imp-cancel'
    const seen = new Promise<void>((ok) => {
      const off = engine.onEvent((e) => {
        if (e.type === 'job-progress' && e.jobId === jobId) {
          off()
          ok()
        }
      })
    })
    const t0 = performance.now()
    // Every window of the text: far longer than the test waits.
    const p = engine.layerImportance({ jobId, modelId, text: { kind: 'heldout' }, methods: ['lsaq', 'cosine'] })
    const outcome = p.then(
      () => 'finished',
      (err: Error) => err.name,
    )
    // A job that failed before any progress must fail this test, not hang it.
    await Promise.race([seen, outcome.then((o) => Promise.reject(new Error(`the job ended (${o}) before its first progress`)))])
    expect(await engine.cancelJob({ jobId })).toEqual({ cancelled: true })
    expect(await outcome).toBe('AbortError')
    expect(performance.now() - t0).toBeLessThan(20_000)
    expect(events.some((e) => e.type === 'job-finished' && e.jobId === jobId && e.outcome === 'cancelled')).toBe(true)
    expect(await engine.cancelJob({ jobId })).toEqual({ cancelled: false })
  })

  it('bad requests fail early, naming the key, the spec or the file', async () => {
    const base = { jobId: 'bad', modelId, text: { kind: 'heldout' as const } }
    expect(() => parseApiParams('layerImportance', { ...base, methods: [] })).toThrow(/'methods' must be a list of 1 to 4 different methods/)
    expect(() => parseApiParams('layerImportance', { ...base, methods: ['lsaq', 'lsaq'] })).toThrow(/'methods' must be a list of 1 to 4 different methods/)
    expect(() => parseApiParams('layerImportance', { ...base, methods: ['shortgpt'] })).toThrow(/must be one of lsaq, cosine, sensitivity, local/)
    expect(() => parseApiParams('layerImportance', { ...base, methods: ['lsaq'], k: 0 })).toThrow(/'k' must be an integer in \[1, 1024\]/)
    await expect(engine.layerImportance({ ...base, methods: ['sensitivity'] })).rejects.toThrow(/needs 'quant'.*rtn:bits=3,group=128/)
    await expect(engine.layerImportance({ ...base, methods: ['lsaq'], quant: 'rtn:bits=4' })).rejects.toThrow(/'quant' goes with the 'sensitivity' and 'local' methods only/)
    await expect(engine.layerImportance({ ...base, methods: ['cosine'], k: 5 })).rejects.toThrow(/'k' and 'finalNorm' go with the 'lsaq' method/)
    await expect(engine.layerImportance({ ...base, methods: ['lsaq'], k: 9000 })).rejects.toThrow(/k = 9000 exceeds the vocabulary \(8192 tokens\)/)
    await expect(engine.layerImportance({ ...base, methods: ['sensitivity'], quant: 'nosuch:bits=3' })).rejects.toThrow(/nosuch/)
    await expect(engine.layerImportance({ ...base, methods: ['sensitivity'], quant: 'rtn:bits=99' })).rejects.toThrow(/bits/)
    const missing = join(dir, 'missing.txt')
    await expect(engine.layerImportance({ ...base, text: { kind: 'file', path: missing }, methods: ['lsaq'] })).rejects.toThrow(new RegExp(`${missing}.*does not exist`))
    // Too short for one window: refused in the worker, the error's name and message kept.
    const short = join(dir, 'short.txt')
    await writeFile(short, 'Too short.')
    const err = await engine.layerImportance({ ...base, jobId: 'short', text: { kind: 'file', path: short }, methods: ['lsaq'] }).catch((e: Error) => e)
    expect((err as Error).name).toBe('InferenceInputError')
    expect((err as Error).message).toMatch(/token/)
    await expect(engine.layerImportance({ ...base, modelId: 'm999', methods: ['lsaq'] })).rejects.toThrow(/no open model with id 'm999'/)
  })
})
