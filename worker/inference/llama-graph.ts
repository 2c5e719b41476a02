import type { OpenedModel } from '../formats/contract'
import { GraphBuilder, type Dim } from '../formats/onnx/graph-builder'
import type { DecoderSpec } from './decoder-spec'
import { ropeInverseFrequencies, ropeTables } from './rope'
import { readAttentionTensor, readTensor, type WeightOverrides } from './weights'
import { addCaptureOutputs, type CapturePoint, type CaptureSite } from './capture-points'
import { attention, resolveAttention, type AttentionKind, type AttentionShared } from './attention'
import { concat, ENGINE_WEIGHTS, type GraphWeights } from './graph-weights'
import { addImportanceOutputs, type ImportanceGraphOptions, type ImportanceOutputs } from './importance-outputs'
import { kvLayerQuant, kvRows, type KvGraphOptions } from './kv-quant'
import { checkActOptions, fakeQuantAct, type ActGraphOptions } from './act-quant'

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
  capture?: { gram?: boolean; sites?: CaptureSite[]; raw?: boolean } | null
  /** Logit-lens top-k ids and cosines of the residual stream for layer importance (importance-outputs.ts). */
  importance?: ImportanceGraphOptions | null
  /** Length of the RoPE table: positions must stay below it. */
  maxPositions: number
  /** Attention implementation; 'auto' (default) = 'ops' (see resolveAttention). */
  attention?: AttentionKind | 'auto'
  /**
   * 'engine' (default): the evaluation engine's inputs (input_ids, position_ids, past_key.L …).
   * 'hf': the names transformers.js, Optimum and onnxruntime-genai use — inputs input_ids,
   * attention_mask [batch, past + seq] (0 = padding, honoured over past and new keys, so
   * left-padded batches work), position_ids, past_key_values.L.key/value; outputs logits
   * [batch, seq, vocab], present.L.key/value. Needs kvCache, logits 'all' and 'ops' attention.
   */
  io?: 'engine' | 'hf'
  /** Where weights come from and how linears are written (default: the engine's float32 arrays). */
  weights?: GraphWeights
  /** KV-cache fake quantization, past-only or naive, optionally smoothed (kv-quant.ts; 'ops' attention). */
  kv?: KvGraphOptions | null
  /** Fake quantization of the input of every decoder linear (act-quant.ts). */
  act?: ActGraphOptions | null
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
  /** Output names of the importance taps (null unless options.importance). */
  importance: ImportanceOutputs | null
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
  const readQk = async (name: string, kind: 'q' | 'k'): Promise<Float32Array> => {
    const data = await readAttentionTensor(model, spec, name, kind, overrides, signal)
    tick()
    return data
  }
  const W = options.weights ?? ENGINE_WEIGHTS
  const hfIo = options.io === 'hf'
  if (hfIo && (!options.kvCache || options.logits !== 'all' || options.nll || options.logprobs || options.kl || options.argmax || options.capture || options.importance)) {
    throw new Error("decoder graph: io 'hf' takes kvCache and logits 'all' only")
  }
  if (options.weights && !hfIo) throw new Error("decoder graph: custom weights are for io 'hf' (exports)")
  if ((options.kv || options.act) && hfIo) throw new Error("decoder graph: KV-cache and activation quantization are evaluation options, not for io 'hf'")
  if (options.act) checkActOptions(options.act, Math.min(H, Hq * d, I))
  const actQ = (v: string, id: string): string => (options.act ? fakeQuantAct(g, v, options.act, id) : v)
  const [B, S] = hfIo ? ['batch_size', 'sequence_length'] : ['batch', 'seq']

  // ---- inputs and shape helpers
  const ids = g.input('input_ids', 'int64', [B, S])
  const attentionMask = hfIo ? g.input('attention_mask', 'int64', [B, 'total_sequence_length']) : null
  const pos = g.input('position_ids', 'int64', [B, S])
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
    cosTable: await W.table(g, 'rope_cos', [options.maxPositions, d / 2], cos),
    sinTable: await W.table(g, 'rope_sin', [options.maxPositions, d / 2], sin),
    cache: new Map(),
  }
  const attentionKind = resolveAttention(options.attention, d)
  if (hfIo && attentionKind !== 'ops') throw new Error("decoder graph: io 'hf' builds the standard-op attention")

  // ---- embedding
  const embedW = await W.float(g, 'embed.weight', [V, H], spec.embed, () => read(spec.embed))
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
    const h = rmsNorm(x, await W.float(g, `L${l}.attn_norm`, [H], t.attnNorm, () => read(t.attnNorm)))
    tap('attn_in', l, h, H, [t.q, t.k, t.v])
    const qkvParts = [
      { tensor: t.q, rows: Hq * d, read: () => readQk(t.q, 'q') },
      { tensor: t.k, rows: Hkv * d, read: () => readQk(t.k, 'k') },
      { tensor: t.v, rows: Hkv * d, read: () => read(t.v) },
    ]
    let bias: string | undefined
    if (t.qBias || t.kBias || t.vBias) {
      const qBias = t.qBias
      const kBias = t.kBias
      const vBias = t.vBias
      const readBias = async (): Promise<Float32Array> => {
        const qb = qBias ? await readAttentionTensor(model, spec, qBias, 'q', overrides, signal) : new Float32Array(Hq * d)
        const kb = kBias ? await readAttentionTensor(model, spec, kBias, 'k', overrides, signal) : new Float32Array(Hkv * d)
        const vb = vBias ? await readTensor(model, vBias, overrides, signal) : new Float32Array(Hkv * d)
        return concat([qb, kb, vb])
      }
      bias = await W.float(g, `L${l}.qkv_bias`, [(Hq + 2 * Hkv) * d], qBias ?? kBias ?? vBias!, readBias)
    }
    const qkv = await W.linear(g, actQ(h, `L${l}.attn_in`), `L${l}.qkv`, qkvParts, H, bias)
    let past: { key: string; value: string } | null = null
    if (kv) {
      const [pk, pv] = hfIo ? [`past_key_values.${l}.key`, `past_key_values.${l}.value`] : [`past_key.${l}`, `past_value.${l}`]
      const pastDims: Dim[] = hfIo ? [B, Hkv, 'past_sequence_length', d] : ['batch', Hkv, 'past', d]
      past = { key: g.input(pk, 'float32', pastDims), value: g.input(pv, 'float32', pastDims) }
      kv.pastKey.push(past.key)
      kv.pastValue.push(past.value)
      if (hfIo && l === 0) shared.mask = paddedCausalMask(g, shared, attentionMask!, past.key)
    }
    const kvq = options.kv ? kvLayerQuant(g, options.kv, l, Hkv, d) : null
    const { out: attn, presentKey, presentValue, newKey, newValue } = attention(attentionKind, shared, qkv, past, kvq)
    if (options.capture?.sites?.some((site) => site === 'attn_k' || site === 'attn_v')) {
      if (!newKey || !newValue) throw new Error('decoder graph: K/V capture needs the standard-op attention')
      tap('attn_k', l, kvRows(g, newKey, Hkv, d), Hkv * d, [])
      tap('attn_v', l, kvRows(g, newValue, Hkv, d), Hkv * d, [])
    }
    if (kv) {
      const [nk, nv] = hfIo ? [`present.${l}.key`, `present.${l}.value`] : [`present_key.${l}`, `present_value.${l}`]
      const presentDims: Dim[] = hfIo ? [B, Hkv, 'total_sequence_length', d] : ['batch', Hkv, 'total', d]
      kv.presentKey.push(nk)
      kv.presentValue.push(nv)
      g.output(nk, presentKey, 'float32', presentDims)
      g.output(nv, presentValue, 'float32', presentDims)
    }
    tap('o_in', l, attn, Hq * d, [t.o])
    x = g.op('Add', [x, await W.linear(g, actQ(attn, `L${l}.o_in`), `L${l}.o`, [{ tensor: t.o, rows: H, read: () => read(t.o) }], Hq * d)])
    // SwiGLU MLP
    const h2 = rmsNorm(x, await W.float(g, `L${l}.mlp_norm`, [H], t.mlpNorm, () => read(t.mlpNorm)))
    tap('mlp_in', l, h2, H, [t.gate, t.up])
    const guParts = [
      { tensor: t.gate, rows: I, read: () => read(t.gate) },
      { tensor: t.up, rows: I, read: () => read(t.up) },
    ]
    const gu = await W.linear(g, actQ(h2, `L${l}.mlp_in`), `L${l}.gate_up`, guParts, H)
    const [gate, up] = g.node('Split', [gu, guSplit], { attrs: { axis: { int: 1 } }, outputs: 2 }) as [string, string]
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up])
    tap('down_in', l, act, I, [t.down])
    x = g.op('Add', [x, await W.linear(g, actQ(act, `L${l}.down_in`), `L${l}.down`, [{ tensor: t.down, rows: H, read: () => read(t.down) }], I)])
    tap('resid_out', l, x, H, [])
  }

  // ---- head
  const finalNormW = await W.float(g, 'final_norm', [H], spec.finalNorm, () => read(spec.finalNorm))
  const hf = rmsNorm(x, finalNormW)
  tap('lm_head_in', null, hf, H, [spec.lmHead])
  const wantAll = options.logits === 'all' || options.nll || options.logprobs || options.kl || options.argmax
  let lmW: string | null = spec.tied ? embedW : null
  let logits2d: string | null = null
  if (options.weights && !spec.tied) {
    // An export writes lm_head like any linear (it may be planned); io 'hf' wants all logits only.
    logits2d = await W.linear(g, hf, 'lm_head.weight', [{ tensor: spec.lmHead, rows: V, read: () => read(spec.lmHead) }], H)
  } else {
    lmW ??= await W.float(g, 'lm_head.weight', [V, H], spec.lmHead, () => read(spec.lmHead))
    if (wantAll) logits2d = linear(hf, lmW)
  }
  const toBTV = dimsOf(V)
  const outputs: string[] = []
  const out = (name: string, value: string, type: 'float32' | 'int64', dims: Dim[]): void => {
    g.output(name, value, type, dims)
    outputs.push(name)
  }
  if (options.logits === 'all') out('logits', g.op('Reshape', [logits2d!, toBTV]), 'float32', [B, S, V])
  if (options.logits === 'last') {
    const last = g.op('Sub', [seqLen, g.constInt64([1], [])])
    const hLast = g.op('Gather', [g.op('Reshape', [hf, dimsOf(H)]), last], { axis: { int: 1 } })
    out('logits', g.op('Unsqueeze', [linear(hLast, lmW!), axes(1)]), 'float32', ['batch', 1, V])
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
  let importance: ImportanceOutputs | null = null
  if (options.importance) {
    // h_0 … h_L: every block's input, then the last block's output
    const residuals = captureTaps.filter((t) => t.site === 'resid_in').map((t) => t.value)
    residuals.push(x)
    importance = addImportanceOutputs(g, residuals, { finalNorm: (v) => rmsNorm(v, finalNormW), lmHead: lmW!, vocab: V }, options.importance)
    outputs.push(...importance.topk, ...importance.cos)
  }
  if (kv) outputs.push(...kv.presentKey, ...kv.presentValue)
  if (outputs.length === 0) throw new Error('decoder graph: no outputs requested')

  const inputs = hfIo ? ['input_ids', 'attention_mask', 'position_ids'] : ['input_ids', 'position_ids']
  if (kv) inputs.push(...kv.pastKey, ...kv.pastValue)
  if (options.nll) inputs.push('targets')
  if (options.kl) inputs.push('ref_logprobs')
  return { builder: g, info: { spec, options, attention: attentionKind, inputs, outputs, kv, capturePoints, importance, weightBytes: g.externalBytes } }
}

