import { describe, it, expect, beforeAll } from 'vitest'
import { readFileSync, readdirSync, statSync, existsSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Tokenizer } from '@huggingface/tokenizers'
import { FileByteSource } from '../../worker/io/byte-source'
import { decodePlain, isPlainDType, PLAIN_DTYPE_BYTES } from '../../worker/formats/dtypes'

/**
 * Checks of the shipped reference models (resources/models/default, resources/models/qwen2-tiny)
 * and of the reference numbers computed for them with PyTorch/transformers
 * (test/fixtures/reference/reference.json, made by resources/models/train/make_reference.py).
 *
 * No Python here: these tests re-derive what they can independently in JS — token ids with
 * @huggingface/tokenizers, tensor statistics from the raw safetensors bytes, the int4 RTN formula
 * in float32 — and check that the rest is present and self-consistent.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const REF_DIR = join(ROOT, 'test/fixtures/reference')
const MODELS = { default: 'resources/models/default', 'qwen2-tiny': 'resources/models/qwen2-tiny' } as const
type ModelKey = keyof typeof MODELS

interface TensorStat {
  file: string
  dtype: string
  shape: number[]
  numel: number
  min: number
  max: number
  mean: number
  std: number
  absmax: number
}
interface ModelRef {
  path: string
  architecture: string
  stored_dtype: string
  parameters: number
  rope_theta_effective: number
  ppl: Record<'fp32' | 'fp64' | 'stored_dtype_compute' | 'int4_rtn_g128' | 'int4_rtn_g32', number>
  mean_nll: Record<string, number>
  window_nll: Record<string, number[]>
  logits: { file: string; tensors: string[]; dtype: string; fp32_vs_fp64_max_abs: number }
  greedy_fp32: { new_ids: number[]; min_top1_margin: number }[]
  tensor_stats: Record<string, TensorStat>
  int4_rtn_exact_ties: Record<string, number>
  int4_rtn_error: Record<string, Record<string, { mse: number; max_abs: number }>>
  rtn_example: {
    tensor: string
    group: number
    row: number
    w: number[]
    q: number[]
    scale: number[]
    min: number[]
    w_dequantized: number[]
  }
}
interface Reference {
  smoke: boolean
  versions: Record<string, string>
  heldout: { file: string; sha256: string; tokens: number; windows: number; windows_evaluated: number; predicted_tokens: number; first_ids: number[] }
  prompts: { text: string; ids: number[] }[]
  int4_rtn: { formula: string }
  models: Record<ModelKey, ModelRef>
}

const ref = JSON.parse(readFileSync(join(REF_DIR, 'reference.json'), 'utf8')) as Reference
const readJson = (rel: string): any => JSON.parse(readFileSync(join(ROOT, rel), 'utf8'))

interface HeaderEntry {
  dtype: string
  shape: number[]
  data_offsets: [number, number]
}
interface SafetensorsHeader {
  dataStart: number
  size: number
  tensors: Record<string, HeaderEntry>
}

/** Reads only the header of a .safetensors file (8-byte length + JSON), by byte range. */
async function readHeader(path: string): Promise<SafetensorsHeader> {
  const src = await FileByteSource.open(path)
  try {
    const lenBytes = await src.read(0, 8)
    const len = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true))
    const json = JSON.parse(new TextDecoder().decode(await src.read(8, len))) as Record<string, unknown>
    delete json.__metadata__
    return { dataStart: 8 + len, size: src.size, tensors: json as unknown as Record<string, HeaderEntry> }
  } finally {
    await src.close()
  }
}

/** Decodes elements [first, first + count) of one tensor to float32, reading only those bytes. */
async function readElements(path: string, header: SafetensorsHeader, name: string, first = 0, count?: number): Promise<Float32Array> {
  const e = header.tensors[name]!
  if (!isPlainDType(e.dtype)) throw new Error(`unexpected dtype ${e.dtype}`)
  const width = PLAIN_DTYPE_BYTES[e.dtype]
  const n = count ?? e.shape.reduce((a, b) => a * b, 1)
  const src = await FileByteSource.open(path)
  try {
    const bytes = await src.read(header.dataStart + e.data_offsets[0] + first * width, n * width)
    return decodePlain(e.dtype, bytes, new Float32Array(n))
  } finally {
    await src.close()
  }
}

