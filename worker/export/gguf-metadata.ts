/**
 * What llama.cpp's convert_hf_to_gguf.py writes for a Hugging Face llama-like model, besides the
 * weights: architecture key/values (llama-arch.cpp LLM_KV_*), the tokenizer as tokenizer.ggml.*
 * (get_vocab_base + gguf.SpecialVocab), llama.cpp's tensor names (gguf-py tensor_mapping.py)
 * and the q/k row order of LlamaModel.permute.
 *
 * Architectures: 'llama' and 'mistral' (both written as llama.cpp's 'llama', as the converter
 * does, with q/k permuted), 'qwen2' (its own arch, q/k/v biases, NEOX RoPE so no permutation).
 */
import type { ModelConfig } from '../formats/contract'
import { arr, bool, f32, str, u32, type GgufKv } from '../formats/gguf/writer'

/** gguf-py TokenType. */
export const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const

export interface HfTokenizerJson {
  added_tokens?: { id: number; content: string; special: boolean }[]
  model: { type: string; vocab: Record<string, number>; merges?: (string | [string, string])[] }
  pre_tokenizer?: unknown
}

export interface HfTokenizerConfig {
  bos_token?: string | null | { content: string }
  eos_token?: string | null | { content: string }
  unk_token?: string | null | { content: string }
  pad_token?: string | null | { content: string }
  add_bos_token?: boolean
  add_eos_token?: boolean
}

/** The GGUF architecture name and whether q/k rows are permuted (llama.cpp's RoPE on adjacent pairs). */
export function ggufArchitecture(config: ModelConfig, file: string): { arch: 'llama' | 'qwen2'; permuteQK: boolean } {
  switch (config.architecture) {
    case 'llama':
    case 'mistral':
      return { arch: 'llama', permuteQK: true }
    case 'qwen2':
      return { arch: 'qwen2', permuteQK: false }
    default:
      throw new Error(`${file}: GGUF export supports llama, mistral and qwen2 models; this one is '${config.architecture}'`)
  }
}

/** One HF tensor and its GGUF name; `heads` is set where rows are permuted (q: heads, k: kv heads). */
export interface GgufTensorName {
  hf: string
  gguf: string
  heads: number | null
}

