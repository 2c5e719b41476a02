/**
 * The plan quant worker pool (worker/plan/quant-service.ts) on the default model: one tensor's
 * result equals the method and metrics run in this thread, the inspector payloads equal an
 * independent float64 computation of the same definitions, errors name the tensor, cancel
 * stops a job; and `quantize` over the pool (--threads 2) gives the same report, in model
 * order, as the one-tensor-at-a-time path in this thread.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { ParsedArgs } from '../../worker/cli/args'
import { quantizeModel } from '../../worker/cli/quantize'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { readOrientedWeight, resolvePlanFor } from '../../worker/plan/apply'
import { modelFingerprint, PLAN_FORMAT, PLAN_VERSION, type ResolvedEntry } from '../../worker/plan/plan'
import { QuantService } from '../../worker/plan/quant-service'
import { quantErrorMetrics } from '../../worker/quant/metrics'
import { QUANT_METHODS } from '../../worker/quant/registry'
import { ggufQkRows } from '../../worker/plan/quant-preview'
import { hfRowOfGgufRow } from '../../worker/stats/orientation'
import { writeTinyDecoder } from '../helpers/tiny-decoder'
import { writeTinyGguf } from '../helpers/tiny-gguf'

const DEFAULT = resolve('resources/models/default')
const DOWN = 'model.layers.2.mlp.down_proj.weight' // [256, 768]

let model: OpenedModel
let service: QuantService

beforeAll(async () => {
  model = await openModel(DEFAULT)
  service = new QuantService({ threads: 2 })
})
afterAll(async () => {
  await service.close()
  await model.close()
})

function entryFor(tensor: string, method: string, params: Record<string, number | boolean | string>): ResolvedEntry {
  const plan = { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: '', fingerprint: '-' }, tensors: { [tensor]: { method, params } } } as const
  return resolvePlanFor(model, plan, 'test', true)[0]!
}

function args(flags: Record<string, string>): ParsedArgs {
  return { command: 'quantize', positionals: [DEFAULT], flags: new Map(Object.entries(flags)) }
}

describe('QuantService.quantizeTensor', () => {
  it('equals the method and the metrics run in this thread; preview payloads match a float64 recomputation', async () => {
    const params = { bits: 4, group: 32, sym: false }
    const progress: number[] = []
    const r = await service.quantizeTensor(
      { modelPath: DEFAULT, tensor: DOWN, methodId: 'rtn', params, preview: { row: 37, col: 100, bins: 64, heatmapSize: 16 } },
      { onProgress: (done, total) => progress.push(done / total) },
    )
    const entry = entryFor(DOWN, 'rtn', params)
    const weight = await readOrientedWeight(model, entry)
    const q = QUANT_METHODS.get('rtn')!.quantize(weight, entry.rows, entry.cols, entry.params)
    expect(r).toMatchObject({ tensor: DOWN, methodId: 'rtn', rows: 256, cols: 768, bytes: q.bytes, storage: q.storage })
    expect(r.params).toEqual({ bits: 4, group: 32, sym: false, clip: 'none' })
    expect(r.metrics).toEqual(quantErrorMetrics(weight, q))
    expect(progress.at(-1)).toBe(1)

    const p = r.preview!
    // Levels of (row 37, column 100): group 3 = columns [96, 128), the method's own grid.
    expect(p.levels).toEqual({ row: 37, col: 100, group: { index: 3, col0: 96, col1: 128 }, values: Array.from(q.levels(37, 100)) })
    expect(p.levels.values).toHaveLength(16)
    const deq = q.dequantizeRows(0, 256)
    expect(p.groupWeights.original).toEqual(Array.from(weight.subarray(37 * 768 + 96, 37 * 768 + 128)))
    expect(p.groupWeights.dequantized).toEqual(Array.from(deq.subarray(37 * 768 + 96, 37 * 768 + 128)))
    // Every dequantised weight of the group is one of its levels.
    for (const d of p.groupWeights.dequantized) expect(p.levels.values).toContain(d)

    // Error histogram and heatmap, recomputed from their definitions.
    const err = Float32Array.from(weight, (w, i) => w - deq[i]!)
    const lo = err.reduce((a, b) => Math.min(a, b), Infinity)
    const hi = err.reduce((a, b) => Math.max(a, b), -Infinity)
    expect(p.errorHistogram.lo).toBe(lo)
    expect(p.errorHistogram.hi).toBe(hi)
    const counts = new Array(64).fill(0)
    for (const e of err) counts[Math.min(63, Math.max(0, Math.floor((e - lo) * (64 / (hi - lo)))))]++
    expect(p.errorHistogram.counts).toEqual(counts)
    expect(p.errorHistogram.counts.reduce((a, b) => a + b, 0)).toBe(256 * 768)
    expect(p.errorHeatmap.rows).toBe(16)
    expect(p.errorHeatmap.cols).toBe(16)
    // Cell (2, 5): rows [32, 48), columns [240, 288).
    let sum = 0
    for (let row = 32; row < 48; row++) for (let c = 240; c < 288; c++) sum += Math.abs(err[row * 768 + c]!)
    expect(p.errorHeatmap.values[2 * 16 + 5]).toBeCloseTo(sum / (16 * 48), 12)
  })

  it('a method with XᵀX reports the output MSE it was given calibration for', async () => {
    const cols = 768
    // A diagonal Gram: the output error is Σ_j g_j e_j², checkable by hand.
    const gram = new Float64Array(cols * cols)
    for (let j = 0; j < cols; j++) gram[j * cols + j] = 1 + (j % 7)
    const calibration = { count: 10, mean: new Float64Array(cols), meanAbs: new Float64Array(cols).fill(1), meanSq: new Float64Array(cols).fill(1), gram }
    const r = await service.quantizeTensor({ modelPath: DEFAULT, tensor: DOWN, methodId: 'nf4', params: { group: 64 }, calibration })
    const entry = entryFor(DOWN, 'nf4', { group: 64 })
    const weight = await readOrientedWeight(model, entry)
    const deq = QUANT_METHODS.get('nf4')!.quantize(weight, entry.rows, cols, entry.params).dequantizeRows(0, entry.rows)
    let trace = 0
    for (let i = 0; i < weight.length; i++) trace += (1 + ((i % cols) % 7)) * (weight[i]! - deq[i]!) ** 2
    expect(r.metrics.outputMse! / (trace / (10 * 256)) - 1).toBeLessThan(1e-9)
  })

  it('bad params and unknown tensors fail naming the tensor; a cancelled job rejects with AbortError', async () => {
    await expect(service.quantizeTensor({ modelPath: DEFAULT, tensor: DOWN, methodId: 'rtn', params: { bits: 4, group: 100 } })).rejects.toThrow(
      `tensor '${DOWN}': group 100 does not divide the row length 768`,
    )
    await expect(service.quantizeTensor({ modelPath: DEFAULT, tensor: 'nope.weight', methodId: 'rtn', params: {} })).rejects.toMatchObject({ name: 'PlanError' })
    await expect(service.quantizeTensor({ modelPath: DEFAULT, tensor: DOWN, methodId: 'gptq', params: {} })).rejects.toThrow(/XᵀX/)
    const controller = new AbortController()
    // k-means per tensor with a tight tolerance runs long enough to be cancelled mid-way.
    const job = service.quantizeTensor(
      { modelPath: DEFAULT, tensor: DOWN, methodId: 'kmeans', params: { bits: 8, per: 'row', maxIter: 1000, tol: 0 } },
      { signal: controller.signal, onProgress: () => controller.abort() },
    )
    await expect(job).rejects.toMatchObject({ name: 'AbortError' })
    // The pool still works afterwards.
    const again = await service.quantizeTensor({ modelPath: DEFAULT, tensor: DOWN, methodId: 'rtn', params: { bits: 8 } })
    expect(again.bytes).toBeGreaterThan(0)
  })
})

describe('HF orientation of the preview', () => {
  it('a GGUF llama q weight (rows permuted for RoPE) previews like its safetensors original', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'qs-preview-gguf-'))
    try {
      // hidden 32, 4 heads → head size 8; q has 32 rows stored in llama.cpp's order in the GGUF.
      const hfDir = join(dir, 'hf')
      const tiny = await writeTinyDecoder(hfDir, { dtype: 'F32', hidden: 32, heads: 4, kvHeads: 2, layers: 1, seed: 5 })
      const gguf = join(dir, 'tiny-llama.gguf')
      await writeTinyGguf(gguf, tiny.ref, tiny.values, { architecture: 'llama' })
      const preview = { row: 5, col: 3, bins: 16, heatmapSize: 64 }
      // Per-row grids: quantizing is the same whatever the row order.
      const params = { bits: 3, group: 0, sym: false }
      const hf = await service.quantizeTensor({ modelPath: hfDir, tensor: 'model.layers.0.self_attn.q_proj.weight', methodId: 'rtn', params, preview })
      const g = await service.quantizeTensor({ modelPath: gguf, tensor: 'blk.0.attn_q.weight', methodId: 'rtn', params, preview })
      expect(g.preview!.levels).toEqual(hf.preview!.levels)
      expect(g.preview!.groupWeights).toEqual(hf.preview!.groupWeights)
      expect(g.preview!.errorHistogram).toEqual(hf.preview!.errorHistogram)
      // One heatmap band per row: the GGUF's rows are put back in HF order.
      expect(g.preview!.errorHeatmap.rows).toBe(32)
      g.preview!.errorHeatmap.values.forEach((x, i) => expect(x).toBeCloseTo(hf.preview!.errorHeatmap.values[i]!, 12))
      // The stored row 5 is another HF row: without the mapping the levels would differ.
      expect(hfRowOfGgufRow(5, 8)).not.toBe(5)
      const stored = ggufQkRows(8)
      for (let r = 0; r < 32; r++) expect(stored.storedRowOf(stored.hfRowOf(r))).toBe(r)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('quantize over the pool', () => {
  it('--threads 2 gives the report of the in-thread path, tensor for tensor, in model order', async () => {
    const flags = { quant: 'rtn:bits=3,group=64,sym=true' }
    const pooled = await quantizeModel(DEFAULT, args(flags), { threads: 2 })
    const here = await quantizeModel(DEFAULT, args(flags), { threads: 0 })
    const strip = (t: (typeof here.tensors)[number]) => ({ ...t, seconds: 0 })
    expect(pooled.tensors.map((t) => t.name)).toEqual(model.tensors.map((t) => t.name).filter((n) => pooled.tensors.some((t) => t.name === n)))
    expect(pooled.tensors).toHaveLength(56)
    expect(pooled.tensors.map(strip)).toEqual(here.tensors.map(strip))
    expect({ ...pooled.totals, seconds: 0, calibrationSeconds: 0 }).toEqual({ ...here.totals, seconds: 0, calibrationSeconds: 0 })
  }, 120_000)

  it('a mixed plan with calibration (any4 means from the prompt): the pooled report equals the in-thread one', async () => {
    const plan = {
      format: PLAN_FORMAT,
      version: PLAN_VERSION,
      model: { name: 'default', fingerprint: modelFingerprint(model) },
      tensors: {
        'model.layers.0.self_attn.q_proj.weight': { method: 'any4', params: { group: 64 } },
        'model.layers.1.mlp.up_proj.weight': { method: 'nf4', params: { group: 64 } },
        [DOWN]: { method: 'any3', params: { group: 128, weighting: 'activations' } },
        'model.layers.3.self_attn.v_proj.weight': 'keep',
      },
    }
    const dir = await mkdtemp(join(tmpdir(), 'qs-plan-quant-'))
    try {
      const file = join(dir, 'plan.json')
      await writeFile(file, JSON.stringify(plan))
      const pooled = await quantizeModel(DEFAULT, args({ plan: file }), { threads: 2 })
      const here = await quantizeModel(DEFAULT, args({ plan: file }), { threads: 0 })
      const strip = (t: (typeof here.tensors)[number]) => ({ ...t, seconds: 0 })
      // Model order, not plan order.
      expect(pooled.tensors.map((t) => [t.name, t.method])).toEqual([
        ['model.layers.0.self_attn.q_proj.weight', 'any4'],
        ['model.layers.1.mlp.up_proj.weight', 'nf4'],
        [DOWN, 'any3'],
      ])
      expect(pooled.tensors.map(strip)).toEqual(here.tensors.map(strip))
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }, 120_000)
})
