import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { writeSafetensorsFile, type SafetensorsTensorSpec } from '../../worker/formats/safetensors/writer'
import { f32ToBF16, f32ToF16 } from '../../worker/formats/dtypes'

/** Deterministic PRNG (mulberry32) so fixtures are identical on every machine: the engine's own. */
export { seededRandom as rng } from '../../worker/inference/sampler'
import { seededRandom as rng } from '../../worker/inference/sampler'

/** Standard normal samples via Box–Muller. */
export function gaussian(n: number, seed: number, scale = 1): Float64Array {
  const r = rng(seed)
  const out = new Float64Array(n)
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(r(), 1e-12)
    const v = r()
    const m = Math.sqrt(-2 * Math.log(u)) * scale
    out[i] = m * Math.cos(2 * Math.PI * v)
    if (i + 1 < n) out[i + 1] = m * Math.sin(2 * Math.PI * v)
  }
  return out
}

export function encode(dtype: string, values: ArrayLike<number>): Uint8Array {
  const n = values.length
  switch (dtype) {
    case 'F32':
      return new Uint8Array(Float32Array.from(values).buffer)
    case 'F64':
      return new Uint8Array(Float64Array.from(values).buffer)
    case 'F16': {
      const u = new Uint16Array(n)
      for (let i = 0; i < n; i++) u[i] = f32ToF16(values[i]!)
      return new Uint8Array(u.buffer)
    }
    case 'BF16': {
      const u = new Uint16Array(n)
      for (let i = 0; i < n; i++) u[i] = f32ToBF16(values[i]!)
      return new Uint8Array(u.buffer)
    }
    default:
      throw new Error(`encode: unsupported dtype ${dtype}`)
  }
}

export interface TinyLlamaOptions {
  hidden?: number
  layers?: number
  heads?: number
  kvHeads?: number
  intermediate?: number
  vocab?: number
  dtype?: 'F32' | 'F16' | 'BF16'
  tied?: boolean
  modelType?: string
  seed?: number
}

/** The tensor list of an HF llama checkpoint with the given sizes. */
export function llamaSpecs(o: Required<TinyLlamaOptions>): SafetensorsTensorSpec[] {
  const hd = o.hidden / o.heads
  const specs: SafetensorsTensorSpec[] = [{ name: 'model.embed_tokens.weight', dtype: o.dtype, shape: [o.vocab, o.hidden] }]
  for (let l = 0; l < o.layers; l++) {
    const p = `model.layers.${l}`
    specs.push(
      { name: `${p}.input_layernorm.weight`, dtype: o.dtype, shape: [o.hidden] },
      { name: `${p}.self_attn.q_proj.weight`, dtype: o.dtype, shape: [o.heads * hd, o.hidden] },
      { name: `${p}.self_attn.k_proj.weight`, dtype: o.dtype, shape: [o.kvHeads * hd, o.hidden] },
      { name: `${p}.self_attn.v_proj.weight`, dtype: o.dtype, shape: [o.kvHeads * hd, o.hidden] },
      { name: `${p}.self_attn.o_proj.weight`, dtype: o.dtype, shape: [o.hidden, o.heads * hd] },
      { name: `${p}.post_attention_layernorm.weight`, dtype: o.dtype, shape: [o.hidden] },
      { name: `${p}.mlp.gate_proj.weight`, dtype: o.dtype, shape: [o.intermediate, o.hidden] },
      { name: `${p}.mlp.up_proj.weight`, dtype: o.dtype, shape: [o.intermediate, o.hidden] },
      { name: `${p}.mlp.down_proj.weight`, dtype: o.dtype, shape: [o.hidden, o.intermediate] },
    )
  }
  specs.push({ name: 'model.norm.weight', dtype: o.dtype, shape: [o.hidden] })
  if (!o.tied) specs.push({ name: 'lm_head.weight', dtype: o.dtype, shape: [o.vocab, o.hidden] })
  return specs
}

/**
 * Writes a small random llama-family HF folder (config.json + model.safetensors) and
 * returns the float64 values written for each tensor (after rounding to the dtype), so
 * tests can compare against an exact reference.
 */
export async function writeTinyLlama(dir: string, opts: TinyLlamaOptions = {}): Promise<Map<string, Float64Array>> {
  const o: Required<TinyLlamaOptions> = {
    hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 64, vocab: 96,
    dtype: 'F16', tied: false, modelType: 'llama', seed: 1, ...opts,
  }
  await mkdir(dir, { recursive: true })
  const specs = llamaSpecs(o)
  const values = new Map<string, Float64Array>()
  await writeSafetensorsFile(join(dir, 'model.safetensors'), specs, (spec, i) => {
    const n = spec.shape.reduce((a, b) => a * b, 1)
    const isNorm = spec.shape.length === 1
    const v = isNorm ? Float64Array.from({ length: n }, (_, j) => 1 + 0.01 * j) : gaussian(n, o.seed * 1000 + i, 0.05)
    const bytes = encode(spec.dtype, v)
    values.set(spec.name, roundTrip(spec.dtype, v))
    return bytes
  })
  await writeFile(
    join(dir, 'config.json'),
    JSON.stringify({
      architectures: ['LlamaForCausalLM'], model_type: o.modelType, hidden_size: o.hidden,
      intermediate_size: o.intermediate, num_hidden_layers: o.layers, num_attention_heads: o.heads,
      num_key_value_heads: o.kvHeads, vocab_size: o.vocab, rms_norm_eps: 1e-5, rope_theta: 10000,
      max_position_embeddings: 512, tie_word_embeddings: o.tied, torch_dtype: o.dtype === 'F32' ? 'float32' : o.dtype === 'F16' ? 'float16' : 'bfloat16',
    }),
  )
  return values
}

function roundTrip(dtype: string, v: Float64Array): Float64Array {
  const bytes = encode(dtype, v)
  const out = new Float64Array(v.length)
  const dv = new DataView(bytes.buffer)
  for (let i = 0; i < v.length; i++) {
    if (dtype === 'F32') out[i] = dv.getFloat32(i * 4, true)
    else if (dtype === 'F64') out[i] = dv.getFloat64(i * 8, true)
    else if (dtype === 'BF16') out[i] = new Float32Array(new Uint32Array([dv.getUint16(i * 2, true) << 16]).buffer)[0]!
    else {
      // Independent binary16 decode (not the engine's table) so the test can catch its bugs.
      const h = dv.getUint16(i * 2, true)
      const e = (h >> 10) & 31
      const f = h & 1023
      const s = h & 0x8000 ? -1 : 1
      out[i] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15)
    }
  }
  return out
}
