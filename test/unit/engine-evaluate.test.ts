/**
 * The engine's evaluation API on the shipped qwen2-tiny model and held-out text: numbers equal
 * to the inference service called directly, progress in tokens with tokens/s, runs kept per
 * model across a restart, cancel, readable errors, side-by-side generation, argument checks.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { ApiEvent, EvalRun } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import type { VariantEntry } from '../../worker/api/evaluate-service'
import { evalPerplexity, generate } from '../../worker/inference/inference-service'
import { dispatchRequest } from '../../main/api-dispatcher'
import { EvalRunsFile } from '../../main/runs-store'

const MODEL = resolve('resources/models/qwen2-tiny')
const HELDOUT = resolve('resources/eval/heldout.txt')
const THREADS = 2
/** A stand-in for a quantized variant: one MLP weight scaled by 0.8 (test/helpers/scale-overrides.ts). */
const SCALED: VariantEntry = {
  id: 'scaled',
  label: 'down_proj × 0.8',
  description: 'test variant',
  spec: {
    overridesModule: { module: resolve('test/helpers/scale-overrides.ts'), options: { tensor: 'model.layers.1.mlp.down_proj.weight', factor: 0.8 } },
  },
}

describe('EngineService evaluation (qwen2-tiny, held-out text)', () => {
  let dir: string
  let runsFile: string
  let engine: EngineService
  let modelId: string
  const events: ApiEvent[] = []

  const makeEngine = (): EngineService =>
    new EngineService({ statsThreads: 1, inferenceThreads: THREADS, runs: new EvalRunsFile(runsFile), variants: () => [SCALED] })

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-engine-eval-'))
    runsFile = join(dir, 'state', 'eval-runs.json')
    engine = makeEngine()
    engine.onEvent((e) => events.push(e))
    // Opened by a path with a trailing slash: runs are still keyed by the absolute path.
    modelId = (await engine.openModel({ path: `${MODEL}/` })).modelId
  })

  afterAll(async () => {
    await engine?.close()
    await rm(dir, { recursive: true, force: true })
  })

  let baseRun: EvalRun

  it('evaluates 2 windows: ppl equal to the inference service, progress in tokens with tokens/s', async () => {
    baseRun = await engine.evaluate({ jobId: 'ev-1', modelId, text: { kind: 'heldout' }, ctx: 256, maxWindows: 2, backend: 'wasm' })
    const direct = await evalPerplexity(MODEL, { file: HELDOUT }, { ctx: 256, maxWindows: 2, backend: 'wasm', threads: THREADS })
    expect(Number.isFinite(baseRun.ppl)).toBe(true)
    expect(baseRun.ppl).toBeGreaterThan(1)
    expect(Math.abs(baseRun.ppl / direct.ppl - 1)).toBeLessThan(1e-9)
    expect(baseRun.nll).toBeCloseTo(direct.nll, 12)
    expect(baseRun).toMatchObject({
      modelPath: MODEL,
      variant: { kind: 'listed', id: 'base' },
      variantLabel: 'base',
      text: { kind: 'heldout' },
      textLabel: 'held-out text',
      ctx: 256,
      maxWindows: 2,
      windows: 2,
      tokens: 512,
      textTokens: direct.textTokens,
      backend: 'wasm',
      threads: THREADS,
      kld: null,
    })
    const progress = events.filter((e): e is Extract<ApiEvent, { type: 'job-progress' }> => e.type === 'job-progress' && e.jobId === 'ev-1')
    expect(progress.some((p) => p.detail?.stage === 'loading')).toBe(true)
    const last = progress.at(-1)!
    expect(last).toMatchObject({ done: 512, total: 512, detail: { stage: 'evaluating' } })
    expect(last.detail!.tokensPerSecond).toBeGreaterThan(0)
    expect(Math.abs(last.detail!.ppl! / direct.ppl - 1)).toBeLessThan(1e-9)
    expect(events).toContainEqual({ type: 'job-finished', jobId: 'ev-1', outcome: 'done' })
  })

  it('measures KLD of a variant against the base: ΔPPL and base ppl consistent with the base run', async () => {
    const run = await engine.evaluate({
      jobId: 'ev-kld',
      modelId,
      text: { kind: 'heldout' },
      ctx: 256,
      maxWindows: 2,
      backend: 'wasm',
      kld: true,
      variant: { kind: 'listed', id: 'scaled' },
    })
    expect(run.variantLabel).toBe('down_proj × 0.8')
    const k = run.kld!
    expect(Math.abs(k.basePpl / baseRun.ppl - 1)).toBeLessThan(1e-6)
    expect(k.deltaPpl).toBeCloseTo(run.ppl - k.basePpl, 9)
    expect(run.ppl).not.toBeCloseTo(baseRun.ppl, 3)
    expect(k.mean).toBeGreaterThan(0)
    expect(k.p99).toBeGreaterThanOrEqual(k.median)
    expect(k.top1).toBeGreaterThan(0.5)
    expect(k.top1).toBeLessThanOrEqual(1)
  })

  it('keeps runs per model path, newest first, across an engine restart', async () => {
    const listed = await engine.listRuns({ modelId })
    expect(listed.map((r) => r.variantLabel)).toEqual(['down_proj × 0.8', 'base'])
    expect(listed[1]).toEqual(baseRun)

    const doc = JSON.parse(await readFile(runsFile, 'utf8')) as { models: Record<string, EvalRun[]> }
    expect(Object.keys(doc.models)).toEqual([MODEL])

    const restarted = makeEngine()
    try {
      const again = await restarted.openModel({ path: MODEL })
      expect(await restarted.listRuns({ modelId: again.modelId })).toEqual(listed)
    } finally {
      await restarted.close()
    }
    // Another model has its own (empty) list.
    const other = await engine.openModel({ path: resolve('resources/models/default') })
    expect(await engine.listRuns({ modelId: other.modelId })).toEqual([])
    await engine.closeModel({ modelId: other.modelId })
  })

  it('cancels a long evaluation through cancelJob', async () => {
    const started = performance.now()
    const off = engine.onEvent((e) => {
      if (e.type === 'job-progress' && e.jobId === 'ev-cancel' && e.detail?.stage === 'evaluating') void engine.cancelJob({ jobId: 'ev-cancel' })
    })
    // The whole held-out text: hundreds of windows, stopped after the first batch.
    const err = await engine
      .evaluate({ jobId: 'ev-cancel', modelId, text: { kind: 'heldout' }, ctx: 256, backend: 'wasm' })
      .catch((e: unknown) => e)
    off()
    expect(err).toMatchObject({ name: 'AbortError' })
    expect(performance.now() - started).toBeLessThan(30_000)
    expect(events).toContainEqual({ type: 'job-finished', jobId: 'ev-cancel', outcome: 'cancelled' })
    expect((await engine.listRuns({ modelId })).length).toBe(2)
  })

  it('explains a text shorter than one window, as the UI receives it', async () => {
    const short = join(dir, 'short.txt')
    await writeFile(short, 'def f(x):\n    return x\n')
    const response = await dispatchRequest(engine, {
      id: 7,
      method: 'evaluate',
      params: { jobId: 'ev-short', modelId, text: { kind: 'file', path: short }, ctx: 256, backend: 'wasm' },
    })
    expect(response.ok).toBe(false)
    if (response.ok) return
    expect(response.error.name).toBe('InferenceInputError')
    expect(response.error.message).toMatch(/^the text has \d+ tokens, fewer than one window of ctx = 256 tokens/)

    const missing = await dispatchRequest(engine, {
      id: 8,
      method: 'evaluate',
      params: { jobId: 'ev-missing', modelId, text: { kind: 'file', path: join(dir, 'nope.txt') }, ctx: 256, backend: 'wasm' },
    })
    expect(missing).toMatchObject({ ok: false, error: { name: 'InferenceInputError' } })
    expect(!missing.ok && missing.error.message).toContain('cannot read the text file')

    await expect(
      engine.evaluate({ jobId: 'ev-variant', modelId, text: { kind: 'heldout' }, ctx: 256, backend: 'wasm', variant: { kind: 'listed', id: 'int3' } }),
    ).rejects.toMatchObject({ name: 'NotFound', message: "model qwen2-tiny has no variant 'int3'" })
  })

  it('generates greedily with two variants side by side, equal to the inference service', async () => {
    const prompt = 'def main():\n'
    const res = await engine.generate({
      jobId: 'gen-1',
      modelId,
      prompt,
      maxTokens: 8,
      sampling: { kind: 'greedy' },
      variants: [
        { kind: 'listed', id: 'base' },
        { kind: 'listed', id: 'scaled' },
      ],
      backend: 'wasm',
    })
    const direct = await generate(MODEL, prompt, { maxTokens: 8, backend: 'wasm', threads: THREADS })
    expect(res.outputs.map((o) => o.label)).toEqual(['base', 'down_proj × 0.8'])
    expect(res.outputs[0]!.text).toBe(direct.variants[0]!.text)
    expect(res.outputs[0]!.tokens).toBe(direct.variants[0]!.ids.length)
    expect(res.promptTokens).toBe(direct.promptIds.length)
    for (const o of res.outputs) {
      expect(o.tokens).toBeGreaterThan(0)
      expect(o.tokens).toBeLessThanOrEqual(8)
      expect(o.tokensPerSecond).toBeGreaterThan(0)
    }
    const streamed = events.filter((e) => e.type === 'job-progress' && e.jobId === 'gen-1' && e.detail?.stage === 'generating')
    expect(streamed.length).toBeGreaterThan(0)
    expect(events).toContainEqual({ type: 'job-finished', jobId: 'gen-1', outcome: 'done' })
  })

  it('lists the backends and variants', async () => {
    const backends = await engine.listBackends()
    expect(backends.map((b) => b.id)).toEqual(['wasm', 'native'])
    expect(backends[0]!.available).toBe(true)
    expect(typeof backends[1]!.available).toBe('boolean')
    const variants = await engine.listVariants({ modelId })
    expect(variants.map((v) => v.id)).toEqual(['base', 'scaled'])
    expect(variants[0]!.description).toContain('F16')
  })
})

