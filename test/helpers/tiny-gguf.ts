import { writeFile } from 'node:fs/promises'
import { f32ToF16 } from '../../worker/formats/dtypes'
import type { RefConfig } from './reference-forward'

/**
 * Writes a llama / qwen2 GGUF (v3) file from HF-named float64 weights, the way llama.cpp's
 * convert_hf_to_gguf.py lays it out: tensor names blk.N.attn_q …, dims innermost first, and
 * for llama the q/k rows permuted for its RoPE. Linear weights can be stored as Q8_0; the
 * values the file really holds (after quantization) are returned in HF layout, for the
 * float64 reference.
 */
const ALIGN = 32

class Bytes {
  private parts: Uint8Array[] = []
  length = 0
  push(b: Uint8Array): void {
    this.parts.push(b)
    this.length += b.length
  }
  u32(v: number): void {
    const b = new Uint8Array(4)
    new DataView(b.buffer).setUint32(0, v, true)
    this.push(b)
  }
  u64(v: number): void {
    const b = new Uint8Array(8)
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true)
    this.push(b)
  }
  f32(v: number): void {
    const b = new Uint8Array(4)
    new DataView(b.buffer).setFloat32(0, v, true)
    this.push(b)
  }
  str(s: string): void {
    const e = new TextEncoder().encode(s)
    this.u64(e.length)
    this.push(e)
  }
  pad(): void {
    const n = (ALIGN - (this.length % ALIGN)) % ALIGN
    if (n) this.push(new Uint8Array(n))
  }
  concat(): Uint8Array {
    const out = new Uint8Array(this.length)
    let o = 0
    for (const p of this.parts) {
      out.set(p, o)
      o += p.length
    }
    return out
  }
}

function q8_0(values: Float64Array): { bytes: Uint8Array; dequant: Float64Array } {
  const blocks = values.length / 32
  const bytes = new Uint8Array(blocks * 34)
  const dv = new DataView(bytes.buffer)
  const dequant = new Float64Array(values.length)
  for (let b = 0; b < blocks; b++) {
    let amax = 0
    for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(values[b * 32 + i]!))
    const dBits = f32ToF16(amax / 127)
    dv.setUint16(b * 34, dBits, true)
    const d = f16(dBits)
    for (let i = 0; i < 32; i++) {
      const q = d === 0 ? 0 : Math.max(-127, Math.min(127, Math.round(values[b * 32 + i]! / d)))
      dv.setInt8(b * 34 + 2 + i, q)
      dequant[b * 32 + i] = q * d
    }
  }
  return { bytes, dequant }
}

function f16(h: number): number {
  const e = (h >> 10) & 31
  const f = h & 1023
  const s = h & 0x8000 ? -1 : 1
  return e === 0 ? s * f * 2 ** -24 : s * (1 + f / 1024) * 2 ** (e - 15)
}

export interface GgufWriteOptions {
  architecture: 'llama' | 'qwen2'
  /** Store linear weights (not embeddings/norms) as Q8_0. */
  q8?: boolean
}

