/**
 * "Beat llama.cpp's own mixes" (issue 11) on the default model. The fixtures
 * (test/fixtures/allocation/, written by scripts/allocation-vs-llamacpp.ts) hold the per-tensor
 * ΔKLD table measured on the calibration text and the optimal allocator's plans at exactly the
 * GGUF data-section bytes of llama-quantize's Q3_K_M, Q2_K and Q4_K_M mixes. Here:
 * (a) the allocator, run on the stored table and budget, reproduces each fixture plan exactly
 *     (the fixture is its output, not an edited file), and the budget is the preset's size as
 *     the memory model computes it now;
 * (b) the GGUF export of our Q3_K_M-sized plan is no larger than the preset's (data section and
 *     whole file);
 * (c) llama.cpp itself (node-llama-cpp, CPU) measures a lower KL divergence against its own F16
 *     export for our GGUF than for the preset's on held-out windows (never the calibration text
 *     the ΔKLD came from). Perplexity on so few windows is not a reliable ranking (see below).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Llama } from 'node-llama-cpp'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { loadTokenizer } from '../../worker/model/tokenizer'
import { allocate, allocationTargets, parseOptionSpecs } from '../../worker/plan/allocate'
import { resolvePlanFor } from '../../worker/plan/apply'
import { planFromLlamaCppPreset } from '../../worker/plan/llama-cpp-presets'
import { memoryModel } from '../../worker/plan/memory-model'
import { parsePlan, type Plan } from '../../worker/plan/plan'
import { planWindows } from '../../worker/inference/perplexity'
import { runExport } from '../../worker/export/run-export'
import { llamaCppNll, openLlama } from '../helpers/llama-cpp-perplexity'

const DEFAULT = join(__dirname, '../../resources/models/default')
const HELDOUT = join(__dirname, '../../resources/eval/heldout.txt')
const FIXTURES = join(__dirname, '../fixtures/allocation')
const CTX = 256
/** Held-out windows llama.cpp evaluates here (the README has more). */
const WINDOWS = 4

interface SensitivityFixture {
  measuredOn: { text: string; ctx: number; windows: number }
  options: string
  table: Record<string, Record<string, number>>
}

let model: OpenedModel
let fixture: SensitivityFixture
let presetBytes: Record<string, number>
let dir: string

beforeAll(async () => {
  model = await openModel(DEFAULT)
  fixture = JSON.parse(await readFile(join(FIXTURES, 'sensitivity-ggml-k.json'), 'utf8')) as SensitivityFixture
  presetBytes = (JSON.parse(await readFile(join(FIXTURES, 'presets.json'), 'utf8')) as { ggufDataBytes: Record<string, number> }).ggufDataBytes
  dir = await mkdtemp(join(tmpdir(), 'qs-alloc-llamacpp-'))
})
afterAll(async () => {
  await model?.close()
  if (dir) await rm(dir, { recursive: true, force: true })
})

async function fixturePlan(preset: string): Promise<Plan> {
  const path = join(FIXTURES, `optimal-${preset}.plan.json`)
  return parsePlan(await readFile(path, 'utf8'), path)
}

