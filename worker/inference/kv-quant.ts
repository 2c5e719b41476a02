import type { GraphBuilder } from '../formats/onnx/graph-builder'
import { InferenceInputError } from './errors'

/**
 * KV-cache fake quantization in the evaluation graph (WKVQuant, arXiv 2402.12065; papers.md §4).
 *
 * - **Per-token asymmetric b-bit** (2–8) min–max quantization of K (after RoPE) and V: one
 *   scale and minimum per token *and kv head* over its head_dim values, or per `group`
 *   consecutive values of head_dim (group divides head_dim). Scale and minimum are dynamic
 *   (computed from the token itself, float32, not rounded to fp16). Codes are
 *   ⌊(x − min)/s + ½⌋ clipped to [0, 2^b − 1] (half up, as the activation INT baseline).
 * - **Two-dimensional smoothing** (optional): a static per-channel shift δ and scale s per
 *   layer and kv head from calibration statistics, X̃ = (X − δ)/s before the per-token
 *   quantization and X̂ = deq(X̃)·s + δ after. Our default (papers.md leaves it open):
 *   δ = channel midpoint (max + min)/2, s = half-range (max − min)/2 over the calibration
 *   tokens (s = 1 for a constant channel). CRR (the learned δ, s) is not built.
 * - **Past-only** (POQ): the query at position t sees quantized K/V at keys j < t and its own
 *   full-precision K/V at j = t. **Naive**: every key quantized, its own included.
 *
 * How past-only is built (graph choice): both the quantized and the full-precision K/V of the
 * new tokens exist; scores are q·K̂ᵀ everywhere but the causal diagonal (key index = past +
 * query index), where an elementwise Where puts q·k_t (a per-query dot product computed
 * separately); on the value side the diagonal probability is split off (Where) and multiplies
 * the full-precision v_t, the rest multiplies V̂. With a cache (generation), the cache holds
 * the dequantised values: present = [past | K̂_new], so a token enters the cache quantized after
 * its step, and teacher-forced and incremental evaluation give the same numbers.
 */
export interface KvQuantSettings {
  bits: number
  /** Values of head_dim per quantization group; null = the whole head vector. */
  group: number | null
  /** Two-dimensional smoothing from calibration statistics. */
  smooth: boolean
  /** Past-only quantization (else naive: the current token quantized too). */
  pastOnly: boolean
}

/** Per-channel shift and scale of one layer, [numKvHeads·headDim] (kv head-major). */
export interface KvChannelAffine {
  shift: Float32Array
  scale: Float32Array
}

/** Static smoothing of every layer's K (after RoPE) and V. */
export interface KvSmoothing {
  key: KvChannelAffine[]
  value: KvChannelAffine[]
}

/** perplexity's `kv` option: the settings, with smooth the statistics (kv-calibration.ts) and where they came from. */
export interface KvEvalOptions extends KvQuantSettings {
  smoothing?: KvSmoothing | null
  calibration?: KvEcho['calibration']
}

/** What a result echoes: the settings, and where smoothing came from. */
export interface KvEcho extends KvQuantSettings {
  calibration?: { source: string; tokens: number; windows: number }
}

/** The decoder graph's `kv` option. */
export interface KvGraphOptions {
  bits: number
  group?: number | null
  pastOnly: boolean
  /** Smoothing statistics (kvSmoothingFromRange); absent = no smoothing. */
  smooth?: KvSmoothing | null
}

/**
 * The decoder graph's kv option from resolved settings (smoothing statistics included when
 * smooth), for graphs built outside perplexity.ts (generation).
 */
export function kvGraphFromEval(kv: KvEvalOptions): KvGraphOptions {
  checkKvSettings(kv)
  if (kv.smooth && !kv.smoothing) throw new InferenceInputError('KV smoothing needs its calibration statistics (kvEvalOptions calibrates them on the calibration text)')
  return { bits: kv.bits, group: kv.group ?? null, pastOnly: kv.pastOnly, smooth: kv.smooth ? kv.smoothing : null }
}