/** HF → llama.cpp tensor names in the converter's order (tensor_mapping.py). */
export function ggufTensorNames(config: ModelConfig, permuteQK: boolean): GgufTensorName[] {
  const names: GgufTensorName[] = [{ hf: 'model.embed_tokens.weight', gguf: 'token_embd.weight', heads: null }]
  const qHeads = permuteQK ? config.numHeads : null
  const kHeads = permuteQK ? config.numKvHeads : null
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}`
    const b = `blk.${l}`
    names.push(
      { hf: `${p}.input_layernorm.weight`, gguf: `${b}.attn_norm.weight`, heads: null },
      { hf: `${p}.self_attn.q_proj.weight`, gguf: `${b}.attn_q.weight`, heads: qHeads },
      { hf: `${p}.self_attn.k_proj.weight`, gguf: `${b}.attn_k.weight`, heads: kHeads },
      { hf: `${p}.self_attn.v_proj.weight`, gguf: `${b}.attn_v.weight`, heads: null },
    )
    if (config.attentionBias) {
      names.push(
        { hf: `${p}.self_attn.q_proj.bias`, gguf: `${b}.attn_q.bias`, heads: qHeads },
        { hf: `${p}.self_attn.k_proj.bias`, gguf: `${b}.attn_k.bias`, heads: kHeads },
        { hf: `${p}.self_attn.v_proj.bias`, gguf: `${b}.attn_v.bias`, heads: null },
      )
    }
    names.push(
      { hf: `${p}.self_attn.o_proj.weight`, gguf: `${b}.attn_output.weight`, heads: null },
      { hf: `${p}.post_attention_layernorm.weight`, gguf: `${b}.ffn_norm.weight`, heads: null },
      { hf: `${p}.mlp.gate_proj.weight`, gguf: `${b}.ffn_gate.weight`, heads: null },
      { hf: `${p}.mlp.up_proj.weight`, gguf: `${b}.ffn_up.weight`, heads: null },
      { hf: `${p}.mlp.down_proj.weight`, gguf: `${b}.ffn_down.weight`, heads: null },
    )
  }
  names.push({ hf: 'model.norm.weight', gguf: 'output_norm.weight', heads: null })
  if (!config.tieWordEmbeddings) names.push({ hf: 'lm_head.weight', gguf: 'output.weight', heads: null })
  return names
}

/** HF tensors the converter drops (recomputed by llama.cpp). */
export function isSkippedHfTensor(name: string): boolean {
  return name.endsWith('.rotary_emb.inv_freq')
}

/**
 * LlamaModel.permute on whole rows of `rowBytes` bytes (float rows or ggml block rows alike):
 * GGUF row h·d + 2i + j holds HF row h·d + j·d/2 + i. Per-row quantization commutes with it,
 * because ggml blocks run along a row.
 */
export function permuteRowsToGguf(raw: Uint8Array, heads: number, rows: number, rowBytes: number, what: string): Uint8Array {
  if (rows % (2 * heads) !== 0) throw new Error(`${what}: ${rows} rows do not split into ${heads} heads of an even size`)
  if (raw.length !== rows * rowBytes) throw new Error(`${what}: ${raw.length} bytes is not ${rows} rows of ${rowBytes}`)
  const half = rows / heads / 2
  const out = new Uint8Array(raw.length)
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const from = (h * 2 + j) * half + i
        const to = (h * half + i) * 2 + j
        out.set(raw.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes)
      }
    }
  }
  return out
}

/** Architecture key/values as convert_hf_to_gguf.py writes them (set_gguf_parameters). */
export function architectureKv(config: ModelConfig, arch: string, name: string): Array<[string, GgufKv]> {
  return [
    ['general.architecture', str(arch)],
    ['general.name', str(name)],
    [`${arch}.block_count`, u32(config.numLayers)],
    [`${arch}.context_length`, u32(config.maxPositionEmbeddings ?? 2048)],
    [`${arch}.embedding_length`, u32(config.hiddenSize)],
    [`${arch}.feed_forward_length`, u32(config.intermediateSize)],
    [`${arch}.attention.head_count`, u32(config.numHeads)],
    [`${arch}.attention.head_count_kv`, u32(config.numKvHeads)],
    [`${arch}.rope.freq_base`, f32(config.ropeTheta)],
    [`${arch}.attention.layer_norm_rms_epsilon`, f32(config.rmsNormEps)],
    [`${arch}.attention.key_length`, u32(config.headDim)],
    [`${arch}.attention.value_length`, u32(config.headDim)],
    [`${arch}.vocab_size`, u32(config.vocabSize)],
    [`${arch}.rope.dimension_count`, u32(config.headDim)],
  ]
}

/**
 * The tokenizer.ggml.pre name convert_hf_to_gguf.py would pick. It hashes the tokenization of
 * a check text against known tokenizers; here only the unambiguous case is recognised — a bare
 * ByteLevel pre-tokenizer with GPT-2's regex is 'gpt-2' — and any other needs an explicit name.
 */
export function detectPreTokenizer(tok: HfTokenizerJson, file: string): string {
  const p = tok.pre_tokenizer as { type?: unknown; use_regex?: unknown } | null | undefined
  if (p && typeof p === 'object' && p.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2'
  throw new Error(
    `${file}: cannot tell llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) of pre_tokenizer ${JSON.stringify(p ?? null).slice(0, 120)}; ` +
      "give it explicitly (e.g. 'llama-bpe', 'qwen2', 'gpt-2')",
  )
}

function tokenContent(t: HfTokenizerConfig['bos_token']): string | null {
  if (t === undefined || t === null) return null
  return typeof t === 'string' ? t : t.content
}

/**
 * tokenizer.ggml.* key/values for a byte-level BPE tokenizer.json, as convert_hf_to_gguf.py
 * writes them: tokens padded to the model's vocabulary with [PAD<i>] (UNUSED), added tokens
 * CONTROL when special else USER_DEFINED, merges as "a b", special ids from tokenizer_config.
 */
export function bpeTokenizerKv(tok: HfTokenizerJson, cfg: HfTokenizerConfig, vocabSize: number, pre: string | null, file = 'tokenizer.json'): Array<[string, GgufKv]> {
  if (tok.model.type !== 'BPE') throw new Error(`${file}: tokenizer model is ${tok.model.type}; GGUF export writes byte-level BPE tokenizers only`)
  const byId = new Map<number, string>()
  for (const [t, id] of Object.entries(tok.model.vocab)) byId.set(id, t)
  const addedTokens = tok.added_tokens ?? []
  const added = new Map(addedTokens.map((a) => [a.id, a]))
  for (const a of addedTokens) byId.set(a.id, a.content)
  for (const id of byId.keys()) {
    if (id >= vocabSize) throw new Error(`${file}: token id ${id} is beyond the model's vocabulary of ${vocabSize}`)
  }
  const tokens: string[] = []
  const types: number[] = []
  for (let i = 0; i < vocabSize; i++) {
    const t = byId.get(i)
    if (t === undefined) {
      tokens.push(`[PAD${i}]`)
      types.push(TOKEN_TYPE.UNUSED)
    } else {
      tokens.push(t)
      const a = added.get(i)
      types.push(a ? (a.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED) : TOKEN_TYPE.NORMAL)
    }
  }
  const merges = (tok.model.merges ?? []).map((m) => (Array.isArray(m) ? m.join(' ') : m))
  const index = new Map<string, number>()
  tokens.forEach((t, i) => {
    if (!index.has(t)) index.set(t, i)
  })
  const idOf = (t: HfTokenizerConfig['bos_token']): number | null => {
    const content = tokenContent(t)
    return content === null ? null : (index.get(content) ?? null)
  }
  const kv: Array<[string, GgufKv]> = [['tokenizer.ggml.model', str('gpt2')]]
  if (pre !== null) kv.push(['tokenizer.ggml.pre', str(pre)])
  kv.push(['tokenizer.ggml.tokens', arr('STRING', tokens)], ['tokenizer.ggml.token_type', arr('INT32', types)], ['tokenizer.ggml.merges', arr('STRING', merges)])
  const special: Array<[string, number | null]> = [
    ['tokenizer.ggml.bos_token_id', idOf(cfg.bos_token)],
    ['tokenizer.ggml.eos_token_id', idOf(cfg.eos_token)],
    ['tokenizer.ggml.unknown_token_id', idOf(cfg.unk_token)],
    ['tokenizer.ggml.padding_token_id', idOf(cfg.pad_token)],
  ]
  for (const [key, id] of special) if (id !== null) kv.push([key, u32(id)])
  if (cfg.add_bos_token !== undefined) kv.push(['tokenizer.ggml.add_bos_token', bool(cfg.add_bos_token)])
  if (cfg.add_eos_token !== undefined) kv.push(['tokenizer.ggml.add_eos_token', bool(cfg.add_eos_token)])
  return kv
}
