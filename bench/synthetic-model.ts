import { copyFile, mkdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { f32ToF16 } from '../worker/formats/dtypes'
import { writeSafetensorsFile, type SafetensorsTensorSpec } from '../worker/formats/safetensors/writer'

/**
 * A deterministic llama-shaped fp16 model for benchmarks (Qwen2-0.5B geometry: hidden 896,
 * 24 layers, 14 heads / 2 KV heads, MLP 4864, vocab 151936, tied embeddings: ~1 GB).
 * Values come from a seeded PRNG through per-role lookup tables of normal samples, with a few
 * outlier input channels per matrix (as real LLM weights have). Generated once into
 * os.tmpdir() and reused by later runs. The default model's byte-level BPE tokenizer (8192
 * tokens) is copied beside it, because the GGUF export carries a tokenizer (the GGUF pads the
 * vocabulary to 151936 with unused tokens, as convert_hf_to_gguf.py does).
 */
export interface SyntheticModelShape {
  hidden: number
  layers: number
  heads: number
  kvHeads: number
  mlp: number
  vocab: number
}

export const FULL_SHAPE: SyntheticModelShape = { hidden: 896, layers: 24, heads: 14, kvHeads: 2, mlp: 4864, vocab: 151936 }
/** --quick: same widths, fewer layers and a smaller vocabulary (~190 MB). */
export const QUICK_SHAPE: SyntheticModelShape = { ...FULL_SHAPE, layers: 6, vocab: 32000 }

export interface SyntheticModel {
  dir: string
  /** Stored weight bytes (the safetensors data section). */
  weightBytes: number
  tensors: SafetensorsTensorSpec[]
  /** False when it was already on disk. */
  generated: boolean
}

const VERSION = 'v1'

export function syntheticModelDir(quick: boolean): string {
  return join(tmpdir(), `quantscope-bench-synth-${VERSION}${quick ? '-quick' : ''}`)
}

export function syntheticTensors(s: SyntheticModelShape): SafetensorsTensorSpec[] {
  const headDim = s.hidden / s.heads
  const kv = s.kvHeads * headDim
  const out: SafetensorsTensorSpec[] = [{ name: 'model.embed_tokens.weight', dtype: 'F16', shape: [s.vocab, s.hidden] }]
  for (let i = 0; i < s.layers; i++) {
    const p = `model.layers.${i}`
    out.push(
      { name: `${p}.input_layernorm.weight`, dtype: 'F16', shape: [s.hidden] },
      { name: `${p}.self_attn.q_proj.weight`, dtype: 'F16', shape: [s.hidden, s.hidden] },
      { name: `${p}.self_attn.k_proj.weight`, dtype: 'F16', shape: [kv, s.hidden] },
      { name: `${p}.self_attn.v_proj.weight`, dtype: 'F16', shape: [kv, s.hidden] },
      { name: `${p}.self_attn.o_proj.weight`, dtype: 'F16', shape: [s.hidden, s.hidden] },
      { name: `${p}.post_attention_layernorm.weight`, dtype: 'F16', shape: [s.hidden] },
      { name: `${p}.mlp.gate_proj.weight`, dtype: 'F16', shape: [s.mlp, s.hidden] },
      { name: `${p}.mlp.up_proj.weight`, dtype: 'F16', shape: [s.mlp, s.hidden] },
      { name: `${p}.mlp.down_proj.weight`, dtype: 'F16', shape: [s.hidden, s.mlp] },
    )
  }
  out.push({ name: 'model.norm.weight', dtype: 'F16', shape: [s.hidden] })
  return out
}

function hfConfig(s: SyntheticModelShape): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: s.hidden,
    intermediate_size: s.mlp,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    max_position_embeddings: 32768,
    tie_word_embeddings: true,
    torch_dtype: 'float16',
  }
}