describe('optimal allocation vs llama.cpp presets (default model, GGUF)', () => {
  it('the ΔKLD table covers every tensor llama-quantize quantizes at every K type, measured off the held-out text', () => {
    const options = parseOptionSpecs(fixture.options)
    const targets = allocationTargets(model, true)
    expect(targets).toHaveLength(58) // 8 blocks × 7 linears, the embedding and the untied output
    for (const t of targets) for (const o of options) expect(fixture.table[t.name]?.[o.spec], `${t.name} ${o.spec}`).toBeGreaterThan(0)
    expect(fixture.measuredOn.text).toBe('resources/eval/calibration.txt')
    // More bits never cost more in the table's own measurements of the two largest tensors.
    for (const name of ['model.embed_tokens.weight', 'lm_head.weight']) {
      const row = options.map((o) => fixture.table[name]![o.spec]!)
      for (let i = 1; i < row.length; i++) expect(row[i]).toBeGreaterThan(row[i - 1]!)
    }
  })

  for (const preset of ['Q3_K_M', 'Q2_K', 'Q4_K_M']) {
    it(`${preset}: the budget is the preset's GGUF data section and the allocator reproduces the fixture plan`, async () => {
      const memory = { format: 'gguf' as const, kv: null }
      const bytes = memoryModel(model, resolvePlanFor(model, planFromLlamaCppPreset(model, preset), preset), memory).total
      expect(presetBytes[preset]).toBe(bytes)
      const costs = new Map(Object.entries(fixture.table).map(([t, row]) => [t, new Map(Object.entries(row))]))
      const r = allocate({ model, allocator: 'optimal', budget: { kind: 'bytes', bytes, text: String(bytes) }, options: parseOptionSpecs(fixture.options), memory, allTensors: true, costs })
      expect(r.exact).toBe(true)
      expect(r.bytes.total).toBeLessThanOrEqual(bytes)
      expect(r.plan).toEqual(await fixturePlan(preset))
    })
  }

  describe('Q3_K_M exported and run by llama.cpp', () => {
    let llama: Llama
    beforeAll(async () => {
      llama = await openLlama()
    })
    afterAll(async () => {
      await llama?.dispose()
    })

    it('ours is no larger than the preset (data section and file) and llama.cpp measures a lower KLD against its F16 model', async () => {
      const preset = planFromLlamaCppPreset(model, 'Q3_K_M')
      const ours = await fixturePlan('Q3_K_M')
      // Nothing planned: every matrix F16, the reference llama.cpp's KLD is taken against.
      const f16: Plan = { ...preset, description: 'F16', tensors: {} }
      const out = (name: string) => join(dir, `${name}.gguf`)
      const a = await runExport({ model, modelPath: DEFAULT, plan: preset, planSource: 'preset Q3_K_M', format: 'gguf', out: out('preset') })
      const b = await runExport({ model, modelPath: DEFAULT, plan: ours, planSource: 'optimal at Q3_K_M', format: 'gguf', out: out('optimal') })
      await runExport({ model, modelPath: DEFAULT, plan: f16, planSource: 'F16', format: 'gguf', out: out('f16') })
      const data = (s: Record<string, number>) => Object.entries(s).reduce((acc, [k, v]) => acc + (k === 'metadata' ? 0 : v), 0)
      expect(data(a.sections)).toBe(presetBytes.Q3_K_M)
      expect(data(b.sections)).toBeLessThanOrEqual(data(a.sections))
      expect(b.sections.fallback ?? 0).toBe(0) // every tensor written as the planned ggml type
      expect((await stat(out('optimal'))).size).toBeLessThanOrEqual((await stat(out('preset'))).size)

      const ids = (await loadTokenizer(join(DEFAULT, 'tokenizer.json'))).encode(await readFile(HELDOUT, 'utf8'))
      const windows = planWindows(ids, CTX, WINDOWS)
      const vocab = model.config!.vocabSize
      const base = await llamaCppNll(llama, out('f16'), windows, { vocab, keepProbabilities: true })
      const p = await llamaCppNll(llama, out('preset'), windows, { vocab, base: base.probabilities })
      const o = await llamaCppNll(llama, out('optimal'), windows, { vocab, base: base.probabilities })
      console.info(
        `llama.cpp on ${WINDOWS} held-out windows: F16 ppl ${Math.exp(base.nll).toFixed(4)}; preset Q3_K_M ppl ${Math.exp(p.nll).toFixed(4)} KLD ${p.kld!.toFixed(5)}; optimal ppl ${Math.exp(o.nll).toFixed(4)} KLD ${o.kld!.toFixed(5)}`,
      )
      // KLD, not perplexity: on a few windows perplexity moves with the text as much as with the
      // quantization (on these 4 windows the preset's ppl is 0.6 % lower, on 32 ours is 1.2 % lower;
      // README). KLD against the F16 model measures the quantization alone.
      expect(o.kld!).toBeLessThan(p.kld!)
    }, 240_000)
  })
})
