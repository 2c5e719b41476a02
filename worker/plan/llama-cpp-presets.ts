/**
 * llama.cpp's quantization mixes (`llama-quantize model.gguf out.gguf Q4_K_M`) as plans: every
 * tensor gets the ggml type llama-quantize would choose, so a user starts from the mix they know
 * and edits it, and the GGUF export writes the same types.
 *
 * Source: src/llama-quant.cpp of ggml-org/llama.cpp — the ftype's default type
 * (llama_model_quantize_impl), llama_tensor_get_type_impl's rules for dense models (attn_v,
 * ffn_down, attn_output, output/token_embd; the MoE, Falcon and IQ rules do not apply to the
 * types here) and tensor_type_fallback for rows that are not whole blocks. Not applied: the rule
 * for models llama.cpp recognises as 70B (attn_v Q3_K/Q4_K → Q5_K). Tensors it does not
 * quantize (1-D, norms) stay out of the plan.
 */
import type { OpenedModel } from '../formats/contract'
import { classifyTensor } from '../model/logical-model'
import type { GgmlQuantType } from '../quant/ggml'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, PlanError, type Plan, type PlanEntry } from './plan'

/** llama-quantize's ftype names that map to the ggml types of the library. */
export const LLAMA_CPP_PRESETS = ['Q2_K', 'Q3_K_S', 'Q3_K_M', 'Q3_K_L', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K_S', 'Q4_K_M', 'Q5_K_S', 'Q5_K_M', 'Q6_K', 'Q8_0'] as const
export type LlamaCppPreset = (typeof LLAMA_CPP_PRESETS)[number]

const DEFAULT_TYPE: Readonly<Record<LlamaCppPreset, GgmlQuantType>> = Object.freeze({
  Q2_K: 'Q2_K',
  Q3_K_S: 'Q3_K',
  Q3_K_M: 'Q3_K',
  Q3_K_L: 'Q3_K',
  Q4_0: 'Q4_0',
  Q4_1: 'Q4_1',
  Q5_0: 'Q5_0',
  Q5_1: 'Q5_1',
  Q4_K_S: 'Q4_K',
  Q4_K_M: 'Q4_K',
  Q5_K_S: 'Q5_K',
  Q5_K_M: 'Q5_K',
  Q6_K: 'Q6_K',
  Q8_0: 'Q8_0',
})

const BLOCK: Readonly<Record<GgmlQuantType, number>> = Object.freeze({ Q8_0: 32, Q4_0: 32, Q4_1: 32, Q5_0: 32, Q5_1: 32, Q2_K: 256, Q3_K: 256, Q4_K: 256, Q5_K: 256, Q6_K: 256 })

/** tensor_type_fallback: the 32-block type for rows that are not whole 256-blocks; null = F16 (kept). */
function fallbackForRows(type: GgmlQuantType, cols: number): GgmlQuantType | null {
  if (cols % BLOCK[type] === 0) return type
  const legacy: GgmlQuantType = type === 'Q2_K' || type === 'Q3_K' ? 'Q4_0' : type === 'Q4_K' ? 'Q5_0' : type === 'Q5_K' ? 'Q5_1' : 'Q8_0'
  return cols % BLOCK[legacy] === 0 ? legacy : null
}

/** use_more_bits of llama_tensor_get_type_impl: the first and last eighth, and every third layer between. */
export function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.trunc(layers / 8)
  return layer < eighth || layer >= Math.trunc((7 * layers) / 8) || (layer - eighth) % 3 === 2
}

export interface PresetOptions {
  /** llama-quantize --imatrix: every type weighted by activations, and Q4_0/Q5_0's ffn_down guard. */
  imatrix?: boolean
}