/** What a result echoes of resolved KV settings. */
export function kvEchoOf(kv: KvEvalOptions): KvEcho {
  const echo: KvEcho = { bits: kv.bits, group: kv.group ?? null, smooth: kv.smooth, pastOnly: kv.pastOnly }
  if (kv.calibration) echo.calibration = kv.calibration
  return echo
}

/** Refuses settings the graph cannot build, naming the problem. */
export function checkKvSettings(s: { bits: number; group?: number | null }, headDim?: number): void {
  if (!Number.isInteger(s.bits) || s.bits < 2 || s.bits > 8) throw new InferenceInputError(`KV-cache bits must be an integer from 2 to 8, got ${s.bits}`)
  const g = s.group ?? null
  if (g !== null) {
    if (!Number.isInteger(g) || g < 2) throw new InferenceInputError(`KV-cache group must be an integer ≥ 2, got ${g}`)
    if (headDim !== undefined && headDim % g !== 0) throw new InferenceInputError(`KV-cache group ${g} does not divide the head size ${headDim}`)
  }
}

/**
 * δ = (max + min)/2, s = (max − min)/2 per channel (the default of papers.md §4, marked open
 * there); a channel that never varied gets s = 1 so it passes unchanged.
 */
export function kvAffineFromRange(min: ArrayLike<number>, max: ArrayLike<number>, what: string): KvChannelAffine {
  if (min.length !== max.length) throw new Error(`${what}: ${min.length} minima but ${max.length} maxima`)
  const shift = new Float32Array(min.length)
  const scale = new Float32Array(min.length)
  for (let c = 0; c < min.length; c++) {
    const lo = min[c]!
    const hi = max[c]!
    if (!Number.isFinite(lo) || !Number.isFinite(hi) || hi < lo) throw new InferenceInputError(`${what}: channel ${c} has no finite range (min ${lo}, max ${hi})`)
    shift[c] = (hi + lo) / 2
    const half = (hi - lo) / 2
    scale[c] = half > 0 ? half : 1
  }
  return { shift, scale }
}

/** What the attention of one layer needs to quantize its new K/V. */
export interface KvLayerQuant {
  pastOnly: boolean
  /** [batch, Hkv, seq, d] → the same, fake-quantized. */
  key(x: string): string
  value(x: string): string
}

/** The per-layer quantizers of a decoder graph (smoothing constants become initializers). */
export function kvLayerQuant(g: GraphBuilder, o: KvGraphOptions, layer: number, numKvHeads: number, headDim: number): KvLayerQuant {
  checkKvSettings(o, headDim)
  const affine = (a: KvChannelAffine | undefined, what: string): { shift: string; scale: string } | null => {
    if (!o.smooth) return null
    if (!a || a.shift.length !== numKvHeads * headDim || a.scale.length !== numKvHeads * headDim) {
      throw new Error(`KV smoothing: layer ${layer} ${what} needs ${numKvHeads * headDim} channels`)
    }
    const dims = [1, numKvHeads, 1, headDim]
    return { shift: g.constFloat(a.shift, dims, `kvq${layer}${what}_shift`), scale: g.constFloat(a.scale, dims, `kvq${layer}${what}_scale`) }
  }
  const kAff = affine(o.smooth?.key[layer], 'k')
  const vAff = affine(o.smooth?.value[layer], 'v')
  return {
    pastOnly: o.pastOnly,
    key: (x) => fakeQuantKv(g, x, o.bits, o.group ?? null, numKvHeads, headDim, kAff),
    value: (x) => fakeQuantKv(g, x, o.bits, o.group ?? null, numKvHeads, headDim, vAff),
  }
}

