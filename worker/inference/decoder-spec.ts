import type { ModelConfig, OpenedModel, TensorEntry } from '../formats/contract'
import { ModelFormatError } from '../common/errors'
import { classifyTensor, describeModel } from '../model/logical-model'
import { ggufPermutesQk } from '../stats/orientation'

/**
 * What the graph builder needs to know about a decoder: validated hyper-parameters and,
 * per block, the name of every tensor it reads. Everything that can be wrong with a model
 * (unsupported family, missing tensor, wrong shape) fails here, before any weight is read,
 * with a ModelFormatError naming the file, the tensor and the problem.
 */
export const SUPPORTED_ARCHITECTURES = ['llama', 'mistral', 'qwen2'] as const
export type DecoderArchitecture = (typeof SUPPORTED_ARCHITECTURES)[number]

export interface DecoderLayerTensors {
  attnNorm: string
  q: string
  k: string
  v: string
  o: string
  qBias: string | null
  kBias: string | null
  vBias: string | null
  mlpNorm: string
  gate: string
  up: string
  down: string
}

export interface DecoderSpec {
  architecture: DecoderArchitecture
  config: ModelConfig
  /** Rows of the embedding matrix (may exceed config.vocabSize when padded). */
  vocab: number
  embed: string
  /** The lm_head matrix: the embedding itself when tied. */
  lmHead: string
  tied: boolean
  finalNorm: string
  layers: DecoderLayerTensors[]
  /**
   * llama.cpp's converter permutes the rows of q/k (and their biases) for its RoPE layout in
   * llama-architecture GGUF files; qwen2 GGUFs use the NEOX layout and are not permuted.
   */
  qkPermuted: boolean
  /** Tensor of per-frequency RoPE factors (GGUF Llama 3.1 files), if any. */
  ropeFreqsTensor: string | null
  /** The file errors name. */
  file: string
}

