/**
 * Every linear weight is shown in HF orientation ([out, in], HF row order) whatever the format:
 * the statistics the engine returns for an ONNX MatMul initializer (stored [in, out]) and for
 * a llama GGUF q/k weight (rows permuted by llama.cpp) must equal those of the same weights in
 * safetensors, computed by the real engine on real files.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { OrientedTensorStats } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { permuteToGgufRows, unpermuteGgufRows } from '../../worker/inference/gguf-layout'
import { hfRowOfGgufRow } from '../../worker/stats/orientation'
import { DataType, encodeModel, f32Bytes, seededRandom } from '../helpers/onnx-builder'
import { writeTinyDecoder } from '../helpers/tiny-decoder'
import { writeTinyGguf } from '../helpers/tiny-gguf'

const OUT = 24
const IN = 40
const K_NAME = 'model.layers.0.self_attn.k_proj.weight'

let dir: string
let engine: EngineService
let job = 0

async function stats(path: string, tensor: string, heatmapSize: number): Promise<OrientedTensorStats> {
  const m = await engine.openModel({ path })
  return engine.tensorStats({ modelId: m.modelId, tensor, options: { heatmapSize, topK: 16 }, jobId: `j${++job}` })
}

/** Same matrix statistics, up to float rounding of the heatmap means (summed in another order). */
function expectSameMatrix(a: OrientedTensorStats, b: OrientedTensorStats, heatmap = true): void {
  expect([a.rows, a.cols]).toEqual([b.rows, b.cols])
  expect(a.rowAbsmax).toEqual(b.rowAbsmax)
  expect(a.colAbsmax).toEqual(b.colAbsmax)
  expect(a.topK.map((e) => [e.row, e.col, e.index, e.value])).toEqual(b.topK.map((e) => [e.row, e.col, e.index, e.value]))
  expect([a.min, a.max, a.count]).toEqual([b.min, b.max, b.count])
  if (!heatmap) return
  expect([a.heatmap.rows, a.heatmap.cols]).toEqual([b.heatmap.rows, b.heatmap.cols])
  a.heatmap.values.forEach((v, i) => expect(v).toBeCloseTo(b.heatmap.values[i]!, 6))
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-orient-'))
  engine = new EngineService({ statsThreads: 1, maxOpenModels: 16 })
})

afterAll(async () => {
  await engine?.close()
  await rm(dir, { recursive: true, force: true })
})

describe('ONNX MatMul initializers are shown as [out, in]', () => {
  let hfFile: string
  let onnxFile: string

  beforeAll(async () => {
    const rand = seededRandom(11)
    const w = Float32Array.from({ length: OUT * IN }, () => rand() * 2 - 1)
    // One input channel (column 5 of [out, in]) and one output channel (row 17) stand out, so
    // a swapped axis shows up as an outlier on the wrong chart.
    for (let o = 0; o < OUT; o++) w[o * IN + 5]! *= 9
    for (let i = 0; i < IN; i++) w[17 * IN + i]! *= 4
    hfFile = join(dir, 'k.safetensors')
    await writeSafetensorsFile(hfFile, [{ name: K_NAME, dtype: 'F32', shape: [OUT, IN] }], () => f32Bytes(w))
    const stored = new Float32Array(IN * OUT) // [in, out], as torch.onnx exports nn.Linear into MatMul
    for (let o = 0; o < OUT; o++) for (let i = 0; i < IN; i++) stored[i * OUT + o] = w[o * IN + i]!
    onnxFile = join(dir, 'k.onnx')
    await writeFile(
      onnxFile,
      encodeModel({
        initializers: [{ name: 'onnx::MatMul_12', dataType: DataType.FLOAT, dims: [IN, OUT], raw: f32Bytes(stored) }],
        nodes: [{ opType: 'MatMul', inputs: ['x', 'onnx::MatMul_12'], outputs: ['y'], name: 'model.layers.0.self_attn.k_proj' }],
        inputs: ['x'],
        outputs: ['y'],
      }),
    )
  })

  for (const heatmapSize of [128, 7]) {
    it(`equals the safetensors statistics (heatmap ${heatmapSize} cells per side)`, async () => {
      const hf = await stats(hfFile, K_NAME, heatmapSize)
      const onnx = await stats(onnxFile, 'onnx::MatMul_12', heatmapSize)
      expect(hf.orientation).toMatchObject({ transposed: false, rowsUnpermuted: false, note: null })
      expect(onnx.orientation.transposed).toBe(true)
      expect(onnx.orientation.note).toContain('[out, in]')
      expect(onnx.rows).toBe(OUT)
      // The input-channel outlier is a column, the output-channel one a row, in both.
      const argmax = (v: number[]): number => v.indexOf(Math.max(...v))
      expect(argmax(onnx.colAbsmax)).toBe(5)
      expect(argmax(onnx.rowAbsmax)).toBe(17)
      expectSameMatrix(onnx, hf)
    })
  }
})