/** Every tensor a Llama/Qwen2 decoder must have, with its shape, derived from config.json. */
function expectedTensors(config: any, withBias: boolean): Map<string, number[]> {
  const h = config.hidden_size as number
  const heads = config.num_attention_heads as number
  const kv = config.num_key_value_heads as number
  const hd = (config.head_dim as number | undefined) ?? h / heads
  const inter = config.intermediate_size as number
  const out = new Map<string, number[]>([
    ['model.embed_tokens.weight', [config.vocab_size, h]],
    ['model.norm.weight', [h]],
  ])
  if (!config.tie_word_embeddings) out.set('lm_head.weight', [config.vocab_size, h])
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `model.layers.${i}`
    out.set(`${p}.input_layernorm.weight`, [h])
    out.set(`${p}.post_attention_layernorm.weight`, [h])
    out.set(`${p}.self_attn.q_proj.weight`, [heads * hd, h])
    out.set(`${p}.self_attn.k_proj.weight`, [kv * hd, h])
    out.set(`${p}.self_attn.v_proj.weight`, [kv * hd, h])
    out.set(`${p}.self_attn.o_proj.weight`, [h, heads * hd])
    out.set(`${p}.mlp.gate_proj.weight`, [inter, h])
    out.set(`${p}.mlp.up_proj.weight`, [inter, h])
    out.set(`${p}.mlp.down_proj.weight`, [h, inter])
    if (withBias) {
      out.set(`${p}.self_attn.q_proj.bias`, [heads * hd])
      out.set(`${p}.self_attn.k_proj.bias`, [kv * hd])
      out.set(`${p}.self_attn.v_proj.bias`, [kv * hd])
    }
  }
  return out
}

/** Header entries must tile the data area exactly: sorted, contiguous, sized by dtype × shape. */
function expectContiguous(header: SafetensorsHeader): void {
  const entries = Object.entries(header.tensors).sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0])
  let pos = 0
  for (const [name, e] of entries) {
    expect(e.data_offsets[0], name).toBe(pos)
    const bytes = e.shape.reduce((a, b) => a * b, 1) * PLAIN_DTYPE_BYTES[e.dtype as keyof typeof PLAIN_DTYPE_BYTES]
    expect(e.data_offsets[1] - e.data_offsets[0], name).toBe(bytes)
    pos = e.data_offsets[1]
  }
  expect(header.dataStart + pos).toBe(header.size)
}

/** float64 statistics the obvious way, to compare with the PyTorch float64 numbers. */
function stats64(v: Float32Array): { min: number; max: number; mean: number; std: number; absmax: number } {
  let min = Infinity
  let max = -Infinity
  let sum = 0
  for (const x of v) {
    if (x < min) min = x
    if (x > max) max = x
    sum += x
  }
  const mean = sum / v.length
  let ss = 0
  for (const x of v) ss += (x - mean) ** 2
  return { min, max, mean, std: Math.sqrt(ss / v.length), absmax: Math.max(-min, max) }
}

/** The fixture's int4 RTN formula, one float32 rounding per operation (Math.fround). */
function rtnGroup(w: ArrayLike<number>): { q: number[]; scale: number; min: number; deq: number[] } {
  const f = Math.fround
  let lo = Infinity
  let hi = -Infinity
  for (let i = 0; i < w.length; i++) {
    lo = Math.min(lo, w[i]!)
    hi = Math.max(hi, w[i]!)
  }
  let scale = f((hi - lo) / 15)
  if (!(scale > 0)) scale = 1
  const q: number[] = []
  const deq: number[] = []
  for (let i = 0; i < w.length; i++) {
    const v = f(f(w[i]! - lo) / scale)
    const qi = Math.min(15, Math.max(0, Math.floor(f(v + 0.5))))
    q.push(qi)
    deq.push(f(f(qi * scale) + lo))
  }
  return { q, scale, min: lo, deq }
}

const modelKeys = Object.keys(MODELS) as ModelKey[]

