import type { ModelConfig, TensorEntry } from '../contract'
import { ModelFormatError } from '../../common/errors'
import type { GgufArraySummary, GgufValue } from './header'
import { LLAMA_LIKE_ARCHITECTURES } from '../hf/config'

/**
 * ModelConfig from `<arch>.*` metadata for the llama-like architectures; null for others
 * (they still open, as a flat tensor list). Key names follow llama.cpp's llama-arch.cpp.
 */
export function ggufConfig(file: string, meta: Record<string, GgufValue>, tensors: ReadonlyMap<string, TensorEntry>): ModelConfig | null {
  const arch = meta['general.architecture']
  if (typeof arch !== 'string' || !(LLAMA_LIKE_ARCHITECTURES as readonly string[]).includes(arch)) return null
  const fail = (problem: string): never => {
    throw new ModelFormatError(file, null, problem)
  }
  const lookup = (suffix: string): { key: string; value: GgufValue | undefined } => {
    const key = `${arch}.${suffix}`
    let value = meta[key]
    // Some converters write per-layer arrays; a uniform one is the same as a scalar.
    if (Array.isArray(value) && value.length > 0) {
      const first = value[0]
      if (value.every((x) => x === first)) value = first
    }
    return { key, value }
  }
  const int = (suffix: string, fallback?: number): number => {
    const { key, value } = lookup(suffix)
    if (value === undefined) return fallback ?? fail(`metadata lacks '${key}', which a ${arch} model needs`)
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
      return fail(`metadata '${key}' = ${JSON.stringify(value)} is not a positive integer`)
    }
    return value
  }
  const float = (suffix: string, fallback?: number): number => {
    const { key, value } = lookup(suffix)
    if (value === undefined) return fallback ?? fail(`metadata lacks '${key}', which a ${arch} model needs`)
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      return fail(`metadata '${key}' = ${JSON.stringify(value)} is not a positive number`)
    }
    return value
  }

  const hiddenSize = int('embedding_length')
  const numHeads = int('attention.head_count')
  const numKvHeads = int('attention.head_count_kv', numHeads)
  if (numHeads % numKvHeads !== 0) fail(`metadata '${arch}.attention.head_count' ${numHeads} is not a multiple of '${arch}.attention.head_count_kv' ${numKvHeads}`)
  const headDim = int('attention.key_length', hiddenSize / numHeads)
  if (!Number.isInteger(headDim)) fail(`metadata '${arch}.embedding_length' ${hiddenSize} is not divisible by '${arch}.attention.head_count' ${numHeads}`)

  const intermediateSize = int('feed_forward_length')
  const numLayers = int('block_count')
  const rmsNormEps = float('attention.layer_norm_rms_epsilon')

  const tokens = meta['tokenizer.ggml.tokens']
  const embedRows = tensors.get('token_embd.weight')?.shape[0]
  const vocabSize = isArraySummary(tokens)
    ? tokens.length
    : Array.isArray(tokens)
      ? tokens.length
      : meta[`${arch}.vocab_size`] !== undefined
        ? int('vocab_size')
        : embedRows ?? fail('cannot tell the vocabulary size: no tokenizer.ggml.tokens, vocab_size or token_embd.weight')

  // Checked here so a zero or negative factor is refused up front, like every other number.
  if (meta[`${arch}.rope.scaling.factor`] !== undefined) float('rope.scaling.factor')
  if (meta[`${arch}.rope.scaling.original_context_length`] !== undefined) int('rope.scaling.original_context_length')
  const context = meta[`${arch}.context_length`]
  return {
    architecture: arch,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps,
    ropeTheta: float('rope.freq_base', 10000),
    maxPositionEmbeddings: context === undefined ? null : int('context_length'),
    // llama.cpp falls back to token_embd when there is no separate output matrix.
    tieWordEmbeddings: !tensors.has('output.weight'),
    attentionBias: tensors.has('blk.0.attn_q.bias'),
    dtype: null,
    ropeScaling: ggufRopeScaling(arch, meta, tensors),
  }
}

/**
 * RoPE scaling as declared: `<arch>.rope.scaling.*` keys (linear / yarn …), or the
 * `rope_freqs.weight` tensor of per-dimension frequency factors that llama.cpp's converter
 * writes for Llama 3.1-style scaling instead of metadata.
 */
function ggufRopeScaling(arch: string, meta: Record<string, GgufValue>, tensors: ReadonlyMap<string, TensorEntry>): Record<string, unknown> | null {
  const type = meta[`${arch}.rope.scaling.type`]
  if (typeof type === 'string' && type !== 'none') {
    const out: Record<string, unknown> = { rope_type: type }
    const factor = meta[`${arch}.rope.scaling.factor`]
    const original = meta[`${arch}.rope.scaling.original_context_length`]
    if (factor !== undefined) out.factor = factor
    if (original !== undefined) out.original_max_position_embeddings = original
    return out
  }
  if (tensors.has('rope_freqs.weight')) return { rope_type: 'freq_factors', tensor: 'rope_freqs.weight' }
  return null
}

function isArraySummary(v: unknown): v is GgufArraySummary {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && (v as GgufArraySummary).type === 'array'
}
