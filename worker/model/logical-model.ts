import type { OpenedModel } from '../formats/contract'

/**
 * The logical view of a decoder model, independent of the file format: blocks with their
 * linear weights by role, norms, embeddings and lm_head. Built from tensor names (HF,
 * GGUF and common ONNX exporter conventions); an unknown naming scheme still yields a
 * model whose tensors are all `unassigned`, i.e. a flat list.
 */
export type LinearRole = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down'
export const LINEAR_ROLES: readonly LinearRole[] = Object.freeze(['q', 'k', 'v', 'o', 'gate', 'up', 'down'])

/** Roles a tensor can have. Linear roles may carry a `_bias` suffix for their bias vector. */
export type TensorRole =
  | LinearRole
  | `${LinearRole}_bias`
  | 'qkv'
  | 'gate_up'
  | 'attn_norm'
  | 'mlp_norm'
  | 'q_norm'
  | 'k_norm'
  | 'embed'
  | 'lm_head'
  | 'final_norm'

export interface LogicalBlock {
  index: number
  linears: Partial<Record<LinearRole, string>>
  norms: Record<string, string>
  others: string[]
}

export interface LogicalModel {
  architecture: string | null
  blocks: LogicalBlock[]
  embeddings: string | null
  lmHead: string | null
  tiedEmbeddings: boolean
  finalNorm: string | null
  unassigned: string[]
}

export interface TensorClass {
  layer: number | null
  role: TensorRole | null
}

// Layer index: HF "layers.3", GGUF "blk.3", GPT-style "h.3", ONNX node paths "/layers.3/".
const LAYER_PATTERN = /(?:^|[./_])(?:layers|blk|h|block|blocks|decoder\.layer)[._/](\d+)(?=[./_]|$)/

// Ordered: first match wins. Each entry names the conventions it covers.
const ROLE_PATTERNS: readonly [RegExp, TensorRole][] = [
  // HF llama/mistral/qwen2; GGUF; onnxruntime-genai builder node names.
  [/(?:q_proj|attn_q|self_attn[./]q)(?![a-z_])/, 'q'],
  [/(?:k_proj|attn_k|self_attn[./]k)(?![a-z_])/, 'k'],
  [/(?:v_proj|attn_v|self_attn[./]v)(?![a-z_])/, 'v'],
  [/(?:o_proj|attn_output|out_proj|dense)(?![a-z_])/, 'o'],
  [/(?:qkv_proj|attn_qkv|c_attn|query_key_value)(?![a-z_])/, 'qkv'],
  [/(?:gate_up_proj)(?![a-z_])/, 'gate_up'],
  [/(?:gate_proj|ffn_gate|w1)(?![a-z_0-9])/, 'gate'],
  [/(?:up_proj|ffn_up|w3|c_fc)(?![a-z_0-9])/, 'up'],
  [/(?:down_proj|ffn_down|w2|mlp[./]c_proj)(?![a-z_0-9])/, 'down'],
  [/(?:q_norm|attn_q_norm)(?![a-z_])/, 'q_norm'],
  [/(?:k_norm|attn_k_norm)(?![a-z_])/, 'k_norm'],
  [/(?:input_layernorm|attn_norm|ln_1)(?![a-z_])/, 'attn_norm'],
  [/(?:post_attention_layernorm|ffn_norm|ln_2)(?![a-z_])/, 'mlp_norm'],
]

const GLOBAL_PATTERNS: readonly [RegExp, TensorRole][] = [
  [/(?:embed_tokens|token_embd|wte|word_embeddings)(?![a-z_])/, 'embed'],
  [/(?:^|[./])(?:lm_head|output)(?:\.weight)?$/, 'lm_head'],
  [/(?:^|[./])(?:norm|output_norm|ln_f|final_layernorm)(?:\.weight)?$/, 'final_norm'],
]

const LINEAR_SET = new Set<string>(LINEAR_ROLES)

export function classifyTensor(name: string): TensorClass {
  const lower = name.toLowerCase()
  const layerMatch = LAYER_PATTERN.exec(lower)
  if (layerMatch) {
    const layer = Number(layerMatch[1])
    const rest = lower.slice(layerMatch.index + layerMatch[0].length)
    for (const [re, role] of ROLE_PATTERNS) {
      if (re.test(rest)) {
        const isBias = /(?:^|[._/])bias$/.test(rest)
        if (isBias && LINEAR_SET.has(role)) return { layer, role: `${role as LinearRole}_bias` }
        return { layer, role }
      }
    }
    return { layer, role: null }
  }
  for (const [re, role] of GLOBAL_PATTERNS) if (re.test(lower)) return { layer: null, role }
  return { layer: null, role: null }
}

export function describeModel(model: OpenedModel): LogicalModel {
  const blocks = new Map<number, LogicalBlock>()
  const out: LogicalModel = {
    architecture: model.architecture,
    blocks: [],
    embeddings: null,
    lmHead: null,
    tiedEmbeddings: false,
    finalNorm: null,
    unassigned: [],
  }
  // Stored parts a reader decodes into a virtual entry (a packed weight's codes and scales) are
  // that entry's storage, not tensors of their own role.
  const parts = new Set(model.tensors.flatMap((t) => t.derivedFrom ?? []))
  for (const t of model.tensors) {
    if (parts.has(t.name)) continue
    let cls = classifyTensor(t.name)
    if (cls.role === null && t.alias) cls = classifyTensor(t.alias)
    if (cls.layer !== null) {
      let block = blocks.get(cls.layer)
      if (!block) {
        block = { index: cls.layer, linears: {}, norms: {}, others: [] }
        blocks.set(cls.layer, block)
      }
      const role = cls.role
      if (role && LINEAR_SET.has(role) && t.shape.length === 2 && block.linears[role as LinearRole] === undefined) {
        block.linears[role as LinearRole] = t.name
      } else if (role && role.endsWith('norm')) {
        block.norms[role] = t.name
      } else {
        block.others.push(t.name)
      }
      continue
    }
    if (cls.role === 'embed' && out.embeddings === null) out.embeddings = t.name
    else if (cls.role === 'lm_head' && out.lmHead === null) out.lmHead = t.name
    else if (cls.role === 'final_norm' && out.finalNorm === null) out.finalNorm = t.name
    else out.unassigned.push(t.name)
  }
  out.blocks = [...blocks.values()].sort((a, b) => a.index - b.index)
  out.tiedEmbeddings = out.lmHead === null && out.embeddings !== null && (model.config?.tieWordEmbeddings ?? true)
  return out
}