describe('reference fixture', () => {
  it('is a full run made with transformers, not a smoke run', () => {
    expect(ref.smoke).toBe(false)
    expect(ref.versions.transformers).toMatch(/^\d+\.\d+/)
    expect(ref.versions.torch).toMatch(/^\d+\.\d+/)
    expect(ref.int4_rtn.formula).toContain('floor((w - m) / scale + 0.5)')
  })

  it('held-out text is the one the numbers were computed on', () => {
    const bytes = readFileSync(join(ROOT, ref.heldout.file))
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(ref.heldout.sha256)
    expect(ref.heldout.windows).toBe(Math.floor(ref.heldout.tokens / 256))
    expect(ref.heldout.windows_evaluated).toBe(ref.heldout.windows)
    expect(ref.heldout.predicted_tokens).toBe(ref.heldout.windows * 255)
    expect(ref.heldout.windows).toBeGreaterThanOrEqual(100)
  })

  for (const key of modelKeys) {
    describe(key, () => {
      const m = ref.models[key]

      it('perplexities are finite, trained, and ordered fp ≤ int4 g32 ≤ int4 g128', () => {
        for (const v of Object.values(m.ppl)) {
          expect(Number.isFinite(v)).toBe(true)
          expect(v).toBeGreaterThan(1)
        }
        // A trained model is far from uniform over the 8192-token vocabulary.
        expect(m.ppl.fp32).toBeLessThan(100)
        expect(Math.abs(m.ppl.fp64 / m.ppl.fp32 - 1)).toBeLessThan(1e-5)
        expect(Math.abs(m.ppl.stored_dtype_compute / m.ppl.fp32 - 1)).toBeLessThan(1e-2)
        expect(m.ppl.int4_rtn_g32).toBeLessThanOrEqual(m.ppl.int4_rtn_g128 * (1 + 1e-3))
        expect(m.ppl.int4_rtn_g32).toBeGreaterThanOrEqual(m.ppl.fp32 * (1 - 1e-3))
        expect(m.ppl.int4_rtn_g128).toBeGreaterThanOrEqual(m.ppl.fp32 * (1 - 1e-3))
        // …but 4-bit RTN of a well-trained small model stays within a few percent.
        expect(m.ppl.int4_rtn_g128 / m.ppl.fp32).toBeLessThan(1.2)
      })

      it('per-window NLLs average to the stored perplexity', () => {
        const w = m.window_nll.fp32!
        expect(w.length).toBe(ref.heldout.windows)
        const mean = w.reduce((a, b) => a + b, 0) / w.length
        expect(mean).toBeCloseTo(m.mean_nll.fp32!, 10)
        expect(Math.exp(mean) / m.ppl.fp32).toBeCloseTo(1, 10)
        for (const k of ['int4_rtn_g128', 'int4_rtn_g32', 'fp64']) expect(m.window_nll[k]!.length).toBe(16)
      })

      it('every decoder linear has an int4 error entry for both group sizes', () => {
        const names = Object.keys(m.int4_rtn_error)
        const config = readJson(`${m.path}/config.json`)
        expect(names.length).toBe(7 * config.num_hidden_layers)
        for (const n of names) {
          expect(n).toMatch(/\.(q|k|v|o|gate|up|down)_proj\.weight$/)
          const { g32, g128 } = m.int4_rtn_error[n] as any
          expect(g32.mse).toBeGreaterThan(0)
          // Smaller groups never have a larger range, hence never a larger step size.
          expect(g32.mse).toBeLessThanOrEqual(g128.mse * 1.05)
        }
      })
    })
  }
})

describe('shipped model files', () => {
  it('default: Llama in bf16, one model.safetensors matching config.json', async () => {
    const dir = join(ROOT, MODELS.default)
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) {
      expect(existsSync(join(dir, f)), f).toBe(true)
    }
    const config = readJson(`${MODELS.default}/config.json`)
    expect(config.model_type).toBe('llama')
    expect(config.architectures).toEqual(['LlamaForCausalLM'])
    expect(config.num_key_value_heads).toBeLessThan(config.num_attention_heads) // GQA
    expect(config.hidden_act).toBe('silu') // SwiGLU
    expect(config.rope_parameters.rope_theta).toBeGreaterThan(0)

    const header = await readHeader(join(dir, 'model.safetensors'))
    const expected = expectedTensors(config, false)
    expect(new Set(Object.keys(header.tensors))).toEqual(new Set(expected.keys()))
    let params = 0
    for (const [name, shape] of expected) {
      expect(header.tensors[name]!.shape, name).toEqual(shape)
      expect(header.tensors[name]!.dtype, name).toBe('BF16')
      params += shape.reduce((a, b) => a * b, 1)
    }
    expectContiguous(header)
    expect(params).toBe(ref.models.default.parameters)
    expect(params).toBeGreaterThanOrEqual(8e6)
    expect(params).toBeLessThanOrEqual(25e6)
    expect(ref.models.default.stored_dtype).toBe('bfloat16')
    expect(ref.models.default.rope_theta_effective / config.rope_parameters.rope_theta).toBeCloseTo(1, 5)
  })

  it('qwen2-tiny: Qwen2 in fp16, tied embeddings, q/k/v bias, ≥ 3 shards listed by the index', async () => {
    const dir = join(ROOT, MODELS['qwen2-tiny'])
    const config = readJson(`${MODELS['qwen2-tiny']}/config.json`)
    expect(config.model_type).toBe('qwen2')
    expect(config.tie_word_embeddings).toBe(true)
    const index = readJson(`${MODELS['qwen2-tiny']}/model.safetensors.index.json`)
    const shards = [...new Set(Object.values(index.weight_map as Record<string, string>))].sort()
    expect(shards.length).toBeGreaterThanOrEqual(3)
    expect(readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort()).toEqual(shards)

    const expected = expectedTensors(config, true)
    expect(new Set(Object.keys(index.weight_map))).toEqual(new Set(expected.keys()))
    let params = 0
    for (const shard of shards) {
      const header = await readHeader(join(dir, shard))
      expectContiguous(header)
      const listed = Object.entries(index.weight_map).filter(([, f]) => f === shard).map(([n]) => n)
      expect(new Set(Object.keys(header.tensors)), shard).toEqual(new Set(listed))
      for (const [name, e] of Object.entries(header.tensors)) {
        expect(e.shape, name).toEqual(expected.get(name))
        expect(e.dtype, name).toBe('F16')
        params += e.shape.reduce((a, b) => a * b, 1)
      }
    }
    expect(params).toBe(index.metadata.total_parameters)
    expect(params).toBe(ref.models['qwen2-tiny'].parameters)
    expect(params).toBeGreaterThanOrEqual(1e6)
    expect(params).toBeLessThanOrEqual(5e6)
    expect(ref.models['qwen2-tiny'].rope_theta_effective / config.rope_parameters.rope_theta).toBeCloseTo(1, 5)
  })

  it('everything shipped for the models fits in 40 MB', () => {
    const du = (p: string): number => {
      const s = statSync(p)
      return s.isDirectory() ? readdirSync(p).reduce((a, f) => a + du(join(p, f)), 0) : s.size
    }
    const total = ['resources/models', 'resources/eval', 'test/fixtures/reference']
      .map((p) => du(join(ROOT, p)))
      .reduce((a, b) => a + b, 0)
    expect(total).toBeLessThanOrEqual(40e6)
  })
})

