/**
 * The memory model against the exporters: for each format, the bytes it predicts from the plan
 * alone (no quantization) equal what runExport writes — per tensor and per file — and the KV
 * reserve equals its definition counted independently.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { runExport } from '../../worker/export/run-export'
import { resolvePlanFor } from '../../worker/plan/apply'
import { kvCacheBytes, memoryModel } from '../../worker/plan/memory-model'
import { planSize } from '../../worker/plan/size'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, decoderLinearWeights, type Plan, type PlanEntry } from '../../worker/plan/plan'

const DEFAULT = 'resources/models/default'
const TINY = 'resources/models/qwen2-tiny'

let dir: string
let defaultModel: OpenedModel
let tiny: OpenedModel

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-memory-'))
  defaultModel = await openModel(DEFAULT)
  tiny = await openModel(TINY)
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** A plan giving the decoder linears `pick(i)` in turn (and optionally more tensors). */
function mixPlan(model: OpenedModel, pick: (i: number, name: string) => PlanEntry, extra: Record<string, PlanEntry> = {}, count = Infinity): Plan {
  const tensors: Record<string, PlanEntry> = {}
  decoderLinearWeights(model).slice(0, count).forEach((t, i) => (tensors[t.name] = pick(i, t.name)))
  Object.assign(tensors, extra)
  return { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, tensors }
}

describe('memory model equals the exported bytes', () => {
  it('GGUF: a Q4_K/Q6_K/Q3_K mix with an RTN fallback and the embeddings planned — data section and every tensor', async () => {
    const types = ['Q4_K', 'Q6_K', 'Q3_K']
    const plan = mixPlan(defaultModel, (i): PlanEntry => (i === 5 ? { method: 'rtn', params: { bits: 4, group: 64 } } : { method: 'ggml', params: { type: types[i % 3]! } }), {
      'model.embed_tokens.weight': { method: 'ggml', params: { type: 'Q4_K' } },
    }, 14)
    const entries = resolvePlanFor(defaultModel, plan, 'test')
    const predicted = memoryModel(defaultModel, entries, { format: 'gguf' })
    const out = join(dir, 'mix.gguf')
    const report = await runExport({ model: defaultModel, modelPath: DEFAULT, plan, planSource: 'test', format: 'gguf', out })
    const file = (await stat(out)).size
    expect(predicted.weights).toBe(file - report.sections.metadata!)
    expect(predicted.weights).toBe(report.sections.quantized! + report.sections.fallback! + report.sections.kept!)
    // Per tensor: the report's unpadded bytes, padded to the 32-byte alignment.
    const written = new Map(report.tensors.map((t) => [t.source, Math.ceil(t.bytes / 32) * 32]))
    expect(predicted.tensors.length).toBe(written.size)
    for (const t of predicted.tensors) expect([t.name, t.bytes]).toEqual([t.name, written.get(t.name)])
    // The native model is planSize, and the two differ (F16 kept matrices, fallback type, padding).
    const native = memoryModel(defaultModel, entries, { format: 'native' })
    expect(native.weights).toBe(planSize(defaultModel, entries).bytes)
  }, 60_000)

  it('GGUF on qwen2 (biases, tied embeddings, 32-block types): the whole data section', async () => {
    const plan = mixPlan(tiny, (i) => ({ method: 'ggml', params: { type: i % 2 ? 'Q8_0' : 'Q4_0' } }), { 'model.embed_tokens.weight': { method: 'ggml', params: { type: 'Q5_1' } } })
    const entries = resolvePlanFor(tiny, plan, 'test')
    const out = join(dir, 'tiny.gguf')
    const report = await runExport({ model: tiny, modelPath: TINY, plan, planSource: 'test', format: 'gguf', out })
    expect(memoryModel(tiny, entries, { format: 'gguf' }).weights).toBe((await stat(out)).size - report.sections.metadata!)
  }, 60_000)

  it('dequantised safetensors: every weight file byte for byte (sharded and not), fp32 and the declared fp16', async () => {
    const plan = mixPlan(tiny, (i) => ({ method: 'rtn', params: { bits: i % 2 ? 4 : 3, group: 32 } }))
    const entries = resolvePlanFor(tiny, plan, 'test')
    for (const [dtype, shardBytes] of [[undefined, undefined], ['fp32', 1_000_000]] as const) {
      const out = join(dir, `st-${dtype ?? 'model'}`)
      const report = await runExport({ model: tiny, modelPath: TINY, plan, planSource: 'test', format: 'safetensors', out, options: { dtype, shardBytes } })
      const weightFiles = report.files.filter((f) => /safetensors/.test(f.path)).reduce((a, f) => a + f.bytes, 0)
      const predicted = memoryModel(tiny, entries, { format: 'safetensors', dtype, shardBytes })
      expect(predicted.weights).toBe(weightFiles)
      expect(predicted.planned + predicted.kept).toBe(report.sections.quantized! + report.sections.kept!)
      if (shardBytes) expect(report.files.some((f) => f.path.endsWith('model.safetensors.index.json'))).toBe(true)
    }
  }, 60_000)

  it('compressed-tensors pack-quantized: weight files byte for byte with sym and asym, per group and per channel, 4 and 8 bits', async () => {
    const plan = mixPlan(tiny, (i) => ({ method: 'rtn', params: { bits: i % 2 ? 4 : 8, group: i % 4 === 1 ? 0 : 32, sym: i % 3 !== 1 } }))
    const entries = resolvePlanFor(tiny, plan, 'test')
    const out = join(dir, 'ct')
    const report = await runExport({ model: tiny, modelPath: TINY, plan, planSource: 'test', format: 'compressed-tensors', out, options: { shardBytes: 1_500_000 } })
    const weightFiles = report.files.filter((f) => /safetensors/.test(f.path)).reduce((a, f) => a + f.bytes, 0)
    const predicted = memoryModel(tiny, entries, { format: 'compressed-tensors', shardBytes: 1_500_000 })
    expect(predicted.weights).toBe(weightFiles)
    const perTensor = new Map(report.tensors.map((t) => [t.source, t.bytes]))
    for (const t of predicted.tensors) expect([t.name, t.bytes]).toEqual([t.name, perTensor.get(t.name)])
  }, 120_000)

  it('KV reserve: K and V per layer, head and position, with group scales', () => {
    const c = defaultModel.config!
    // Counted vector by vector: 2 caches × 8 layers × 4 kv heads × 512 positions × 3 sequences.
    let vectors = 0
    for (let kv = 0; kv < 2; kv++) for (let l = 0; l < c.numLayers; l++) for (let h = 0; h < c.numKvHeads; h++) vectors += 512 * 3
    expect(kvCacheBytes({ ctx: 512, batch: 3 }, c)).toBe(vectors * c.headDim * 2)
    expect(kvCacheBytes({ ctx: 512, batch: 3, bits: 4, group: 16 }, c)).toBe(vectors * (c.headDim / 2 + (c.headDim / 16) * 4))
    expect(() => kvCacheBytes({ ctx: 512, group: 5 }, c)).toThrow(/group 5 does not divide the head dim 32/)
    const m = memoryModel(defaultModel, [], { format: 'native', kv: { ctx: 512 } })
    expect(m.total - m.weights).toBe(vectors / 3 * c.headDim * 2)
  })
})
