/**
 * Converts a Hugging Face llama folder (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json) with a byte-level BPE tokenizer to GGUF, the way llama.cpp's
 * convert_hf_to_gguf.py does for such a model: linear weights kept in their dtype (bf16),
 * 1-D norms as F32, q/k rows permuted for llama.cpp's RoPE, and the tokenizer as
 * tokenizer.ggml.* metadata (get_vocab_base + SpecialVocab). Written with the independent
 * test GGUF writer (gguf-writer.ts).
 */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import { arr, buildGguf, f32, str, u32, type GgufKv, type GgufWriterTensor } from './gguf-writer'

/** gguf-py TokenType. */
export const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const

interface HfTokenizerJson {
  added_tokens: { id: number; content: string; special: boolean }[]
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] }
}

interface HfTokenizerConfig {
  bos_token?: string | null
  eos_token?: string | null
  add_bos_token?: boolean
  add_eos_token?: boolean
}

/**
 * tokenizer.ggml.* key/values for a byte-level BPE tokenizer.json, as convert_hf_to_gguf.py
 * writes them; `pre` is the pre-tokenizer name its hash detection would choose.
 */
export function bpeTokenizerKv(tok: HfTokenizerJson, cfg: HfTokenizerConfig, vocabSize: number, pre: string | null): Array<[string, GgufKv]> {
  if (tok.model.type !== 'BPE') throw new Error(`hf-to-gguf: tokenizer model is ${tok.model.type}, not BPE`)
  const byId = new Map<number, string>()
  for (const [t, id] of Object.entries(tok.model.vocab)) byId.set(id, t)
  const added = new Map(tok.added_tokens.map((a) => [a.id, a]))
  for (const a of tok.added_tokens) byId.set(a.id, a.content)
  const tokens: string[] = []
  const types: number[] = []
  for (let i = 0; i < vocabSize; i++) {
    const t = byId.get(i)
    if (t === undefined) {
      tokens.push(`[PAD${i}]`)
      types.push(TOKEN_TYPE.UNUSED)
    } else {
      tokens.push(t)
      types.push(added.has(i) ? (added.get(i)!.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED) : TOKEN_TYPE.NORMAL)
    }
  }
  const merges = tok.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m))
  const idOf = (content: string | null | undefined): number | null => {
    if (!content) return null
    const i = tokens.indexOf(content)
    return i < 0 ? null : i
  }
  const kv: Array<[string, GgufKv]> = [['tokenizer.ggml.model', str('gpt2')]]
  if (pre !== null) kv.push(['tokenizer.ggml.pre', str(pre)])
  kv.push(['tokenizer.ggml.tokens', arr('STRING', tokens)], ['tokenizer.ggml.token_type', arr('INT32', types)], ['tokenizer.ggml.merges', arr('STRING', merges)])
  const bos = idOf(cfg.bos_token)
  const eos = idOf(cfg.eos_token)
  if (bos !== null) kv.push(['tokenizer.ggml.bos_token_id', u32(bos)])
  if (eos !== null) kv.push(['tokenizer.ggml.eos_token_id', u32(eos)])
  if (cfg.add_bos_token !== undefined) kv.push(['tokenizer.ggml.add_bos_token', { type: 'BOOL', value: cfg.add_bos_token }])
  if (cfg.add_eos_token !== undefined) kv.push(['tokenizer.ggml.add_eos_token', { type: 'BOOL', value: cfg.add_eos_token }])
  return kv
}

/** convert_hf_to_gguf.py's LlamaModel.permute on whole rows of 2-byte values: out[h, i, j] = w[h, j, i]. */
function permuteRows(raw: Uint8Array, heads: number, rows: number, rowBytes: number): Uint8Array {
  const half = rows / heads / 2
  const out = new Uint8Array(raw.length)
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < 2; j++)
      for (let i = 0; i < half; i++) {
        const from = (h * 2 + j) * half + i
        const to = (h * half + i) * 2 + j
        out.set(raw.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes)
      }
  return out
}

