/**
 * The parts of the GGUF export that need no llama.cpp: the streaming writer against the
 * independent test writer, q/k row permutation commuting with ggml quantization, and methods
 * GGUF cannot store written as a reported ggml fallback.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { encodeGgufHeader, GgufStreamWriter, writeGgufFile, arr, f32, str, u32, type GgufKv, type GgufTensorInfo } from '../../worker/formats/gguf/writer'
import { openOutputFile } from '../../worker/io/output-file'
import { buildGguf } from '../helpers/gguf-writer'
import { ggmlMethod } from '../../worker/quant/ggml'
import { permuteRowsToGguf } from '../../worker/export/gguf-metadata'
import { ggufExportFormat } from '../../worker/export/gguf'
import { nearestGgmlType } from '../../worker/plan/memory-model'
import { permuteToGgufRows } from '../../worker/inference/gguf-layout'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { PLAN_FORMAT, PLAN_VERSION, modelFingerprint, type Plan } from '../../worker/plan/plan'
import { createOverrides, readOrientedWeight, resolvePlanFor } from '../../worker/plan/apply'
import { runExport } from '../../worker/export/run-export'
import { gaussianWeights } from '../helpers/quant-random'
import { planFromLlamaCppPreset, useMoreBits } from '../../worker/plan/llama-cpp-presets'

const DEFAULT = join(__dirname, '../../resources/models/default')

let dir: string
let model: OpenedModel

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-export-gguf-parts-'))
  model = await openModel(DEFAULT)
})

afterAll(async () => {
  await model?.close()
  if (dir) await rm(dir, { recursive: true, force: true })
})

const KV: Array<[string, GgufKv]> = [
  ['general.architecture', str('llama')],
  ['llama.block_count', u32(2)],
  ['llama.rope.freq_base', f32(10000.5)],
  ['tokenizer.ggml.tokens', arr('STRING', ['a', 'bé', '<|x|>'])],
  ['tokenizer.ggml.token_type', arr('INT32', [1, 1, -3])],
]

function tensorsOf(): Array<GgufTensorInfo & { data: Uint8Array }> {
  const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255)
  return [
    { name: 'a.weight', ne: [5], type: 0, data: bytes(20, 1) }, // F32, 20 bytes: padded to 32
    { name: 'b.weight', ne: [64, 3], type: 8, data: bytes(3 * 2 * 34, 2) }, // Q8_0
    { name: 'c.weight', ne: [256, 2], type: 12, data: bytes(2 * 144, 3) }, // Q4_K
  ]
}

describe('streaming GGUF writer', () => {
  it('writes the same bytes as the independent test writer, header and padded data', async () => {
    const tensors = tensorsOf()
    const want = buildGguf({ kv: KV, tensors })
    const header = encodeGgufHeader(KV, tensors)
    expect(header.offsets).toEqual([0, 32, 32 + 224])
    const path = join(dir, 'w.gguf')
    const res = await writeGgufFile(path, KV, tensors, (i) => tensors[i]!.data)
    const got = await readFile(path)
    expect(res.bytes).toBe(want.length)
    expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true)
  })

  it('writes a tensor from parts (row chunks) to the same bytes, and refuses parts that do not add up', async () => {
    const tensors = tensorsOf()
    const want = buildGguf({ kv: KV, tensors })
    async function* split(data: Uint8Array, cuts: number[]): AsyncGenerator<Uint8Array> {
      let at = 0
      for (const c of [...cuts, data.length]) {
        yield data.subarray(at, c)
        at = c
      }
    }
    const path = join(dir, 'parts.gguf')
    const out = await openOutputFile(path)
    const w = await GgufStreamWriter.begin(out, KV, tensors)
    await w.writeTensorParts(tensors[0]!.name, split(tensors[0]!.data, [1, 7]))
    await w.writeTensor(tensors[1]!.name, tensors[1]!.data)
    await w.writeTensorParts(tensors[2]!.name, split(tensors[2]!.data, [0, 5]))
    await w.end()
    expect(Buffer.from(await readFile(path)).equals(Buffer.from(want))).toBe(true)

    const short = join(dir, 'short.gguf')
    const out2 = await openOutputFile(short)
    const w2 = await GgufStreamWriter.begin(out2, KV, tensors)
    const n = tensors[0]!.data.length
    await expect(w2.writeTensorParts(tensors[0]!.name, split(tensors[0]!.data.subarray(0, n - 1), [3]))).rejects.toThrow(
      new RegExp(`tensor '${tensors[0]!.name}': ${n - 1} bytes of data`),
    )
    await out2.close()
    await rm(short)
  })

  it('refuses data of the wrong size or order, naming the tensor, and leaves no file', async () => {
    const tensors = tensorsOf()
    const sub = await mkdtemp(join(dir, 'w-'))
    await expect(writeGgufFile(join(sub, 'x.gguf'), KV, tensors, (i) => (i === 1 ? new Uint8Array(10) : tensors[i]!.data))).rejects.toThrow(
      /tensor 'b.weight': 10 bytes of data, its type Q8_0 and dimensions \[64, 3\] need 204/,
    )
    expect(await readdir(sub)).toEqual([])
    const out = await openOutputFile(join(sub, 'y.gguf'))
    const w = await GgufStreamWriter.begin(out, KV, tensors)
    await expect(w.writeTensor('c.weight', tensors[2]!.data)).rejects.toThrow(/out of order: tensor 'a.weight' comes next/)
    await expect(w.end()).rejects.toThrow(/'a.weight': not written \(0 of 3/)
    await out.close()
    await rm(join(sub, 'y.gguf')) // GgufStreamWriter writes where it is told; staging is its callers' job
    expect(() => encodeGgufHeader(KV, [{ name: 'q', ne: [33, 2], type: 2 }])).toThrow(/'q': ne\[0\] = 33 is not a multiple of Q4_0's block size 32/)
    expect(() => encodeGgufHeader([...KV, KV[0]!], [])).toThrow(/'general.architecture' given twice/)
    const controller = new AbortController()
    controller.abort()
    await expect(writeGgufFile(join(sub, 'z.gguf'), KV, tensors, (i) => tensors[i]!.data, { signal: controller.signal })).rejects.toThrow(/abort/i)
    expect(await readdir(sub)).toEqual([])
  })
})

describe('q/k rows in llama.cpp order', () => {
  it('permuting rows then quantizing gives the same ggml blocks as quantizing then permuting (Q8_0, Q4_K with an imatrix, Q6_K)', () => {
    const heads = 4
    const headDim = 16
    const rows = heads * headDim
    const cols = 512
    const w = gaussianWeights(rows * cols, 7)
    const meanSq = Float32Array.from({ length: cols }, (_, j) => 0.1 + ((j * 7919) % 97) / 10)
    const calibration = { count: 100, mean: new Float32Array(cols), meanAbs: new Float32Array(cols), meanSq }
    for (const params of [{ type: 'Q8_0', imatrix: false }, { type: 'Q4_K', imatrix: true }, { type: 'Q6_K', imatrix: false }] as const) {
      const direct = ggmlMethod.quantize(w, rows, cols, params, calibration)
      const permutedFirst = ggmlMethod.quantize(permuteToGgufRows(w, heads, headDim, cols), rows, cols, params, calibration)
      const after = permuteRowsToGguf(direct.blocks, heads, rows, direct.rowBytes, 'q')
      expect(Buffer.from(after).equals(Buffer.from(permutedFirst.blocks)), params.type).toBe(true)
      // And the permutation is the converter's: dequantised rows move as permuteToGgufRows moves floats.
      expect(permutedFirst.dequantizeRows(0, rows)).toEqual(permuteToGgufRows(direct.dequantizeRows(0, rows), heads, headDim, cols))
    }
  })
})

describe('methods GGUF cannot store', () => {
  it('the nearest ggml type in bits, legacy types for rows that are no multiple of 256, and no type for rows that are no multiple of 32', () => {
    expect([8, 6, 5, 4, 3, 2].map(nearestGgmlType)).toEqual(['Q8_0', 'Q6_K', 'Q5_K', 'Q4_K', 'Q3_K', 'Q2_K'])
    const tensor = model.tensors.find((t) => t.name === 'model.layers.0.mlp.up_proj.weight')!
    const entry = (cols: number, methodId: string, params: Record<string, unknown>) => ({ tensor, methodId, params, rows: 4, cols })
    const rtn4 = { bits: 4, group: 32, symmetric: false }
    expect(ggufExportFormat.support(model, entry(256, 'ggml', { type: 'Q3_K', imatrix: false }), {})).toEqual({ kind: 'exact' })
    expect(ggufExportFormat.support(model, entry(256, 'rtn', rtn4), {})).toMatchObject({ kind: 'fallback', description: expect.stringMatching(/written as Q4_K \(the ggml type nearest to its 4 bits\)/) })
    expect(ggufExportFormat.support(model, entry(96, 'rtn', rtn4), {})).toMatchObject({ kind: 'fallback', description: expect.stringMatching(/so Q5_0 instead of Q4_K/) })
    expect(ggufExportFormat.support(model, entry(256, 'rtn', rtn4), { formatOptions: { fallback: 'Q8_0' } })).toMatchObject({ description: expect.stringMatching(/written as Q8_0 \(the chosen fallback type\)/) })
    expect(ggufExportFormat.support(model, entry(40, 'rtn', rtn4), {})).toMatchObject({ kind: 'unsupported', reason: expect.stringMatching(/rows of 40 values fit no ggml block type/) })
    expect(() => ggufExportFormat.support(model, entry(256, 'rtn', rtn4), { formatOptions: { fallback: 'Q7_0' } })).toThrow(/fallback type must be one of Q8_0, Q4_0/)
  })

  it('kept tensors already in the written type are copied as stored: the same file as decoding and re-encoding them', async () => {
    const plan: Plan = {
      format: PLAN_FORMAT,
      version: PLAN_VERSION,
      model: { name: 'default', fingerprint: modelFingerprint(model) },
      tensors: { 'model.layers.0.mlp.down_proj.weight': { method: 'ggml', params: { type: 'Q8_0' } } },
    }
    // The default model is bf16: with dtype bf16 its kept matrices (the embedding among them) take the copy path.
    expect(typeof model.readRawRows).toBe('function')
    const copied = join(dir, 'kept-copied.gguf')
    const decoded = join(dir, 'kept-decoded.gguf')
    const reads: string[] = []
    const spy: OpenedModel = { ...model, readRawRows: async (name, r0, r1) => (reads.push(name), model.readRawRows!(name, r0, r1)) }
    const a = await runExport({ model: spy, modelPath: DEFAULT, plan, planSource: 'test plan', format: 'gguf', out: copied, options: { dtype: 'bf16' } })
    const b = await runExport({ model: { ...model, readRawRows: undefined }, modelPath: DEFAULT, plan, planSource: 'test plan', format: 'gguf', out: decoded, options: { dtype: 'bf16' } })
    expect(reads).toContain('model.embed_tokens.weight')
    expect(reads.some((n) => n.includes('norm'))).toBe(false) // 1-D tensors are written F32: converted
    expect(a.tensors.find((t) => t.source === 'model.embed_tokens.weight')).toMatchObject({ writtenType: 'BF16', support: 'kept' })
    expect(a.tensors.find((t) => t.source === 'model.embed_tokens.weight')!.maxAbsError).toBeUndefined()
    expect(Buffer.compare(await readFile(copied), await readFile(decoded))).toBe(0)
  })

  it('an RTN tensor is written as Q4_K of the original weights and reported as a fallback with its difference to the plan; ggml tensors stay exact', async () => {
    const up = 'model.layers.0.mlp.up_proj.weight'
    const down = 'model.layers.0.mlp.down_proj.weight'
    const plan: Plan = {
      format: PLAN_FORMAT,
      version: PLAN_VERSION,
      model: { name: 'default', fingerprint: modelFingerprint(model) },
      tensors: { [up]: { method: 'rtn', params: { bits: 4, group: 32 } }, [down]: { method: 'ggml', params: { type: 'Q5_1' } } },
    }
    const out = join(dir, 'fallback.gguf')
    const report = await runExport({ model, modelPath: DEFAULT, plan, planSource: 'test plan', format: 'gguf', out })
    const upRecord = report.tensors.find((t) => t.source === up)!
    expect(upRecord).toMatchObject({ name: 'blk.0.ffn_up.weight', writtenType: 'Q4_K', support: 'fallback' })
    expect(upRecord.method).toMatch(/^rtn:bits=4,group=32/)
    expect(upRecord.maxAbsError).toBeGreaterThan(0)
    expect(report.tensors.find((t) => t.source === down)).toMatchObject({ name: 'blk.0.ffn_down.weight', writtenType: 'Q5_1', support: 'exact' })
    expect(report.notes.join('\n')).toMatch(/1 planned tensor\(s\) use a method GGUF cannot store .*rtn:bits=4,group=32.* → Q4_K \(1\)/)
    // Kept matrices as F16, norms as F32.
    expect(report.tensors.find((t) => t.name === 'token_embd.weight')).toMatchObject({ writtenType: 'F16', support: 'kept' })
    expect(report.tensors.find((t) => t.name === 'blk.0.attn_norm.weight')).toMatchObject({ writtenType: 'F32', support: 'kept' })
    const gguf = await openModel(out)
    try {
      const [entry] = resolvePlanFor(model, plan, 'test').filter((e) => e.tensor.name === up)
      const want = ggmlMethod.quantize(await readOrientedWeight(model, entry!), entry!.rows, entry!.cols, { type: 'Q4_K', imatrix: false })
      expect(gguf.tensors.find((t) => t.name === 'blk.0.ffn_up.weight')!.dtype).toBe('Q4_K')
      expect(Buffer.from(await gguf.readRaw('blk.0.ffn_up.weight')).equals(Buffer.from(want.blocks))).toBe(true)
      // A kept bf16 norm is exact in F32.
      expect(await gguf.readRows('blk.3.ffn_norm.weight', 0, 1)).toEqual(await model.readRows('model.layers.3.post_attention_layernorm.weight', 0, 1))
    } finally {
      await gguf.close()
    }
  })
})

describe("llama.cpp's mixes as plans (llama_tensor_get_type)", () => {
  /** The default model: 8 layers, 8 heads over 4 kv heads (n_gqa 2), separate lm_head, rows of 256 and 768. */
  const typesByRole = (preset: Parameters<typeof planFromLlamaCppPreset>[1]) => {
    const plan = planFromLlamaCppPreset(model, preset)
    const out: Record<string, string[]> = {}
    for (const [name, entry] of Object.entries(plan.tensors)) {
      const m = /layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)_proj/.exec(name)
      const key = m ? m[2]! : name
      ;(out[key] ??= [])[m ? Number(m[1]) : 0] = entry === 'keep' ? 'keep' : String(entry.params.type)
    }
    return out
  }
  const eight = (t: string) => Array<string>(8).fill(t)

  it('Q4_K_M: attn_v and ffn_down Q6_K in layers 0, 3, 6, 7 (use_more_bits of 8 layers), output Q6_K, the rest Q4_K', () => {
    const moreBits = (t: string) => ['Q6_K', t, t, 'Q6_K', t, t, 'Q6_K', 'Q6_K']
    expect(typesByRole('Q4_K_M')).toEqual({
      'model.embed_tokens.weight': ['Q4_K'],
      'lm_head.weight': ['Q6_K'],
      q: eight('Q4_K'),
      k: eight('Q4_K'),
      v: moreBits('Q4_K'),
      o: eight('Q4_K'),
      gate: eight('Q4_K'),
      up: eight('Q4_K'),
      down: moreBits('Q4_K'),
    })
  })

  it('Q3_K_M, Q2_K, Q4_K_S and Q8_0 follow their rules', () => {
    expect(typesByRole('Q3_K_M')).toMatchObject({ v: ['Q5_K', 'Q5_K', ...Array(6).fill('Q4_K')], down: eight('Q4_K'), o: eight('Q4_K'), q: eight('Q3_K'), 'lm_head.weight': ['Q6_K'], 'model.embed_tokens.weight': ['Q3_K'] })
    // n_gqa 2 < 4: attn_v Q3_K.
    expect(typesByRole('Q2_K')).toMatchObject({ v: eight('Q3_K'), down: eight('Q3_K'), o: eight('Q3_K'), up: eight('Q2_K'), 'lm_head.weight': ['Q6_K'] })
    expect(typesByRole('Q4_K_S')).toMatchObject({ v: [...Array(4).fill('Q5_K'), ...Array(4).fill('Q4_K')], down: ['Q5_K', ...Array(7).fill('Q4_K')] })
    expect(typesByRole('Q8_0')).toMatchObject({ 'lm_head.weight': ['Q8_0'], v: eight('Q8_0') })
    expect([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].filter((i) => useMoreBits(i, 16))).toEqual([0, 1, 4, 7, 10, 13, 14, 15])
    expect(() => planFromLlamaCppPreset(model, 'Q4_K_X')).toThrow(/unknown llama.cpp preset 'Q4_K_X'/)
  })
})

