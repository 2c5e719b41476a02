import type { OpenedModel } from '../formats/contract'
import { GraphBuilder, type Dim } from '../formats/onnx/graph-builder'
import type { DecoderSpec } from './decoder-spec'
import { ropeInverseFrequencies, ropeTables } from './rope'
import { readAttentionTensor, readTensor, type WeightOverrides } from './weights'
import { addCaptureOutputs, type CapturePoint, type CaptureSite } from './capture-points'
import { attention, resolveAttention, type AttentionKind, type AttentionShared } from './attention'

/**
 * The ONNX graph of a llama / mistral / qwen2 decoder, built from the opened weights with
 * standard ONNX ops (+ SimplifiedLayerNormalization, which onnxruntime registers in the
 * default domain for every build, WASM included):
 *
 *   x = Embed(ids)
 *   per block: h = RMSNorm(x); [q|k|v] = h·Wqkvᵀ (+b); RoPE(q, k) with a cos/sin table;
 *              grouped-query causal attention over [past | new] keys (attention.ts);
 *              x += o(attn); h = RMSNorm(x); x += down(silu(gate(h)) · up(h))
 *   logits = RMSNorm(x)·W_lmᵀ
 *
 * The residual stream stays 2-D [batch·seq, hidden], so every linear is one Gemm with
 * transB = 1 on the weight exactly as stored ([out, in] rows): no transposed copy, and a tied
 * lm_head shares the embedding's bytes. q/k/v and gate/up are concatenated into one Gemm each.
 */
export interface DecoderGraphOptions {
  /** past_key.L / past_value.L inputs and present_key.L / present_value.L outputs. */
  kvCache?: boolean
  /** 'all': logits [batch, seq, vocab]; 'last': logits of the last position [batch, 1, vocab]. */
  logits?: 'none' | 'all' | 'last'
  /** Input `targets` [batch, seq] → output `nll` [batch, seq] = logsumexp(logits) − logits[target]. */
  nll?: boolean
  /** Output `logprobs` [batch, seq, vocab] (log-softmax): the base side of a KL divergence. */
  logprobs?: boolean
  /** Input `ref_logprobs` [batch, seq, vocab] → output `kl` [batch, seq] = KL(ref ‖ this model). */
  kl?: boolean
  /** Output `argmax` [batch, seq] of the logits (top-1 token). */
  argmax?: boolean
  /** Per-channel statistics (and optionally Gram matrices) of the captured activations. */
  capture?: { gram?: boolean; sites?: CaptureSite[] } | null
  /** Length of the RoPE table: positions must stay below it. */
  maxPositions: number
  /** Attention implementation; 'auto' (default) = 'ops' (see resolveAttention). */
  attention?: AttentionKind | 'auto'
}

export interface KvNames {
  pastKey: string[]
  pastValue: string[]
  presentKey: string[]
  presentValue: string[]
}

export interface DecoderGraphInfo {
  spec: DecoderSpec
  options: DecoderGraphOptions
  /** The attention implementation the graph uses. */
  attention: AttentionKind
  inputs: string[]
  outputs: string[]
  kv: KvNames | null
  capturePoints: CapturePoint[]
  /** Bytes of float32 weights handed to the runtime. */
  weightBytes: number
}

export interface BuildHooks {
  signal?: AbortSignal
  /** Tensors read so far / to read. */
  onProgress?(done: number, total: number): void
}