/** Per-token (per kv head, per group) asymmetric min–max fake quantization of [batch, Hkv, seq, d]. */
export function fakeQuantKv(
  g: GraphBuilder,
  x: string,
  bits: number,
  group: number | null,
  Hkv: number,
  d: number,
  affine: { shift: string; scale: string } | null,
): string {
  const gs = group ?? d
  const levels = 2 ** bits - 1
  let v = affine ? g.op('Div', [g.op('Sub', [x, affine.shift]), affine.scale]) : x
  v = g.op('Reshape', [v, g.constInt64([0, Hkv, -1, d / gs, gs])])
  const lo = g.op('ReduceMin', [v], { axes: { ints: [-1] }, keepdims: { int: 1 } })
  const hi = g.op('ReduceMax', [v], { axes: { ints: [-1] }, keepdims: { int: 1 } })
  // A constant group has range 0: any positive step maps it to code 0, i.e. back to its minimum.
  const step = g.op('Max', [g.op('Div', [g.op('Sub', [hi, lo]), g.constFloat([levels], [])]), g.constFloat([1.1754943508222875e-38], [])])
  const code = g.op('Clip', [g.op('Floor', [g.op('Add', [g.op('Div', [g.op('Sub', [v, lo]), step]), g.constFloat([0.5], [])])]), g.constFloat([0], []), g.constFloat([levels], [])])
  let out = g.op('Reshape', [g.op('Add', [g.op('Mul', [code, step]), lo]), g.constInt64([0, Hkv, -1, d])])
  if (affine) out = g.op('Add', [g.op('Mul', [out, affine.scale]), affine.shift])
  return out
}

/**
 * Past-only attention of one layer: softmax over scores that are q·K̂ᵀ off the diagonal and
 * q·k_t on it, then the off-diagonal probabilities times V̂ plus the diagonal one times v_t.
 *   q5 [batch, Hkv, G, seq, d] (already scaled by 1/√d), kT5 [batch, Hkv, 1, d, keys] and
 *   v5 [batch, Hkv, 1, keys, d] the quantized keys/values ([past | new]), kNew/vNew the
 *   full-precision new ones [batch, Hkv, seq, d], mask broadcastable to the scores.
 * Returns the context [batch, Hkv, G, seq, d].
 */
export function pastOnlyContext(
  g: GraphBuilder,
  p: { q5: string; kT5: string; v5: string; kNew: string; vNew: string; mask: string; seqLen: string; pastKey: string | null },
): string {
  const scalar = (v: number): string => g.constInt64([v], [])
  const past = p.pastKey ? g.op('Gather', [g.op('Shape', [p.pastKey]), scalar(2)], { axis: { int: 0 } }) : scalar(0)
  const total = g.op('Add', [past, p.seqLen])
  // [seq, keys]: true where the key is the query's own token (key index = past + query index)
  const diag = g.op('Equal', [g.op('Unsqueeze', [g.op('Range', [past, total, scalar(1)]), g.constInt64([1])]), g.op('Range', [scalar(0), total, scalar(1)])])
  const own = g.op('ReduceSum', [g.op('Mul', [p.q5, g.op('Unsqueeze', [p.kNew, g.constInt64([2])])]), g.constInt64([-1])], { keepdims: { int: 1 } }) // [b, Hkv, G, seq, 1]
  const scores = g.op('Where', [diag, own, g.op('MatMul', [p.q5, p.kT5])])
  const probs = g.op('Softmax', [g.op('Add', [scores, p.mask])], { axis: { int: -1 } })
  const zero = g.constFloat([0], [])
  const pOwn = g.op('ReduceSum', [g.op('Where', [diag, probs, zero]), g.constInt64([-1])], { keepdims: { int: 1 } })
  const pPast = g.op('Where', [diag, zero, probs])
  return g.op('Add', [g.op('MatMul', [pPast, p.v5]), g.op('Mul', [pOwn, g.op('Unsqueeze', [p.vNew, g.constInt64([2])])])])
}

/** [batch, Hkv, seq, d] → [batch·seq, Hkv·d] rows, as the capture taps want them. */
export function kvRows(g: GraphBuilder, x: string, Hkv: number, d: number): string {
  return g.op('Reshape', [g.op('Transpose', [x], { perm: { ints: [0, 2, 1, 3] } }), g.constInt64([-1, Hkv * d])])
}