/**
 * The additive attention mask of io 'hf' [batch, 1, 1, seq, past + seq]: a key is visible when
 * it is not after the query in the sequence (queries sit at past … past + seq − 1, whatever
 * their position ids say — left padding shifts those) and attention_mask marks it as a token.
 * Hidden keys get float32's lowest value rather than −inf, so a padding query that sees no key
 * at all gets a uniform softmax instead of NaN (as transformers' masks do).
 */
function paddedCausalMask(g: GraphBuilder, s: AttentionShared, attentionMask: string, pastKey: string): string {
  const scalar = (v: number): string => g.constInt64([v], [])
  const past = g.op('Gather', [g.op('Shape', [pastKey]), scalar(2)], { axis: { int: 0 } })
  const total = g.op('Add', [past, s.seqLen])
  const queryAt = g.op('Unsqueeze', [g.op('Range', [past, total, scalar(1)]), g.constInt64([1])]) // [seq, 1]
  const keyAt = g.op('Range', [scalar(0), total, scalar(1)]) // [total]
  const causal = g.op('LessOrEqual', [keyAt, queryAt]) // [seq, total]
  const isToken = g.op('Unsqueeze', [g.op('Cast', [attentionMask], { to: { int: 9 } }), g.constInt64([1])]) // [batch, 1, total]
  const visible = g.op('And', [causal, isToken]) // [batch, seq, total]
  const additive = g.op('Where', [visible, g.constFloat([0], []), g.constFloat([-3.4028234663852886e38], [])])
  return g.op('Unsqueeze', [additive, g.constInt64([1, 2])])
}