describe('GGUF export of an imatrix plan', () => {
  it('captures the same activations as the evaluation, so the written Q4_K blocks are the ones the app evaluates', async () => {
    const up = 'model.layers.2.mlp.up_proj.weight'
    const plan: Plan = {
      format: PLAN_FORMAT,
      version: PLAN_VERSION,
      model: { name: 'default', fingerprint: modelFingerprint(model) },
      tensors: { [up]: { method: 'ggml', params: { type: 'Q4_K', imatrix: true } } },
    }
    const calibration = { cacheDir: null }
    const out = join(dir, 'imatrix.gguf')
    const report = await runExport({ model, modelPath: DEFAULT, plan, planSource: 'imatrix plan', format: 'gguf', out, options: { calibration } })
    expect(report.tensors.find((t) => t.source === up)).toMatchObject({ writtenType: 'Q4_K', support: 'exact' })
    const produce = (await createOverrides(model, { plan, source: 'imatrix plan', calibration })).get(up) as (r0: number, r1: number) => Promise<Float32Array>
    const evaluated = await produce(0, 768)
    const plain = ggmlMethod.quantize(await model.readRows(up, 0, 768), 768, 256, { type: 'Q4_K', imatrix: false }).dequantizeRows(0, 768)
    const gguf = await openModel(out)
    try {
      const written = await gguf.readRows('blk.2.ffn_up.weight', 0, 768)
      expect(Buffer.from(written.buffer).equals(Buffer.from(evaluated.buffer))).toBe(true)
      // The weighting changed the blocks: without it they differ.
      expect(Buffer.from(written.buffer).equals(Buffer.from(plain.buffer))).toBe(false)
    } finally {
      await gguf.close()
    }
  })
})