export async function writeTinyGguf(path: string, cfg: RefConfig, hf: Map<string, Float64Array>, opts: GgufWriteOptions): Promise<Map<string, Float64Array>> {
  const arch = opts.architecture
  const d = cfg.hidden / cfg.heads
  const stored = new Map<string, Float64Array>(hf) // what the file holds, back in HF layout
  const tensors: { name: string; shape: number[]; type: number; bytes: Uint8Array }[] = []
  /** `linear`: a [rows, cols] matrix (Q8_0-able unless it is the embedding); else a vector. */
  const add = (gguf: string, hfName: string, linear: boolean, permuteHeads?: number): void => {
    const v = hf.get(hfName)
    if (!v) throw new Error(`tiny-gguf: no ${hfName}`)
    const isEmbed = hfName.includes('embed_tokens')
    const isMatrix = linear || isEmbed
    const rows = isEmbed ? cfg.vocab : isMatrix ? rowsOf(hfName, cfg) : 1
    const cols = v.length / rows
    let data = v
    if (permuteHeads !== undefined && arch === 'llama') data = permute(v, permuteHeads, d, isMatrix ? cols : 1)
    const shape = isMatrix ? [rows, cols] : [v.length]
    if (opts.q8 && linear && cols % 32 === 0) {
      const { bytes, dequant } = q8_0(data)
      tensors.push({ name: gguf, shape, type: 8, bytes })
      stored.set(hfName, permuteHeads !== undefined && arch === 'llama' ? unpermute(dequant, permuteHeads, d, cols) : dequant)
    } else {
      const f = Float32Array.from(data)
      tensors.push({ name: gguf, shape, type: 0, bytes: new Uint8Array(f.buffer) })
      stored.set(hfName, Float64Array.from(Float32Array.from(v)))
    }
  }
  add('token_embd.weight', 'model.embed_tokens.weight', false)
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}`
    add(`blk.${l}.attn_norm.weight`, `${p}.input_layernorm.weight`, false)
    add(`blk.${l}.attn_q.weight`, `${p}.self_attn.q_proj.weight`, true, cfg.heads)
    add(`blk.${l}.attn_k.weight`, `${p}.self_attn.k_proj.weight`, true, cfg.kvHeads)
    add(`blk.${l}.attn_v.weight`, `${p}.self_attn.v_proj.weight`, true)
    if (cfg.bias) {
      add(`blk.${l}.attn_q.bias`, `${p}.self_attn.q_proj.bias`, false, cfg.heads)
      add(`blk.${l}.attn_k.bias`, `${p}.self_attn.k_proj.bias`, false, cfg.kvHeads)
      add(`blk.${l}.attn_v.bias`, `${p}.self_attn.v_proj.bias`, false)
    }
    add(`blk.${l}.attn_output.weight`, `${p}.self_attn.o_proj.weight`, true)
    add(`blk.${l}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`, false)
    add(`blk.${l}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`, true)
    add(`blk.${l}.ffn_up.weight`, `${p}.mlp.up_proj.weight`, true)
    add(`blk.${l}.ffn_down.weight`, `${p}.mlp.down_proj.weight`, true)
  }
  add('output_norm.weight', 'model.norm.weight', false)
  if (!cfg.tied) add('output.weight', 'lm_head.weight', true)

  const out = new Bytes()
  out.u32(0x46554747)
  out.u32(3)
  out.u64(tensors.length)
  const kv: [string, 'u32' | 'f32' | 'str', number | string][] = [
    ['general.architecture', 'str', arch],
    [`${arch}.block_count`, 'u32', cfg.layers],
    [`${arch}.context_length`, 'u32', 512],
    [`${arch}.embedding_length`, 'u32', cfg.hidden],
    [`${arch}.feed_forward_length`, 'u32', cfg.intermediate],
    [`${arch}.attention.head_count`, 'u32', cfg.heads],
    [`${arch}.attention.head_count_kv`, 'u32', cfg.kvHeads],
    [`${arch}.attention.layer_norm_rms_epsilon`, 'f32', cfg.eps],
    [`${arch}.rope.freq_base`, 'f32', cfg.theta],
    ['tokenizer.ggml.eos_token_id', 'u32', 2],
  ]
  out.u64(kv.length)
  for (const [key, type, value] of kv) {
    out.str(key)
    if (type === 'u32') {
      out.u32(4)
      out.u32(value as number)
    } else if (type === 'f32') {
      out.u32(6)
      out.f32(value as number)
    } else {
      out.u32(8)
      out.str(value as string)
    }
  }
  let offset = 0
  const offsets: number[] = []
  for (const t of tensors) {
    out.str(t.name)
    out.u32(t.shape.length)
    for (const dim of [...t.shape].reverse()) out.u64(dim)
    out.u32(t.type)
    out.u64(offset)
    offsets.push(offset)
    offset += Math.ceil(t.bytes.length / ALIGN) * ALIGN
  }
  out.pad()
  for (const t of tensors) {
    out.push(t.bytes)
    out.pad()
  }
  await writeFile(path, out.concat())
  return stored
}

function rowsOf(hfName: string, cfg: RefConfig): number {
  const d = cfg.hidden / cfg.heads
  if (hfName.includes('q_proj')) return cfg.heads * d
  if (hfName.includes('k_proj') || hfName.includes('v_proj')) return cfg.kvHeads * d
  if (hfName.includes('o_proj') || hfName.includes('down_proj')) return cfg.hidden
  if (hfName.includes('gate_proj') || hfName.includes('up_proj')) return cfg.intermediate
  if (hfName.includes('lm_head')) return cfg.vocab
  throw new Error(`tiny-gguf: rows of ${hfName}?`)
}

function unpermute(v: Float64Array, heads: number, d: number, cols: number): Float64Array {
  const half = d / 2
  const out = new Float64Array(v.length)
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) out.set(v.subarray((h * d + 2 * i + j) * cols, (h * d + 2 * i + j + 1) * cols), (h * d + j * half + i) * cols)
  return out
}

/**
 * convert_hf_to_gguf.py's LlamaModel.permute, index by index:
 * w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2) → out[h, i, j] = w[h, j, i].
 */
function permute(w: Float64Array, heads: number, d: number, cols: number): Float64Array {
  const out = new Float64Array(w.length)
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < 2; j++)
      for (let i = 0; i < d / 2; i++)
        for (let c = 0; c < cols; c++) out[((h * (d / 2) + i) * 2 + j) * cols + c] = w[((h * 2 + j) * (d / 2) + i) * cols + c]!
  return out
}