export async function buildDecoderGraph(
  model: OpenedModel,
  spec: DecoderSpec,
  options: DecoderGraphOptions,
  overrides?: WeightOverrides,
  hooks: BuildHooks = {},
): Promise<{ builder: GraphBuilder; info: DecoderGraphInfo }> {
  const cfg = spec.config
  const H = cfg.hiddenSize
  const Hq = cfg.numHeads
  const Hkv = cfg.numKvHeads
  const d = cfg.headDim
  const I = cfg.intermediateSize
  const V = spec.vocab
  const eps = cfg.rmsNormEps
  const g = new GraphBuilder(`${spec.architecture}-decoder`)
  const signal = hooks.signal
  // embedding, final norm, lm_head when separate; 9 matrices and norms per block
  const totalTensors = 2 + spec.layers.length * 9 + (spec.tied ? 0 : 1)
  let doneTensors = 0
  const tick = (): void => hooks.onProgress?.(++doneTensors, totalTensors)
  const read = async (name: string): Promise<Float32Array> => {
    const data = await readTensor(model, name, overrides, signal)
    tick()
    return data
  }

  // ---- inputs and shape helpers
  const ids = g.input('input_ids', 'int64', ['batch', 'seq'])
  const pos = g.input('position_ids', 'int64', ['batch', 'seq'])
  const shapeBT = g.op('Shape', [ids])
  const seqLen = g.op('Gather', [shapeBT, g.constInt64([1], [])], { axis: { int: 0 } })
  const axes = (...a: number[]): string => g.constInt64(a)

  // ---- RoPE table (float64 → float32 once)
  const freqFactors = spec.ropeFreqsTensor ? await model.readRows(spec.ropeFreqsTensor, 0, 1) : undefined
  const { cos, sin } = ropeTables(ropeInverseFrequencies(cfg, freqFactors), options.maxPositions)
  const shared: AttentionShared = {
    g,
    numHeads: Hq,
    numKvHeads: Hkv,
    headDim: d,
    shapeBT,
    seqLen,
    positions: pos,
    cosTable: g.constFloat(cos, [options.maxPositions, d / 2], 'rope_cos'),
    sinTable: g.constFloat(sin, [options.maxPositions, d / 2], 'rope_sin'),
    cache: new Map(),
  }
  const attentionKind = resolveAttention(options.attention, d)

  // ---- embedding
  const embedW = g.weight('embed.weight', [V, H], await read(spec.embed))
  let x = g.op('Reshape', [g.op('Gather', [embedW, ids], { axis: { int: 0 } }), g.constInt64([-1, H])])

  const rmsNorm = (v: string, w: string): string =>
    g.op('SimplifiedLayerNormalization', [v, w], { axis: { int: -1 }, epsilon: { float: eps }, stash_type: { int: 1 } })
  const linear = (v: string, w: string, b?: string): string => g.op('Gemm', b ? [v, w, b] : [v, w], { transB: { int: 1 } })

  const kv: KvNames | null = options.kvCache ? { pastKey: [], pastValue: [], presentKey: [], presentValue: [] } : null
  const captureTaps: { site: CaptureSite; block: number | null; value: string; channels: number; linears: string[] }[] = []
  const tap = (site: CaptureSite, block: number | null, value: string, channels: number, linears: string[]): void => {
    captureTaps.push({ site, block, value, channels, linears })
  }

  const dimsOf = (...tail: number[]): string => g.op('Concat', [shapeBT, g.constInt64(tail)], { axis: { int: 0 } })
  const guSplit = g.constInt64([I, I])

  for (let l = 0; l < spec.layers.length; l++) {
    signal?.throwIfAborted()
    const t = spec.layers[l]!
    tap('resid_in', l, x, H, [])
    // attention
    const h = rmsNorm(x, g.weight(`L${l}.attn_norm`, [H], await read(t.attnNorm)))
    tap('attn_in', l, h, H, [t.q, t.k, t.v])
    const qw = await readAttentionTensor(model, spec, t.q, 'q', overrides, signal)
    tick()
    const kw = await readAttentionTensor(model, spec, t.k, 'k', overrides, signal)
    tick()
    const vw = await read(t.v)
    const wqkv = concat([qw, kw, vw])
    let bias: string | undefined
    if (t.qBias || t.kBias || t.vBias) {
      const qb = t.qBias ? await readAttentionTensor(model, spec, t.qBias, 'q', overrides, signal) : new Float32Array(Hq * d)
      const kb = t.kBias ? await readAttentionTensor(model, spec, t.kBias, 'k', overrides, signal) : new Float32Array(Hkv * d)
      const vb = t.vBias ? await readTensor(model, t.vBias, overrides, signal) : new Float32Array(Hkv * d)
      bias = g.weight(`L${l}.qkv_bias`, [(Hq + 2 * Hkv) * d], concat([qb, kb, vb]))
    }
    const qkv = linear(h, g.weight(`L${l}.qkv`, [(Hq + 2 * Hkv) * d, H], wqkv), bias)
    let past: { key: string; value: string } | null = null
    if (kv) {
      past = {
        key: g.input(`past_key.${l}`, 'float32', ['batch', Hkv, 'past', d]),
        value: g.input(`past_value.${l}`, 'float32', ['batch', Hkv, 'past', d]),
      }
      kv.pastKey.push(past.key)
      kv.pastValue.push(past.value)
    }
    const { out: attn, presentKey, presentValue } = attention(attentionKind, shared, qkv, past)
    if (kv) {
      kv.presentKey.push(`present_key.${l}`)
      kv.presentValue.push(`present_value.${l}`)
      g.output(`present_key.${l}`, presentKey, 'float32', ['batch', Hkv, 'total', d])
      g.output(`present_value.${l}`, presentValue, 'float32', ['batch', Hkv, 'total', d])
    }
    tap('o_in', l, attn, Hq * d, [t.o])
    x = g.op('Add', [x, linear(attn, g.weight(`L${l}.o`, [H, Hq * d], await read(t.o)))])
    // SwiGLU MLP
    const h2 = rmsNorm(x, g.weight(`L${l}.mlp_norm`, [H], await read(t.mlpNorm)))
    tap('mlp_in', l, h2, H, [t.gate, t.up])
    const wgu = concat([await read(t.gate), await read(t.up)])
    const gu = linear(h2, g.weight(`L${l}.gate_up`, [2 * I, H], wgu))
    const [gate, up] = g.node('Split', [gu, guSplit], { attrs: { axis: { int: 1 } }, outputs: 2 }) as [string, string]
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up])
    tap('down_in', l, act, I, [t.down])
    x = g.op('Add', [x, linear(act, g.weight(`L${l}.down`, [H, I], await read(t.down)))])
    tap('resid_out', l, x, H, [])
  }

  // ---- head
  const hf = rmsNorm(x, g.weight('final_norm', [H], await read(spec.finalNorm)))
  tap('lm_head_in', null, hf, H, [spec.lmHead])
  const lmW = spec.tied ? embedW : g.weight('lm_head.weight', [V, H], await read(spec.lmHead))
  const wantAll = options.logits === 'all' || options.nll || options.logprobs || options.kl || options.argmax
  let logits2d: string | null = null
  if (wantAll) logits2d = linear(hf, lmW)
  const toBTV = dimsOf(V)
  const outputs: string[] = []
  const out = (name: string, value: string, type: 'float32' | 'int64', dims: Dim[]): void => {
    g.output(name, value, type, dims)
    outputs.push(name)
  }
  if (options.logits === 'all') out('logits', g.op('Reshape', [logits2d!, toBTV]), 'float32', ['batch', 'seq', V])
  if (options.logits === 'last') {
    const last = g.op('Sub', [seqLen, g.constInt64([1], [])])
    const hLast = g.op('Gather', [g.op('Reshape', [hf, dimsOf(H)]), last], { axis: { int: 1 } })
    out('logits', g.op('Unsqueeze', [linear(hLast, lmW), axes(1)]), 'float32', ['batch', 1, V])
  }
  // One log-softmax serves nll, logprobs and kl (onnxruntime's LogSoftmax is vectorised;
  // ReduceLogSumExp was twice as slow in WASM).
  let logSoftmax: string | null = null
  if (options.nll || options.logprobs || options.kl) logSoftmax = g.op('LogSoftmax', [logits2d!], { axis: { int: 1 } })
  if (options.nll) {
    const targets = g.input('targets', 'int64', ['batch', 'seq'])
    const picked = g.op('GatherElements', [logSoftmax!, g.op('Reshape', [targets, g.constInt64([-1, 1])])], { axis: { int: 1 } })
    out('nll', g.op('Neg', [g.op('Reshape', [picked, shapeBT])]), 'float32', ['batch', 'seq'])
  }
  if (options.logprobs) out('logprobs', g.op('Reshape', [logSoftmax!, toBTV]), 'float32', ['batch', 'seq', V])
  if (options.kl) {
    const ref = g.op('Reshape', [g.input('ref_logprobs', 'float32', ['batch', 'seq', V]), g.constInt64([-1, V])])
    const terms = g.op('Mul', [g.op('Exp', [ref]), g.op('Sub', [ref, logSoftmax!])])
    const kl = g.op('ReduceSum', [terms, g.constInt64([1])], { keepdims: { int: 0 } })
    out('kl', g.op('Reshape', [kl, shapeBT]), 'float32', ['batch', 'seq'])
  }
  if (options.argmax) {
    out('argmax', g.op('Reshape', [g.op('ArgMax', [logits2d!], { axis: { int: 1 }, keepdims: { int: 0 } }), shapeBT]), 'int64', ['batch', 'seq'])
  }
  let capturePoints: CapturePoint[] = []
  if (options.capture) {
    capturePoints = addCaptureOutputs(g, captureTaps, options.capture)
    for (const p of capturePoints) outputs.push(...Object.values(p.outputs))
  }
  if (kv) outputs.push(...kv.presentKey, ...kv.presentValue)
  if (outputs.length === 0) throw new Error('decoder graph: no outputs requested')

  const inputs = ['input_ids', 'position_ids']
  if (kv) inputs.push(...kv.pastKey, ...kv.pastValue)
  if (options.nll) inputs.push('targets')
  if (options.kl) inputs.push('ref_logprobs')
  return { builder: g, info: { spec, options, attention: attentionKind, inputs, outputs, kv, capturePoints, weightBytes: g.externalBytes } }
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}