const GGML_F32 = 0
const GGML_BF16 = 30

/** Writes `dir` (an HF llama folder with bf16 weights) as a GGUF file at `out`. */
export async function convertHfLlamaToGguf(dir: string, out: string, opts: { pre: string | null }): Promise<void> {
  const model = await openModel(dir)
  try {
    const c = model.config
    if (!c || c.architecture !== 'llama') throw new Error(`hf-to-gguf: ${dir} is not a llama model`)
    const tok = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as HfTokenizerJson
    const cfg = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8')) as HfTokenizerConfig
    const names: Array<[string, string, number | null]> = [['model.embed_tokens.weight', 'token_embd.weight', null]]
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}`
      names.push(
        [`${p}.input_layernorm.weight`, `blk.${l}.attn_norm.weight`, null],
        [`${p}.self_attn.q_proj.weight`, `blk.${l}.attn_q.weight`, c.numHeads],
        [`${p}.self_attn.k_proj.weight`, `blk.${l}.attn_k.weight`, c.numKvHeads],
        [`${p}.self_attn.v_proj.weight`, `blk.${l}.attn_v.weight`, null],
        [`${p}.self_attn.o_proj.weight`, `blk.${l}.attn_output.weight`, null],
        [`${p}.post_attention_layernorm.weight`, `blk.${l}.ffn_norm.weight`, null],
        [`${p}.mlp.gate_proj.weight`, `blk.${l}.ffn_gate.weight`, null],
        [`${p}.mlp.up_proj.weight`, `blk.${l}.ffn_up.weight`, null],
        [`${p}.mlp.down_proj.weight`, `blk.${l}.ffn_down.weight`, null],
      )
    }
    names.push(['model.norm.weight', 'output_norm.weight', null])
    if (!c.tieWordEmbeddings) names.push(['lm_head.weight', 'output.weight', null])

    const tensors: GgufWriterTensor[] = []
    for (const [hf, gguf, heads] of names) {
      const entry = model.tensors.find((t) => t.name === hf)
      if (!entry) throw new Error(`hf-to-gguf: no tensor ${hf}`)
      if (entry.shape.length === 1) {
        const values = await model.readRows(hf, 0, 1)
        tensors.push({ name: gguf, ne: [entry.shape[0]!], type: GGML_F32, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) })
        continue
      }
      if (entry.dtype !== 'BF16') throw new Error(`hf-to-gguf: ${hf} is ${entry.dtype}, expected BF16`)
      const [rows, cols] = entry.shape as [number, number]
      let raw = await model.readRaw(hf)
      if (heads !== null) raw = permuteRows(raw, heads, rows, cols * 2)
      tensors.push({ name: gguf, ne: [cols, rows], type: GGML_BF16, data: raw })
    }
    const kv: Array<[string, GgufKv]> = [
      ['general.architecture', str('llama')],
      ['general.name', str('default')],
      ['llama.block_count', u32(c.numLayers)],
      ['llama.context_length', u32(c.maxPositionEmbeddings ?? 2048)],
      ['llama.embedding_length', u32(c.hiddenSize)],
      ['llama.feed_forward_length', u32(c.intermediateSize)],
      ['llama.attention.head_count', u32(c.numHeads)],
      ['llama.attention.head_count_kv', u32(c.numKvHeads)],
      ['llama.rope.freq_base', f32(c.ropeTheta)],
      ['llama.attention.layer_norm_rms_epsilon', f32(c.rmsNormEps)],
      ['llama.vocab_size', u32(c.vocabSize)],
      ['llama.rope.dimension_count', u32(c.headDim)],
      ...bpeTokenizerKv(tok, cfg, c.vocabSize, opts.pre),
    ]
    await writeFile(out, buildGguf({ kv, tensors }))
  } finally {
    await model.close()
  }
}