describe('tokenizer: @huggingface/tokenizers gives the ids transformers gave', () => {
  let tokenizer: Tokenizer
  beforeAll(() => {
    tokenizer = new Tokenizer(readJson(`${MODELS.default}/tokenizer.json`), readJson(`${MODELS.default}/tokenizer_config.json`))
  })

  it('both model folders ship the same tokenizer', () => {
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      expect(readFileSync(join(ROOT, MODELS['qwen2-tiny'], f)).equals(readFileSync(join(ROOT, MODELS.default, f)))).toBe(true)
    }
  })

  it('encodes the three prompts to exactly the fixture ids, and decodes them back', () => {
    expect(ref.prompts.length).toBe(3)
    for (const p of ref.prompts) {
      expect(p.ids.length).toBeLessThanOrEqual(32)
      expect(tokenizer.encode(p.text, { add_special_tokens: false }).ids).toEqual(p.ids)
      expect(tokenizer.encode(p.text).ids).toEqual(p.ids) // no BOS/EOS is ever added
      expect(tokenizer.decode(p.ids)).toBe(p.text)
    }
  })

  it('tokenizes the held-out text to the recorded token count', () => {
    const text = readFileSync(join(ROOT, ref.heldout.file), 'utf8')
    const ids = tokenizer.encode(text, { add_special_tokens: false }).ids
    expect(ids.length).toBe(ref.heldout.tokens)
    expect(ids.slice(0, ref.heldout.first_ids.length)).toEqual(ref.heldout.first_ids)
  })
})

describe('logits fixtures', () => {
  for (const key of modelKeys) {
    it(`${key}: one F32 [positions, vocab] tensor per prompt, argmax = first greedy token`, async () => {
      const m = ref.models[key]
      const vocab = readJson(`${m.path}/config.json`).vocab_size as number
      const path = join(ROOT, m.logits.file)
      const header = await readHeader(path)
      expectContiguous(header)
      expect(Object.keys(header.tensors).sort()).toEqual(m.logits.tensors)
      expect(m.logits.fp32_vs_fp64_max_abs).toBeLessThan(1e-3)
      for (let i = 0; i < ref.prompts.length; i++) {
        const name = `prompt${i}`
        const e = header.tensors[name]!
        expect(e.dtype).toBe('F32')
        expect(e.shape).toEqual([ref.prompts[i]!.ids.length, vocab])
        const last = await readElements(path, header, name, (e.shape[0]! - 1) * vocab, vocab)
        let best = 0
        for (let j = 1; j < vocab; j++) if (last[j]! > last[best]!) best = j
        expect(last.every(Number.isFinite)).toBe(true)
        expect(best).toBe(m.greedy_fp32[i]!.new_ids[0])
      }
    })
  }
})

