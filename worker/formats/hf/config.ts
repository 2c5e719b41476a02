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
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new ModelFormatError(file, null, `config.json '${key}' = ${JSON.stringify(v)} is not a positive integer`)
    }
    return v
  }
  /**
   * A strictly positive finite number, or `fallback` when the key is absent (null counts as
   * absent). Anything else is refused, never replaced: a wrong epsilon or RoPE base changes
   * every logit and would be reported as a perplexity.
   */
  const positive = (where: Record<string, unknown> | null, key: string, label: string, fallback: number | undefined): number | undefined => {
    const v = where?.[key]
    if (v === undefined || v === null) return fallback
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new ModelFormatError(file, null, `config.json '${label}' = ${JSON.stringify(v)} is not a positive number`)
    }
    return v
  }

  const hiddenSize = int('hidden_size')
  const numHeads = int('num_attention_heads')
  const numKvHeads = int('num_key_value_heads', numHeads)
  // Mistral configs may carry "head_dim": null, meaning hidden/heads.
  const headDim = int('head_dim', hiddenSize / numHeads)
  if (numHeads % numKvHeads !== 0) {
    throw new ModelFormatError(file, null, `config.json 'num_attention_heads' ${numHeads} is not a multiple of 'num_key_value_heads' ${numKvHeads}`)
  }
  if (!Number.isInteger(headDim)) {
    throw new ModelFormatError(file, null, `config.json 'hidden_size' ${hiddenSize} is not divisible by 'num_attention_heads' ${numHeads}`)
  }

  // transformers ≥ 4.56 / 5 moved rope_theta into rope_parameters; older ones have it at the top.
  const ropeParams = objectOrNull(file, c, 'rope_parameters')
  const ropeScaling = objectOrNull(file, c, 'rope_scaling')
  const ropeTheta =
    positive(c, 'rope_theta', 'rope_theta', undefined) ??
    positive(ropeParams, 'rope_theta', 'rope_parameters.rope_theta', undefined) ??
    positive(ropeScaling, 'rope_theta', 'rope_scaling.rope_theta', 10000)!
  const scaling = pickRopeScaling(ropeParams) ?? pickRopeScaling(ropeScaling)
  if (scaling) {
    const label = scaling === ropeParams ? 'rope_parameters' : 'rope_scaling'
    for (const key of ['factor', 'original_max_position_embeddings', 'low_freq_factor', 'high_freq_factor']) {
      positive(scaling, key, `${label}.${key}`, undefined)
    }
  }
  const rmsNormEps = positive(c, 'rms_norm_eps', 'rms_norm_eps', 1e-6)!
  const maxPositions = c.max_position_embeddings === undefined || c.max_position_embeddings === null ? null : int('max_position_embeddings')

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
    rmsNormEps,
    ropeTheta,
    maxPositionEmbeddings: maxPositions,
    // LlamaConfig and Qwen2Config both default to untied; many checkpoints set it explicitly.
    tieWordEmbeddings: c.tie_word_embeddings === true,
    // Qwen2 always has q/k/v bias; llama exposes it as attention_bias.
    attentionBias: architecture === 'qwen2' || c.attention_bias === true,
    dtype,
    ropeScaling: scaling,
  }
}

function objectOrNull(file: string, c: Record<string, unknown>, key: string): Record<string, unknown> | null {
  const v = c[key]
  if (v === undefined || v === null) return null
  if (typeof v !== 'object' || Array.isArray(v)) throw new ModelFormatError(file, null, `config.json '${key}' = ${JSON.stringify(v)} is not an object`)
  return v as Record<string, unknown>
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
