import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { readFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { loadTokenizer, type TextTokenizer } from '../../worker/model/tokenizer'
import { DecoderSession } from '../../worker/inference/session'
import { generateTokens } from '../../worker/inference/generate'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { nativeBackendAvailable } from '../../worker/inference/ort-backend'
import type { WeightOverrides } from '../../worker/inference/weights'
import { rtnInt4 } from '../helpers/rtn-int4'

/**
 * The shipped reference models against the numbers transformers computed for them
 * (test/fixtures/reference/reference.json, made by resources/models/train/make_reference.py):
 * logits of three prompts, per-window NLL and perplexity of the held-out text, greedy
 * continuations, and the int4 round-to-nearest variant through weight overrides.
 */
interface ModelReference {
  path: string
  ppl: Record<string, number>
  window_nll: Record<string, number[]>
  greedy_fp32: { new_ids: number[] }[]
  logits: { file: string; tensors: string[] }
}
interface Reference {
  heldout: { file: string; tokens: number; windows: number; first_ids: number[] }
  prompts: { text: string; ids: number[] }[]
  protocol: { window: number }
  models: Record<'default' | 'qwen2-tiny', ModelReference>
}

const FIXTURE = resolve('test/fixtures/reference/reference.json')
let ref: Reference
let tokenizer: TextTokenizer
let heldoutIds: number[]
const models = new Map<string, OpenedModel>()

beforeAll(async () => {
  ref = JSON.parse(await readFile(FIXTURE, 'utf8')) as Reference
  for (const key of ['default', 'qwen2-tiny'] as const) models.set(key, await openModel(resolve(ref.models[key].path)))
  tokenizer = await loadTokenizer(models.get('default')!.tokenizerPath!)
  heldoutIds = tokenizer.encode(await readFile(resolve(ref.heldout.file), 'utf8'))
})
afterAll(async () => {
  for (const m of models.values()) await m.close()
})

const CTX = 256

describe('tokenization matches the reference', () => {
  it('held-out text and prompts give the ids transformers used', () => {
    expect(heldoutIds.length).toBe(ref.heldout.tokens)
    expect(heldoutIds.slice(0, 32)).toEqual(ref.heldout.first_ids)
    for (const p of ref.prompts) expect(tokenizer.encode(p.text)).toEqual(p.ids)
  })
})

describe.each(['default', 'qwen2-tiny'] as const)('%s model vs transformers (fp32)', (key) => {
  it('logits of the three prompts within 1e-3 absolute', async () => {
    const m = ref.models[key]
    const fixture = await openModel(resolve(m.logits.file))
    const session = await DecoderSession.create(models.get(key)!, { threads: 2, graph: { logits: 'all', maxPositions: 64 } })
    try {
      let worst = 0
      for (let i = 0; i < ref.prompts.length; i++) {
        const ids = ref.prompts[i]!.ids
        const expected = await fixture.readRows(m.logits.tensors[i]!, 0, ids.length)
        const got = (await session.forward({ tokens: ids })).outputs.logits!.data as Float32Array
        expect(got.length).toBe(expected.length)
        for (let j = 0; j < got.length; j++) worst = Math.max(worst, Math.abs(got[j]! - expected[j]!))
      }
      expect(worst).toBeLessThan(1e-3)
    } finally {
      await session.release()
      await fixture.close()
    }
  })

  it('per-window NLL of the first 16 held-out windows and their perplexity', async () => {
    const m = ref.models[key]
    const res = await evaluatePerplexity(models.get(key)!, heldoutIds, { ctx: CTX, maxWindows: 16, threads: 2 })
    const expected = m.window_nll.fp32.slice(0, 16)
    for (let w = 0; w < 16; w++) expect(Math.abs(res.windowNll[w]! - expected[w]!)).toBeLessThan(2e-5)
    const refPpl = Math.exp(expected.reduce((a, b) => a + b, 0) / 16)
    expect(Math.abs(res.ppl / refPpl - 1)).toBeLessThan(1e-4)
  })

  it('greedy continuations with the KV cache equal transformers\' (12 tokens per prompt)', async () => {
    const m = ref.models[key]
    const session = await DecoderSession.create(models.get(key)!, { threads: 2, graph: { kvCache: true, logits: 'last', maxPositions: 64 } })
    try {
      for (let i = 0; i < ref.prompts.length; i++) {
        const res = await generateTokens(session, ref.prompts[i]!.ids, { maxTokens: 12 })
        expect(res.ids).toEqual(m.greedy_fp32[i]!.new_ids)
      }
    } finally {
      await session.release()
    }
  })

  it('int4 round-to-nearest (group 128) as weight overrides: the reference variant\'s NLL', async () => {
    const model = models.get(key)!
    const overrides = new Map<string, Float32Array>()
    for (const t of model.tensors) {
      if (!/\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/.test(t.name)) continue
      const [rows, cols] = t.shape as [number, number]
      overrides.set(t.name, rtnInt4(await model.readRows(t.name, 0, rows), cols, 128))
    }
    expect(overrides.size).toBe(7 * model.config!.numLayers)
    const res = await evaluatePerplexity(model, heldoutIds, { ctx: CTX, maxWindows: 16, threads: 2, overrides: overrides as WeightOverrides })
    const expected = ref.models[key].window_nll.int4_rtn_g128!.slice(0, 16)
    for (let w = 0; w < 16; w++) expect(Math.abs(res.windowNll[w]! - expected[w]!)).toBeLessThan(1e-4)
    // …and it differs from fp32 by more than that, so the overrides really took effect.
    const fp32 = ref.models[key].window_nll.fp32.slice(0, 16)
    expect(Math.max(...expected.map((v, w) => Math.abs(v - fp32[w]!)))).toBeGreaterThan(1e-3)
  })
})

describe('full held-out perplexity', () => {
  it('default model: all 388 windows within 0.5% of transformers (native backend; WASM where it is missing)', async () => {
    const native = await nativeBackendAvailable()
    const res = await evaluatePerplexity(models.get('default')!, heldoutIds, {
      ctx: CTX,
      threads: 2,
      backend: native.available ? 'native' : 'wasm',
      maxWindows: native.available ? undefined : 40,
    })
    const m = ref.models.default
    if (native.available) {
      expect(res.windows).toBe(ref.heldout.windows)
      expect(Math.abs(res.ppl / m.ppl.fp32! - 1)).toBeLessThan(0.005)
      expect(Math.abs(res.ppl / m.ppl.fp32! - 1)).toBeLessThan(1e-4) // what fp32 actually gives
    }
    let worst = 0
    for (let w = 0; w < res.windows; w++) worst = Math.max(worst, Math.abs(res.windowNll[w]! - m.window_nll.fp32[w]!))
    expect(worst).toBeLessThan(2e-5)
  }, 120_000)
})