export function resolveDecoder(model: OpenedModel): DecoderSpec {
  const file = model.files[0] ?? '(model)'
  const fail = (tensor: string | null, problem: string): never => {
    throw new ModelFormatError(file, tensor, problem)
  }
  if (model.format === 'onnx') {
    fail(null, 'this step needs the weights of a Hugging Face folder, safetensors or GGUF model (activation capture and quantization plans build their own graph); an .onnx file is evaluated and generates only as it is')
  }
  const config = model.config
  if (!config) {
    fail(null, `no model configuration (architecture '${model.architecture ?? 'unknown'}'); inference needs a llama, mistral or qwen2 config (config.json or GGUF metadata)`)
  }
  const cfg = config!
  const arch = cfg.architecture
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    fail(null, `architecture '${arch}' is not supported by the inference engine (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`)
  }
  if (cfg.numHeads % cfg.numKvHeads !== 0) fail(null, `${cfg.numHeads} attention heads is not a multiple of ${cfg.numKvHeads} key/value heads`)
  if (cfg.headDim % 2 !== 0) fail(null, `head dimension ${cfg.headDim} is odd; RoPE needs an even one`)

  const byName = new Map<string, TensorEntry>(model.tensors.map((t) => [t.name, t]))
  const logical = describeModel(model)
  const H = cfg.hiddenSize
  const qOut = cfg.numHeads * cfg.headDim
  const kvOut = cfg.numKvHeads * cfg.headDim
  const I = cfg.intermediateSize

  const expectShape = (name: string, shape: number[]): void => {
    const t = byName.get(name)!
    if (!t.decodable) fail(name, `stored type ${t.dtype} cannot be decoded by this build`)
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      fail(name, `shape [${t.shape.join(', ')}] does not match the config, which implies [${shape.join(', ')}]`)
    }
  }

  if (logical.embeddings === null) fail(null, 'missing tensor: no token embedding (model.embed_tokens.weight / token_embd.weight)')
  const embed = logical.embeddings!
  const embedEntry = byName.get(embed)!
  if (embedEntry.shape.length !== 2 || embedEntry.shape[1] !== H) {
    fail(embed, `shape [${embedEntry.shape.join(', ')}] is not [vocab, ${H}]`)
  }
  const vocab = embedEntry.shape[0]!
  expectShape(embed, [vocab, H])

  let lmHead: string
  if (logical.lmHead !== null) {
    lmHead = logical.lmHead
    expectShape(lmHead, [vocab, H])
  } else if (logical.tiedEmbeddings) {
    lmHead = embed
  } else {
    lmHead = fail(null, 'missing tensor: no lm_head (lm_head.weight / output.weight) and the config does not tie the word embeddings')
  }
  if (logical.finalNorm === null) fail(null, 'missing tensor: no final norm (model.norm.weight / output_norm.weight)')
  const finalNorm = logical.finalNorm!
  expectShape(finalNorm, [H])

  const layers: DecoderLayerTensors[] = []
  for (let l = 0; l < cfg.numLayers; l++) {
    const block = logical.blocks.find((b) => b.index === l)
    if (!block) fail(null, `missing tensors: block ${l} of ${cfg.numLayers} has no tensors at all`)
    const b = block!
    if (b.norms.q_norm || b.norms.k_norm) fail(b.norms.q_norm ?? b.norms.k_norm ?? null, 'q/k norms (qwen3-style) are not part of the llama/mistral/qwen2 block this engine builds')
    const linear = (role: 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down', shape: number[]): string => {
      const name = b.linears[role]
      if (!name) {
        const fused = b.others.find((n) => ['qkv', 'gate_up'].includes(classifyTensor(n).role ?? ''))
        const hint = fused ? ` (found fused '${fused}', which this engine does not split)` : ''
        return fail(null, `missing tensor: block ${l} has no '${role}' projection${hint}`)
      }
      expectShape(name, shape)
      return name
    }
    const norm = (role: 'attn_norm' | 'mlp_norm'): string => {
      const name = b.norms[role]
      if (!name) return fail(null, `missing tensor: block ${l} has no ${role === 'attn_norm' ? 'input (attention) norm' : 'post-attention (MLP) norm'}`)
      expectShape(name, [H])
      return name
    }
    const bias = (role: 'q' | 'k' | 'v', size: number): string | null => {
      const name = b.others.find((n) => classifyTensor(n).role === `${role}_bias`) ?? null
      if (name === null) {
        if (cfg.attentionBias) fail(null, `missing tensor: block ${l} has no ${role}_proj bias, which the config (attention bias / qwen2) requires`)
        return null
      }
      expectShape(name, [size])
      return name
    }
    layers.push({
      attnNorm: norm('attn_norm'),
      q: linear('q', [qOut, H]),
      k: linear('k', [kvOut, H]),
      v: linear('v', [kvOut, H]),
      o: linear('o', [H, qOut]),
      qBias: bias('q', qOut),
      kBias: bias('k', kvOut),
      vBias: bias('v', kvOut),
      mlpNorm: norm('mlp_norm'),
      gate: linear('gate', [I, H]),
      up: linear('up', [I, H]),
      down: linear('down', [H, I]),
    })
  }
  const extra = logical.blocks.find((b) => b.index >= cfg.numLayers)
  if (extra) fail(null, `tensors for block ${extra.index} exist but the config declares ${cfg.numLayers} layers`)

  const ropeFreqs = cfg.ropeScaling?.rope_type === 'freq_factors' ? String(cfg.ropeScaling.tensor) : null
  return {
    architecture: arch as DecoderArchitecture,
    config: cfg,
    vocab,
    embed,
    lmHead,
    tied: lmHead === embed,
    finalNorm,
    layers,
    qkPermuted: model.format === 'gguf' && ggufPermutesQk(arch),
    ropeFreqsTensor: ropeFreqs && byName.has(ropeFreqs) ? ropeFreqs : null,
    file,
  }
}