describe('EvalRunsFile', () => {
  const runOf = (modelPath: string, i: number): EvalRun => ({
    id: `r${i}`,
    modelPath,
    createdAt: 1000 + i,
    variant: { kind: 'listed', id: 'base' },
    variantLabel: 'base',
    text: { kind: 'heldout' },
    textLabel: 'held-out text',
    ctx: 256,
    maxWindows: 2,
    windows: 2,
    tokens: 512,
    textTokens: 99_000,
    backend: 'wasm',
    threads: 2,
    ppl: 10 + i,
    nll: Math.log(10 + i),
    kld: null,
    seconds: 1,
    tokensPerSecond: 500,
  })

  it('survives a corrupt file, keeps models apart and drops the oldest beyond its limit', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'qs-runs-'))
    try {
      const file = join(dir, 'eval-runs.json')
      await writeFile(file, '{"models": {"/a": [ {"id": 1} ], ')
      const store = new EvalRunsFile(file, 3)
      expect(await store.list('/a')).toEqual([])
      // Two runs finishing at once: both kept (writes are chained).
      await Promise.all([store.add(runOf('/a', 1)), store.add(runOf('/b/', 2))])
      for (const i of [3, 4, 5]) await store.add(runOf('/a', i))
      expect((await store.list('/a')).map((r) => r.id)).toEqual(['r5', 'r4', 'r3'])
      expect((await new EvalRunsFile(file).list('/b')).map((r) => r.id)).toEqual(['r2'])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
