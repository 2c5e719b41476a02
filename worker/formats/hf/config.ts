import { ModelFormatError } from '../../common/errors'
import type { ModelConfig } from '../contract'

/**
 * Hugging Face `config.json` → ModelConfig for the llama family (llama, mistral, qwen2 and
 * their close relatives). Configs differ across transformers versions; each fallback below
 * names the variant it exists for.
 */

/** Families whose decoder block is RMSNorm → GQA attention (RoPE) → RMSNorm → SwiGLU MLP. */
export const LLAMA_LIKE_ARCHITECTURES = ['llama', 'mistral', 'qwen2'] as const

export function parseHfConfig(raw: unknown, file: string): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ModelFormatError(file, null, 'config.json is not a JSON object')
  }
  let c = raw as Record<string, unknown>
  // Multimodal wrappers (e.g. Mistral3, Qwen2-VL) keep the language model under text_config.
  if (typeof c.text_config === 'object' && c.text_config !== null && c.hidden_size === undefined) {
    c = { ...(c.text_config as Record<string, unknown>), tie_word_embeddings: c.tie_word_embeddings ?? (c.text_config as Record<string, unknown>).tie_word_embeddings }
  }
  const architecture = typeof c.model_type === 'string' ? c.model_type : inferFromArchitectures(c.architectures)
  if (!architecture) throw new ModelFormatError(file, null, 'config.json has neither model_type nor architectures')

  const int = (key: string, fallback?: number): number => {
    const v = c[key]
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback
      throw new ModelFormatError(file, null, `config.json lacks '${key}'`)
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
      throw new ModelFormatError(file, null, `config.json '${key}' = ${JSON.stringify(v)} is not a positive integer`)
    }
    return v
  }
  const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined)

  const hiddenSize = int('hidden_size')
  const numHeads = int('num_attention_heads')
  const numKvHeads = int('num_key_value_heads', numHeads)
  // Mistral configs may carry "head_dim": null, meaning hidden/heads.
  const headDim = int('head_dim', hiddenSize / numHeads)
  if (numHeads % numKvHeads !== 0) {
    throw new ModelFormatError(file, null, `num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`)
  }
  if (!Number.isInteger(headDim)) {
    throw new ModelFormatError(file, null, `hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`)
  }

  // transformers ≥ 4.56 / 5 moved rope_theta into rope_parameters; older ones have it at the top.
  const ropeParams = (c.rope_parameters ?? null) as Record<string, unknown> | null
  const ropeScaling = (c.rope_scaling ?? null) as Record<string, unknown> | null
  const ropeTheta = num(c.rope_theta) ?? num(ropeParams?.rope_theta) ?? num(ropeScaling?.rope_theta) ?? 10000
  const scaling = pickRopeScaling(ropeParams) ?? pickRopeScaling(ropeScaling)

  // torch_dtype was renamed dtype in transformers 4.56.
  const dtype = typeof c.dtype === 'string' ? c.dtype : typeof c.torch_dtype === 'string' ? c.torch_dtype : null

  return {
    architecture,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    rmsNormEps: num(c.rms_norm_eps) ?? 1e-6,
    ropeTheta,
    maxPositionEmbeddings: num(c.max_position_embeddings) ?? null,
    // LlamaConfig and Qwen2Config both default to untied; many checkpoints set it explicitly.
    tieWordEmbeddings: c.tie_word_embeddings === true,
    // Qwen2 always has q/k/v bias; llama exposes it as attention_bias.
    attentionBias: architecture === 'qwen2' || c.attention_bias === true,
    dtype,
    ropeScaling: scaling,
  }
}

function pickRopeScaling(p: Record<string, unknown> | null): Record<string, unknown> | null {
  if (!p) return null
  const type = p.rope_type ?? p.type
  if (type === undefined || type === 'default') return null
  return p
}

function inferFromArchitectures(archs: unknown): string | null {
  if (!Array.isArray(archs) || typeof archs[0] !== 'string') return null
  const a = archs[0].toLowerCase()
  for (const name of LLAMA_LIKE_ARCHITECTURES) if (a.startsWith(name)) return name
  return a.replace(/forcausallm$/, '')
}
