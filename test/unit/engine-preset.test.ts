/**
 * The engine's llama.cpp presets (llamaCppPresets, llamaCppPresetPlan): the plan of a preset is
 * the library's own (plan/llama-cpp-presets.ts), its size is the exact planned size — checked
 * against ggml's block bytes written out by hand (Q4_K 144 B, Q6_K 210 B per 256 values) — and
 * an unknown preset, or a model the preset cannot quantize anything of, fails before any work
 * with an error that names the preset, the tensor and the reason.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EngineService } from '../../worker/api/engine-service'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { classifyTensor } from '../../worker/model/logical-model'
import { resolvePlanFor } from '../../worker/plan/apply'
import { LLAMA_CPP_PRESETS, planFromLlamaCppPreset } from '../../worker/plan/llama-cpp-presets'
import { planSize } from '../../worker/plan/size'
import { dispatchRequest } from '../../main/api-dispatcher'
import { writeTinyLlama } from '../helpers/tiny-llama'

const DEFAULT = resolve('resources/models/default')

let dir: string
let engine: EngineService
let model: OpenedModel
let modelId: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-engine-preset-'))
  engine = new EngineService({ statsThreads: 1, quantThreads: 1, calibrationCacheDir: null, importanceCacheDir: null })
  modelId = (await engine.openModel({ path: DEFAULT })).modelId
  model = await openModel(DEFAULT)
})

afterAll(async () => {
  await model?.close()
  await engine?.close()
  await rm(dir, { recursive: true, force: true })
})

describe('llamaCppPresets', () => {
  it('lists llama-quantize’s mixes the library reproduces, through the transport', async () => {
    const res = await dispatchRequest(engine, { id: 1, method: 'llamaCppPresets', params: {} })
    expect(res).toEqual({ id: 1, ok: true, result: [...LLAMA_CPP_PRESETS] })
    expect(LLAMA_CPP_PRESETS).toContain('Q4_K_M')
  })
})

describe('llamaCppPresetPlan', () => {
  it('Q4_K_M on the default model: the library’s plan, its exact size, and the types per tensor', async () => {
    const r = await engine.llamaCppPresetPlan({ modelId, preset: 'Q4_K_M' })
    const want = planFromLlamaCppPreset(model, 'Q4_K_M')
    expect(r.plan).toEqual(want)
    expect(r.name).toBe('llama.cpp Q4_K_M')
    expect(r.plan.description).toMatch(/^llama\.cpp Q4_K_M /)
    expect(r.size).toEqual(planSize(model, resolvePlanFor(model, want, 'x')))

    // 8 blocks: use_more_bits picks layers 0, 3, 6, 7 for attn_v and ffn_down (Q6_K), the
    // untied lm_head is Q6_K, everything else llama-quantize quantizes is Q4_K; nothing kept.
    const bumped = new Set([0, 3, 6, 7])
    let bytes = 0
    let params = 0
    for (const [name, entry] of Object.entries(r.plan.tensors)) {
      const { layer, role } = classifyTensor(name)
      const expected = role === 'lm_head' || ((role === 'v' || role === 'down') && bumped.has(layer!)) ? 'Q6_K' : 'Q4_K'
      expect(entry === 'keep' ? 'keep' : entry.params?.type, name).toBe(expected)
      const n = model.tensors.find((t) => t.name === name)!.shape.reduce((a, b) => a * b, 1)
      params += n
      bytes += (n / 256) * (expected === 'Q6_K' ? 210 : 144)
    }
    expect(r.counts).toEqual({ Q4_K: 1 + 8 * 5 + 4 + 4, Q6_K: 4 + 4 + 1 })
    expect(r.kept).toEqual([])
    expect(r.size.planned.tensors).toBe(58)
    expect(r.size.planned.bytes).toBe(bytes)
    expect(r.size.bitsPerWeight).toBeCloseTo((8 * bytes) / params, 12)
  })

  it('an unknown preset is refused, listing the presets (case matters: llama-quantize’s names)', async () => {
    for (const preset of ['Q4_K_X', 'q4_k_m']) {
      const res = await dispatchRequest(engine, { id: 2, method: 'llamaCppPresetPlan', params: { modelId, preset } })
      expect(res.ok).toBe(false)
      if (res.ok) continue
      expect(res.error.name).toBe('BadRequest')
      expect(res.error.message).toBe(`llamaCppPresetPlan: unknown llama.cpp preset '${preset}' (presets: ${LLAMA_CPP_PRESETS.join(', ')})`)
    }
    const missing = await dispatchRequest(engine, { id: 3, method: 'llamaCppPresetPlan', params: { modelId } })
    expect(!missing.ok && missing.error.message).toBe("llamaCppPresetPlan: 'preset' is missing")
  })

  it('rows that are not whole blocks fall back as llama-quantize does; a weight no type fits is listed as kept', async () => {
    // hidden 32: no 256-value K-blocks, so Q4_K → Q5_0 and Q6_K → Q8_0 (tensor_type_fallback);
    // intermediate 80: ffn_down's rows of 80 are not whole 32-blocks either, so they stay F16.
    const path = join(dir, 'h32-i80')
    await writeTinyLlama(path, { hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 80, vocab: 96 })
    const id = (await engine.openModel({ path })).modelId
    const r = await engine.llamaCppPresetPlan({ modelId: id, preset: 'Q4_K_M' })
    const downs = ['model.layers.0.mlp.down_proj.weight', 'model.layers.1.mlp.down_proj.weight']
    expect(r.kept).toEqual(downs)
    for (const d of downs) expect(r.plan.tensors[d]).toBe('keep')
    // Two layers: use_more_bits is true for layer 1 only (the last eighth), so its attn_v is Q6_K → Q8_0; lm_head Q6_K → Q8_0.
    expect(r.counts).toEqual({ Q5_0: 1 + 2 * 5 + 1, Q8_0: 2, keep: 2 })
    expect(r.plan.tensors['model.layers.1.self_attn.v_proj.weight']).toMatchObject({ params: { type: 'Q8_0' } })
    expect(r.size.kept.tensors).toBeGreaterThanOrEqual(2)
    await engine.closeModel({ modelId: id })
  })

  it('a model no ggml block fits is refused, naming the preset and a tensor', async () => {
    const path = join(dir, 'h48-i80')
    await writeTinyLlama(path, { hidden: 48, layers: 2, heads: 4, kvHeads: 2, intermediate: 80, vocab: 96 })
    const id = (await engine.openModel({ path })).modelId
    const res = await dispatchRequest(engine, { id: 4, method: 'llamaCppPresetPlan', params: { modelId: id, preset: 'Q8_0' } })
    expect(res).toMatchObject({
      ok: false,
      error: { name: 'PlanError', file: 'llama.cpp preset Q8_0', tensor: 'model.embed_tokens.weight' },
    })
    expect(!res.ok && res.error.problem).toMatch(/^its rows of 48 values are not whole 32-value ggml blocks, and neither are any other weight's: llama-quantize would keep every weight of h48-i80 as F16/)
    await engine.closeModel({ modelId: id })
  })
})
