/**
 * The API's activation and KV-cache quantization on the shipped qwen2-tiny model: an evaluate
 * with act/kv settings equals the inference service called the way `eval --act … --kv-bits …`
 * calls it (codebooks fitted by plan/act-codebooks.ts on the calibration text), the run records
 * the settings, old runs without them still load, bad settings fail early with readable
 * messages; the activation view's histograms count every captured value, its outlier share is
 * 2k/channels and its centroids are the evaluation's; the KV view's smoothed heatmap is
 * (x − δ)/s of the raw one per channel and lies in the calibration range; the KV sweep runs
 * only what is missing.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { resolve } from 'node:path'
import * as v from 'valibot'
import { EngineService } from '../../worker/api/engine-service'
import { evalPerplexity, generate } from '../../worker/inference/inference-service'
import { openModel } from '../../worker/formats/open-model'
import { kmeansActOptions } from '../../worker/plan/act-codebooks'
import { parseActivationSpec, type KMeansActParams } from '../../worker/quant/activations/spec'
import { parseApiParams } from '../../worker/api/parse-request'
import { evalRunSchema } from '../../worker/api/schemas'
import type { EvalRun } from '../../worker/api/contract'

const MODEL = resolve('resources/models/qwen2-tiny')
const HELDOUT = resolve('resources/eval/heldout.txt')
const THREADS = 2

describe('EngineService activation/KV quantization (qwen2-tiny)', () => {
  let engine: EngineService
  let modelId: string

  beforeAll(async () => {
    engine = new EngineService({ statsThreads: 1, inferenceThreads: THREADS })
    modelId = (await engine.openModel({ path: MODEL })).modelId
  })
  afterAll(async () => {
    await engine?.close()
  })

  it('evaluate with k-means A4 (2 outliers/side) and KV 3-bit past-only smoothed equals the CLI path', async () => {
    const run = await engine.evaluate({
      jobId: 'ak-1',
      modelId,
      text: { kind: 'heldout' },
      ctx: 128,
      maxWindows: 2,
      backend: 'wasm',
      act: { kind: 'kmeans', bits: 4, outliers: 2 },
      kv: { bits: 3, smooth: true, pastOnly: true },
    })
    // What runEval (worker/cli/eval.ts) does for `--act kmeans:bits=4,outliers=2 --kv-bits 3 --kv-smooth --kv-past-only`.
    const spec = parseActivationSpec('kmeans:bits=4,outliers=2')
    const opened = await openModel(MODEL)
    let act
    try {
      const { calibrationTokens, ...options } = await kmeansActOptions(opened, spec.params as KMeansActParams, { threads: THREADS })
      expect(calibrationTokens).toBe(run.act?.calibrationTokens)
      act = options
    } finally {
      await opened.close()
    }
    const direct = await evalPerplexity(MODEL, { file: HELDOUT }, { ctx: 128, maxWindows: 2, threads: THREADS, kv: { bits: 3, group: null, smooth: true, pastOnly: true }, act })
    expect(run.ppl).toBe(direct.ppl)
    expect(run.act).toEqual({ kind: 'kmeans', bits: 4, outliers: 2, norm: 'absmax-non-outlier', calibrationTokens: run.act!.calibrationTokens })
    expect(run.kv).toMatchObject({ bits: 3, group: null, smooth: true, pastOnly: true })
    expect(run.kv!.calibration!.tokens).toBeGreaterThan(0)
    // and quantization does something: not the full-precision perplexity
    const plain = await evalPerplexity(MODEL, { file: HELDOUT }, { ctx: 128, maxWindows: 2, threads: THREADS })
    expect(Math.abs(run.ppl / plain.ppl - 1)).toBeGreaterThan(1e-4)
    // the kept run parses back through the runs store's schema, settings included
    const parsed = v.parse(evalRunSchema, JSON.parse(JSON.stringify(run)))
    expect(parsed.act).toEqual(run.act)
    expect(parsed.kv).toEqual(run.kv)
  }, 180_000)

  it('evaluate with int A8 and naive KV 4-bit in groups of 16 equals the inference service', async () => {
    const run = await engine.evaluate({ jobId: 'ak-2', modelId, text: { kind: 'heldout' }, ctx: 128, maxWindows: 2, backend: 'wasm', act: { kind: 'int', bits: 8, outliers: 1 }, kv: { bits: 4, group: 16 } })
    const direct = await evalPerplexity(MODEL, { file: HELDOUT }, { ctx: 128, maxWindows: 2, threads: THREADS, kv: { bits: 4, group: 16, smooth: false, pastOnly: false }, act: { kind: 'int', bits: 8, outliers: 1 } })
    expect(run.ppl).toBe(direct.ppl)
    expect(run.act).toEqual({ kind: 'int', bits: 8, outliers: 1 })
    expect(run.kv).toEqual({ bits: 4, group: 16, smooth: false, pastOnly: false })
  }, 120_000)

  it('generate with int A6 and KV 3-bit past-only smoothed equals the inference service and echoes both; full precision differs', async () => {
    const prompt = 'The river'
    const params = { jobId: 'ak-gen', modelId, prompt, maxTokens: 12, sampling: { kind: 'greedy' as const }, variants: [{ kind: 'listed' as const, id: 'base' }], backend: 'wasm' as const }
    const kv = { bits: 3, group: null, smooth: true, pastOnly: true }
    const act = { kind: 'int' as const, bits: 6, outliers: 2 }
    const viaApi = await engine.generate({ ...params, kv: { bits: 3, smooth: true, pastOnly: true }, act })
    const direct = await generate(MODEL, prompt, { maxTokens: 12, temperature: 0, topP: 1, seed: 0, threads: THREADS, kv, act })
    expect(viaApi.outputs[0]!.text).toBe(direct.variants[0]!.text)
    expect(viaApi.kv).toMatchObject({ bits: 3, group: null, smooth: true, pastOnly: true })
    expect(viaApi.kv!.calibration!.tokens).toBeGreaterThan(0)
    expect(viaApi.act).toEqual({ kind: 'int', bits: 6, outliers: 2 })
    // 2-bit naive KV changes the greedy continuation of this prompt: the settings reach the graph.
    const coarse = await engine.generate({ ...params, kv: { bits: 2 } })
    const plain = await engine.generate(params)
    expect(plain.kv).toBeUndefined()
    expect(coarse.outputs[0]!.text).not.toBe(plain.outputs[0]!.text)
    await expect(engine.generate({ ...params, kv: { bits: 4, group: 24 } })).rejects.toThrow(/group 24 does not divide the head size 32/)
  }, 180_000)

  it('runs kept before act/kv existed still load', () => {
    const old = {
      id: 'r1', modelPath: MODEL, createdAt: 1, variant: { kind: 'listed', id: 'base' }, variantLabel: 'base', text: { kind: 'heldout' }, textLabel: 'held-out text',
      ctx: 256, maxWindows: 2, windows: 2, tokens: 512, textTokens: 9999, backend: 'wasm', threads: 2, ppl: 40, nll: 3.7, kld: null, seconds: 1, tokensPerSecond: 500,
    }
    const parsed = v.parse(evalRunSchema, old) as EvalRun
    expect(parsed.act).toBeUndefined()
    expect(parsed.kv).toBeUndefined()
  })

  it('refuses bad act/kv settings with messages naming the key', async () => {
    const base = { jobId: 'x', modelId, text: { kind: 'heldout' }, ctx: 128, backend: 'wasm' }
    expect(() => parseApiParams('evaluate', { ...base, act: { kind: 'int', bits: 4, norm: 'none' } })).toThrow(/'norm' goes with kind 'kmeans'/)
    expect(() => parseApiParams('evaluate', { ...base, act: { kind: 'kmeans', bits: 9 } })).toThrow(/k-means activations must be an integer in \[1, 8\]/)
    expect(() => parseApiParams('evaluate', { ...base, act: { kind: 'fp4', bits: 4 } })).toThrow(/act.kind.*int, kmeans/)
    expect(() => parseApiParams('evaluate', { ...base, kv: { bits: 1 } })).toThrow(/kv.bits.*\[2, 8\]/)
    expect(() => parseApiParams('evaluate', { ...base, act: { kind: 'int', bits: 4, calibrationWindows: 4 } })).toThrow(/'calibrationWindows' goes with kind 'kmeans'/)
    expect(() => parseApiParams('evaluate', { ...base, kv: { bits: 4, pastonly: true } })).toThrow(/pastonly/)
    await expect(engine.evaluate({ ...base, text: { kind: 'heldout' }, backend: 'wasm', kv: { bits: 4, group: 24 } })).rejects.toThrow(/group 24 does not divide the head size 32/)
    await expect(engine.evaluate({ ...base, text: { kind: 'heldout' }, backend: 'wasm', act: { kind: 'int', bits: 4, outliers: 64 } })).rejects.toThrow(/leaves nothing of a 128-value linear input/)
  })

  it('activationView: histograms count every captured value, outlier share 2k/channels, the evaluation centroids', async () => {
    const k = 3
    const view = await engine.activationView({ jobId: 'av-1', modelId, layer: 1, bits: 3, outliers: k, maxWindows: 2, bins: 64 })
    expect(view.inputs.map((i) => i.site)).toEqual(['attn_in', 'o_in', 'mlp_in', 'down_in'])
    const opened = await openModel(MODEL)
    let codebooks: Record<string, Float32Array>
    try {
      const fitted = await kmeansActOptions(opened, parseActivationSpec(`kmeans:bits=3,outliers=${k}`).params as KMeansActParams, { maxWindows: 2, threads: THREADS })
      if (fitted.kind !== 'kmeans') throw new Error('expected k-means options')
      codebooks = fitted.codebooks
    } finally {
      await opened.close()
    }
    for (const input of view.inputs) {
      expect(input.tokens).toBe(2 * 256)
      const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0)
      expect(sum(input.kmeans.inliers.counts) + sum(input.kmeans.outliers.counts)).toBe(input.tokens * input.channels)
      expect(sum(input.kmeans.outliers.counts)).toBe(input.tokens * 2 * k)
      expect(sum(input.int.inliers.counts)).toBe(input.tokens * (input.channels - 2 * k))
      expect(input.outlierShare.values).toBeCloseTo((2 * k) / input.channels, 12)
      expect(input.outlierShare.energy).toBeGreaterThan(input.outlierShare.values) // outliers are the largest values
      expect(input.outlierShare.energy).toBeLessThan(1)
      // absmax normalisation: inliers live in [−1, 1] and reach ±1
      expect(input.kmeans.inliers.lo).toBeGreaterThanOrEqual(-1)
      expect(input.kmeans.inliers.hi).toBeLessThanOrEqual(1)
      expect(Math.max(-input.kmeans.inliers.lo, input.kmeans.inliers.hi)).toBe(1)
      expect(input.kmeans.centroids).toEqual(Array.from(codebooks[input.id]!))
      expect(input.int.levels).toHaveLength(8)
      expect(input.topChannels[0]!.maxAbs).toBeGreaterThanOrEqual(input.topChannels.at(-1)!.maxAbs)
    }
    await expect(engine.activationView({ jobId: 'av-2', modelId, layer: 4 })).rejects.toThrow(/'layer' 4 does not exist \(qwen2-tiny has 4 layers, 0–3\)/)
  }, 180_000)

  it('kvView: smoothed = (raw − shift)/scale per channel, raw values inside the calibration range', async () => {
    // One calibration window of 256 tokens; the view shows its first 200 (same prefix, causal: same K/V).
    const view = await engine.kvView({ jobId: 'kv-1', modelId, layer: 2, kvHead: 1, tokens: 200, calibrationWindows: 1 })
    expect(view).toMatchObject({ layer: 2, kvHead: 1, headDim: 32, numKvHeads: 2, tokens: 200, calibration: { tokens: 256, windows: 1 } })
    for (const h of [view.key, view.value]) {
      expect(h.raw).toHaveLength(32)
      for (let c = 0; c < 32; c++) {
        expect(h.raw[c]).toHaveLength(200)
        for (let t = 0; t < 200; t++) {
          const x = h.raw[c]![t]!
          expect(Math.abs(h.smoothed[c]![t]! - (x - h.shift[c]!) / h.scale[c]!)).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(h.smoothed[c]![t]!)))
          // the range of the calibration window holds every value of its prefix: |x̃| ≤ 1
          expect(Math.abs(h.smoothed[c]![t]!)).toBeLessThanOrEqual(1 + 1e-4)
        }
      }
    }
    // memory: 2·layers·kvHeads·headDim·ctx·bits/8
    const i16 = view.memory.bits.indexOf(16)
    const c1k = view.memory.contexts.indexOf(1024)
    expect(view.memory.bytes[i16]![c1k]).toBe(2 * 4 * 2 * 32 * 1024 * 2)
    expect(view.memory.bytes[view.memory.bits.indexOf(3)]![c1k]).toBe(Math.ceil((2 * 4 * 2 * 32 * 1024 * 3) / 8))
    await expect(engine.kvView({ jobId: 'kv-2', modelId, layer: 0, kvHead: 2 })).rejects.toThrow(/'kvHead' 2 does not exist/)
  }, 120_000)

  it('kvSweep runs the missing bits × {naive, past-only, smoothed, both} once', async () => {
    const params = { jobId: 'sw-1', modelId, text: { kind: 'heldout' as const }, ctx: 64, maxWindows: 1, backend: 'wasm' as const, bits: [2] }
    const first = await engine.kvSweep(params)
    expect(first.existing).toBe(0)
    expect(first.runs.map((r) => [r.kv!.bits, r.kv!.smooth, r.kv!.pastOnly])).toEqual([
      [2, false, false],
      [2, false, true],
      [2, true, false],
      [2, true, true],
    ])
    const direct = await evalPerplexity(MODEL, { file: HELDOUT }, { ctx: 64, maxWindows: 1, threads: THREADS, kv: { bits: 2, group: null, smooth: false, pastOnly: true } })
    expect(first.runs[1]!.ppl).toBe(direct.ppl)
    const again = await engine.kvSweep({ ...params, jobId: 'sw-2' })
    expect(again).toEqual({ runs: [], existing: 4 })
  }, 180_000)
})
