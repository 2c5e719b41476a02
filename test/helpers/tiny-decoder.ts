import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { writeSafetensorsFile, type SafetensorsTensorSpec } from '../../worker/formats/safetensors/writer'
import { encode, gaussian, llamaSpecs, writeTinyLlama, type TinyLlamaOptions } from './tiny-llama'
import type { RefConfig } from './reference-forward'

/**
 * Random tiny decoders for the inference tests: llama/mistral through writeTinyLlama, and
 * qwen2 (q/k/v biases) written here with the same layout plus the bias vectors. Returns the
 * float64 values written (after dtype rounding) and the matching reference config.
 */
export interface TinyDecoder {
  dir: string
  values: Map<string, Float64Array>
  ref: RefConfig
}

export type TinyDecoderOptions = TinyLlamaOptions & { bias?: boolean }

const DEFAULTS = { hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 64, vocab: 96, dtype: 'F16' as const, tied: false, modelType: 'llama', seed: 1 }

export async function writeTinyDecoder(dir: string, opts: TinyDecoderOptions = {}): Promise<TinyDecoder> {
  const o = { ...DEFAULTS, ...opts }
  const ref: RefConfig = {
    hidden: o.hidden, layers: o.layers, heads: o.heads, kvHeads: o.kvHeads, intermediate: o.intermediate,
    vocab: o.vocab, eps: 1e-5, theta: 10000, tied: o.tied, bias: opts.bias ?? false,
  }
  if (!opts.bias) {
    const values = await writeTinyLlama(dir, opts)
    return { dir, values, ref }
  }
  await mkdir(dir, { recursive: true })
  const hd = o.hidden / o.heads
  const specs: SafetensorsTensorSpec[] = llamaSpecs(o)
  for (let l = 0; l < o.layers; l++) {
    const p = `model.layers.${l}.self_attn`
    specs.push(
      { name: `${p}.q_proj.bias`, dtype: o.dtype, shape: [o.heads * hd] },
      { name: `${p}.k_proj.bias`, dtype: o.dtype, shape: [o.kvHeads * hd] },
      { name: `${p}.v_proj.bias`, dtype: o.dtype, shape: [o.kvHeads * hd] },
    )
  }
  const values = new Map<string, Float64Array>()
  await writeSafetensorsFile(join(dir, 'model.safetensors'), specs, (spec, i) => {
    const n = spec.shape.reduce((a, b) => a * b, 1)
    const isNorm = spec.shape.length === 1 && !spec.name.endsWith('.bias')
    const v = isNorm ? gaussian(n, o.seed * 1000 + i, 0.1).map((x) => 1 + x) : gaussian(n, o.seed * 1000 + i, spec.name.endsWith('.bias') ? 0.3 : 0.05)
    const bytes = encode(spec.dtype, v)
    values.set(spec.name, decodeBack(spec.dtype, bytes, n))
    return bytes
  })
  await writeFile(
    join(dir, 'config.json'),
    JSON.stringify({
      architectures: ['Qwen2ForCausalLM'], model_type: o.modelType === 'llama' ? 'qwen2' : o.modelType, hidden_size: o.hidden,
      intermediate_size: o.intermediate, num_hidden_layers: o.layers, num_attention_heads: o.heads,
      num_key_value_heads: o.kvHeads, vocab_size: o.vocab, rms_norm_eps: 1e-5, rope_theta: 10000,
      max_position_embeddings: 512, tie_word_embeddings: o.tied, torch_dtype: o.dtype === 'F32' ? 'float32' : o.dtype === 'F16' ? 'float16' : 'bfloat16',
    }),
  )
  return { dir, values, ref }
}

function decodeBack(dtype: string, bytes: Uint8Array, n: number): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out = new Float64Array(n)
  for (let i = 0; i < n; i++) {
    if (dtype === 'F32') out[i] = dv.getFloat32(i * 4, true)
    else if (dtype === 'BF16') out[i] = new Float32Array(new Uint32Array([dv.getUint16(i * 2, true) << 16]).buffer)[0]!
    else {
      const h = dv.getUint16(i * 2, true)
      const e = (h >> 10) & 31
      const f = h & 1023
      const s = h & 0x8000 ? -1 : 1
      out[i] = e === 0 ? s * f * 2 ** -24 : s * (1 + f / 1024) * 2 ** (e - 15)
    }
  }
  return out
}

/** Random token ids in [0, vocab). */
export function randomTokens(n: number, vocab: number, seed: number): number[] {
  const g = gaussian(n, seed)
  return Array.from(g, (x, i) => Math.abs(Math.floor(x * 1000 + i * 7919)) % vocab)
}