describe('GGUF llama q/k rows are shown in HF order', () => {
  const HF_Q = 'model.layers.0.self_attn.q_proj.weight'
  const HF_K = 'model.layers.0.self_attn.k_proj.weight'
  let hfDir: string
  let ggufFile: string
  let qwenFile: string

  beforeAll(async () => {
    hfDir = join(dir, 'tiny-hf')
    // hidden 32, 4 heads → head size 8; q has 32 rows, k 16 (2 kv heads).
    const tiny = await writeTinyDecoder(hfDir, { dtype: 'F32', hidden: 32, heads: 4, kvHeads: 2, layers: 1, seed: 3 })
    ggufFile = join(dir, 'tiny-llama.gguf')
    await writeTinyGguf(ggufFile, tiny.ref, tiny.values, { architecture: 'llama' })
    qwenFile = join(dir, 'tiny-qwen.gguf')
    await writeTinyGguf(qwenFile, tiny.ref, tiny.values, { architecture: 'qwen2' })
  })

  it('maps stored rows as unpermuteGgufRows does', () => {
    const heads = 3
    const d = 8
    const rows = Float32Array.from({ length: heads * d }, (_, r) => r) // one column: its HF row number
    const stored = permuteToGgufRows(rows, heads, d, 1)
    for (let r = 0; r < rows.length; r++) expect(hfRowOfGgufRow(r, d)).toBe(stored[r])
    expect(Array.from(unpermuteGgufRows(stored, heads, d, 1))).toEqual(Array.from(rows))
  })

  // 128: one heatmap band per row (permuted like the rows); 2 and 1: bands of whole heads (unchanged).
  for (const heatmapSize of [128, 2, 1]) {
    it(`q and k equal the safetensors statistics (heatmap ${heatmapSize})`, async () => {
      for (const [gguf, hfName] of [['blk.0.attn_q.weight', HF_Q], ['blk.0.attn_k.weight', HF_K]] as const) {
        const hf = await stats(hfDir, hfName, heatmapSize)
        const g = await stats(ggufFile, gguf, heatmapSize)
        expect(g.orientation).toMatchObject({ transposed: false, rowsUnpermuted: true, heatmapRowsPermuted: false })
        expectSameMatrix(g, hf)
      }
    })
  }

  it('says so when heatmap bands straddle heads (they keep the stored order)', async () => {
    const hf = await stats(hfDir, HF_Q, 3)
    const g = await stats(ggufFile, 'blk.0.attn_q.weight', 3)
    expect(g.orientation.heatmapRowsPermuted).toBe(true)
    expect(g.orientation.note).toContain('heatmap')
    expectSameMatrix(g, hf, false)
  })

  it('leaves other tensors and qwen2 files (not permuted by llama.cpp) as stored', async () => {
    const v = await stats(ggufFile, 'blk.0.attn_v.weight', 128)
    expect(v.orientation.rowsUnpermuted).toBe(false)
    expectSameMatrix(v, await stats(hfDir, 'model.layers.0.self_attn.v_proj.weight', 128))
    const q = await stats(qwenFile, 'blk.0.attn_q.weight', 128)
    expect(q.orientation.rowsUnpermuted).toBe(false)
    expectSameMatrix(q, await stats(hfDir, HF_Q, 128))
  })
})