/** xorshift32: fast and deterministic; quality is plenty for table lookups. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9
  return () => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return x >>> 0
  }
}

/** 65536 fp16 samples of Normal(mean, std), indexed by 16 random bits. */
function normalTable(seed: number, mean: number, std: number): Uint16Array {
  const next = xorshift(seed)
  const t = new Uint16Array(65536)
  for (let i = 0; i < t.length; i++) {
    const u1 = (next() + 1) / 4294967297
    const u2 = next() / 4294967296
    t[i] = f32ToF16(mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2))
  }
  return t
}

function roleOf(name: string): { mean: number; std: number; outlierGain: number } {
  if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') return { mean: 1, std: 0.05, outlierGain: 1 }
  if (name.includes('embed_tokens')) return { mean: 0, std: 0.015, outlierGain: 8 }
  if (name.includes('down_proj')) return { mean: 0, std: 0.012, outlierGain: 12 }
  return { mean: 0, std: 0.02, outlierGain: 10 }
}

/** The bytes of tensor `index`: normal weights, ~0.5% of input channels scaled up. */
function tensorBytes(spec: SafetensorsTensorSpec, index: number, tables: Map<string, Uint16Array>): Uint8Array {
  const cols = spec.shape.at(-1)!
  const rows = spec.shape.length > 1 ? spec.shape[0]! : 1
  const role = roleOf(spec.name)
  const table = (mean: number, std: number) => {
    const key = `${mean}/${std}`
    let t = tables.get(key)
    if (!t) tables.set(key, (t = normalTable(tables.size + 1, mean, std)))
    return t
  }
  const normal = table(role.mean, role.std)
  const outlier = table(role.mean, role.std * role.outlierGain)
  const next = xorshift(0x51ed270b + index * 7919)
  const isOutlier = new Uint8Array(cols)
  if (role.outlierGain > 1) for (let k = 0; k < Math.max(1, cols >> 8); k++) isOutlier[next() % cols] = 1
  const out = new Uint16Array(rows * cols)
  for (let r = 0, o = 0; r < rows; r++) {
    for (let c = 0; c < cols; c += 2, o += 2) {
      const bits = next()
      out[o] = (isOutlier[c] ? outlier : normal)[bits & 0xffff]!
      if (c + 1 < cols) out[o + 1] = (isOutlier[c + 1] ? outlier : normal)[bits >>> 16]!
      else o--
    }
  }
  return new Uint8Array(out.buffer)
}

/** Returns the cached synthetic model, generating it first if it is not complete on disk. */
export async function ensureSyntheticModel(quick: boolean, log: (m: string) => void = () => {}): Promise<SyntheticModel> {
  const shape = quick ? QUICK_SHAPE : FULL_SHAPE
  const dir = syntheticModelDir(quick)
  const tensors = syntheticTensors(shape)
  const weightBytes = tensors.reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1) * 2, 0)
  const weights = join(dir, 'model.safetensors')
  const config = join(dir, 'config.json')
  // config.json is written last, so its presence means the weights are complete.
  const complete = await Promise.all([stat(weights), stat(config)]).then(
    ([w]) => w.size > weightBytes,
    () => false,
  )
  if (complete) {
    await copyTokenizer(dir)
    return { dir, weightBytes, tensors, generated: false }
  }

  log(`generating synthetic model (${(weightBytes / 1e9).toFixed(2)} GB fp16) in ${dir} …`)
  const t0 = performance.now()
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  const tables = new Map<string, Uint16Array>()
  await writeSafetensorsFile(weights, tensors, (spec, i) => tensorBytes(spec, i, tables), { format: 'pt', generator: `quantscope-bench-synth-${VERSION}` })
  await copyTokenizer(dir)
  await writeFile(config, JSON.stringify(hfConfig(shape), null, 2))
  log(`generated in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  return { dir, weightBytes, tensors, generated: true }
}

const TOKENIZER_SOURCE = fileURLToPath(new URL('../resources/models/default/', import.meta.url))

/** tokenizer.json and tokenizer_config.json of the default model, unless already there (folders generated before the export bench have none). */
async function copyTokenizer(dir: string): Promise<void> {
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    const to = join(dir, f)
    if (!(await stat(to).then(() => true, () => false))) await copyFile(join(TOKENIZER_SOURCE, f), to)
  }
}