/** The ggml type llama-quantize gives each tensor it quantizes (HF names, model order); null = kept as F16. */
export function llamaCppPresetTypes(model: OpenedModel, preset: LlamaCppPreset, options: PresetOptions = {}): Map<string, GgmlQuantType | null> {
  const config = model.config
  if (!config) throw new PlanError(model.files[0] ?? 'model', null, 'llama.cpp presets need the model config (layers, heads)')
  const base = DEFAULT_TYPE[preset]
  const nLayer = config.numLayers
  const gqa = config.numHeads / config.numKvHeads
  const tied = !model.tensors.some((t) => classifyTensor(t.alias ?? t.name).role === 'lm_head')
  const out = new Map<string, GgmlQuantType | null>()
  for (const t of model.tensors) {
    if (t.derivedFrom || t.shape.length !== 2 || !t.name.endsWith('weight')) continue
    const { layer, role } = classifyTensor(t.alias ?? t.name)
    if (role === null || role.endsWith('norm')) continue
    const cols = t.shape[1]!
    let type: GgmlQuantType = base
    if (role === 'lm_head' || (tied && role === 'embed')) {
      type = cols % BLOCK[base] !== 0 ? 'Q8_0' : base !== 'Q8_0' ? 'Q6_K' : 'Q8_0'
    } else if (role === 'v') {
      type = attnVType(preset, base, layer!, nLayer, gqa)
    } else if (role === 'down') {
      type = ffnDownType(preset, base, layer!, nLayer, options.imatrix ?? false)
    } else if (role === 'o') {
      type = preset === 'Q2_K' ? 'Q3_K' : preset === 'Q3_K_M' ? 'Q4_K' : preset === 'Q3_K_L' ? 'Q5_K' : base
    } else if (role !== 'embed' && role !== 'q' && role !== 'k' && role !== 'gate' && role !== 'up') {
      continue
    }
    out.set(t.name, fallbackForRows(type, cols))
  }
  return out
}

function attnVType(preset: LlamaCppPreset, base: GgmlQuantType, i: number, n: number, gqa: number): GgmlQuantType {
  if (preset === 'Q2_K') return gqa >= 4 ? 'Q4_K' : 'Q3_K'
  if (preset === 'Q3_K_M') return i < 2 ? 'Q5_K' : 'Q4_K'
  if (preset === 'Q3_K_L') return 'Q5_K'
  if ((preset === 'Q4_K_M' || preset === 'Q5_K_M') && useMoreBits(i, n)) return 'Q6_K'
  if (preset === 'Q4_K_S' && i < 4) return 'Q5_K'
  return base
}

function ffnDownType(preset: LlamaCppPreset, base: GgmlQuantType, i: number, n: number, imatrix: boolean): GgmlQuantType {
  if (preset === 'Q2_K') return 'Q3_K'
  if (preset === 'Q3_K_M') return i < Math.trunc(n / 16) ? 'Q5_K' : 'Q4_K'
  if (preset === 'Q3_K_L') return 'Q5_K'
  if (preset === 'Q4_K_M') return useMoreBits(i, n) ? 'Q6_K' : base
  if (preset === 'Q5_K_M' && useMoreBits(i, n)) return 'Q6_K'
  if (preset === 'Q4_K_S' && i < Math.trunc(n / 8)) return 'Q5_K'
  if ((preset === 'Q4_0' || preset === 'Q5_0') && imatrix && i < Math.trunc(n / 8)) return preset === 'Q4_0' ? 'Q4_1' : 'Q5_1'
  return base
}

/** A plan with llama-quantize's type for every tensor it quantizes (`ggml:type=…`), the rest kept. */
export function planFromLlamaCppPreset(model: OpenedModel, preset: string, options: PresetOptions = {}): Plan {
  if (!(LLAMA_CPP_PRESETS as readonly string[]).includes(preset)) {
    throw new PlanError(model.files[0] ?? 'model', null, `unknown llama.cpp preset '${preset}' (presets: ${LLAMA_CPP_PRESETS.join(', ')})`)
  }
  const types = llamaCppPresetTypes(model, preset as LlamaCppPreset, options)
  const tensors: Record<string, PlanEntry> = {}
  for (const [name, type] of types) tensors[name] = type === null ? 'keep' : { method: 'ggml', params: { type, imatrix: options.imatrix ?? false } }
  return {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) },
    description: `llama.cpp ${preset}${options.imatrix ? ' with imatrix' : ''} (llama-quantize's per-tensor types)`,
    tensors,
  }
}