describe('tensor statistics recomputed from the raw bytes', () => {
  const picks: Record<ModelKey, string[]> = {
    default: ['model.norm.weight', 'model.layers.0.input_layernorm.weight', 'model.layers.3.self_attn.k_proj.weight', 'model.layers.7.mlp.down_proj.weight'],
    'qwen2-tiny': ['model.layers.0.self_attn.q_proj.bias', 'model.layers.2.self_attn.v_proj.bias', 'model.layers.3.mlp.down_proj.weight'],
  }
  for (const key of modelKeys) {
    for (const name of picks[key]) {
      it(`${key} ${name}`, async () => {
        const s = ref.models[key].tensor_stats[name]!
        const path = join(ROOT, MODELS[key], s.file)
        const header = await readHeader(path)
        expect(header.tensors[name]!.shape).toEqual(s.shape)
        const v = await readElements(path, header, name)
        expect(v.length).toBe(s.numel)
        const got = stats64(v)
        expect(got.min).toBe(s.min)
        expect(got.max).toBe(s.max)
        expect(got.absmax).toBe(s.absmax)
        expect(Math.abs(got.mean - s.mean)).toBeLessThanOrEqual(1e-12 * Math.max(1, s.absmax))
        expect(Math.abs(got.std / s.std - 1)).toBeLessThan(1e-9)
      })
    }
  }

  it('every stored tensor has statistics, with consistent fields', () => {
    for (const key of modelKeys) {
      for (const [name, s] of Object.entries(ref.models[key].tensor_stats)) {
        expect(s.numel, name).toBe(s.shape.reduce((a, b) => a * b, 1))
        expect(s.min, name).toBeLessThanOrEqual(s.mean)
        expect(s.mean, name).toBeLessThanOrEqual(s.max)
        expect(s.absmax, name).toBe(Math.max(-s.min, s.max))
        expect(s.std, name).toBeGreaterThanOrEqual(0)
      }
    }
  })
})

describe('int4 RTN formula reproduces bit for bit in float32', () => {
  for (const key of modelKeys) {
    it(`${key}: ${ref.models[key].rtn_example.tensor}, row 0, two groups of 32`, async () => {
      const ex = ref.models[key].rtn_example
      const s = ref.models[key].tensor_stats[ex.tensor]!
      const path = join(ROOT, MODELS[key], s.file)
      const header = await readHeader(path)
      const w = await readElements(path, header, ex.tensor, 0, 2 * ex.group)
      expect(Array.from(w)).toEqual(ex.w)
      for (let g = 0; g < 2; g++) {
        const got = rtnGroup(w.subarray(g * ex.group, (g + 1) * ex.group))
        expect(got.scale).toBe(ex.scale[g])
        expect(got.min).toBe(ex.min[g])
        expect(got.q).toEqual(ex.q.slice(g * ex.group, (g + 1) * ex.group))
        expect(got.deq).toEqual(ex.w_dequantized.slice(g * ex.group, (g + 1) * ex.group))
      }
    })
  }

  // Whole tensors: about 0.2% of bf16/fp16 weights sit exactly on a rounding tie, so these
  // only match if ties go up as the formula says.
  const whole: [ModelKey, string][] = [
    ['default', 'model.layers.3.self_attn.k_proj.weight'],
    ['qwen2-tiny', 'model.layers.1.mlp.down_proj.weight'],
  ]
  for (const [key, name] of whole) {
    it(`${key} ${name}: quantization error of the whole tensor matches, g128 and g32`, async () => {
      const s = ref.models[key].tensor_stats[name]!
      const path = join(ROOT, MODELS[key], s.file)
      const w = await readElements(path, await readHeader(path), name)
      const cols = s.shape[1]!
      for (const g of [128, 32]) {
        let se = 0
        let maxAbs = 0
        for (let start = 0; start < w.length; start += g) {
          expect(start % cols + g).toBeLessThanOrEqual(cols) // groups never straddle rows
          const group = w.subarray(start, start + g)
          const { deq } = rtnGroup(group)
          for (let i = 0; i < g; i++) {
            const d = deq[i]! - group[i]!
            se += d * d
            maxAbs = Math.max(maxAbs, Math.abs(d))
          }
        }
        const want = ref.models[key].int4_rtn_error[name]![`g${g}`]!
        expect(maxAbs).toBe(want.max_abs)
        expect(se / w.length / want.mse).toBeCloseTo(1, 9)
      }
    })
  }

  it('a constant group keeps its value exactly (scale guard)', () => {
    const got = rtnGroup(new Float32Array(32).fill(0.25))
    expect(got.q.every((q) => q === 0)).toBe(true)
    expect(got.deq.every((x) => x === 0.25)).toBe(true)
  })
})
