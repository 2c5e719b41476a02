import type { GraphBuilder } from '../formats/onnx/graph-builder'

/**
 * Where the decoder graph can tap activations: the residual stream entering every block
 * (and leaving the last one), and the input of every linear layer (q/k/v share the attention
 * norm's output, gate/up the MLP norm's, lm_head the final norm's).
 *
 * The taps are reduced inside the graph over the batch·seq rows, so a run returns [channels]
 * vectors (and [channels, channels] Gram matrices on request) instead of whole activations:
 * the runtime does the reduction with its SIMD kernels and nothing large crosses into JS.
 */
export type CaptureSite = 'resid_in' | 'resid_out' | 'attn_in' | 'o_in' | 'mlp_in' | 'down_in' | 'lm_head_in' | KvCaptureSite

/**
 * The new tokens' K after RoPE and V of every block as [batch·seq, Hkv·d] rows (kv head-major),
 * with per-channel min and max besides the usual sums: the KV smoothing statistics
 * (kv-quant.ts). Only captured when asked for by name ('ops' attention), never by default.
 */
export type KvCaptureSite = 'attn_k' | 'attn_v'
export const KV_CAPTURE_SITES: readonly KvCaptureSite[] = Object.freeze(['attn_k', 'attn_v'])

/** The default sites (all but the KV ones). */
export const CAPTURE_SITES: readonly CaptureSite[] = Object.freeze(['resid_in', 'resid_out', 'attn_in', 'o_in', 'mlp_in', 'down_in', 'lm_head_in'])

/** Sites that are inputs of linear layers (these can have Gram matrices). */
export const LINEAR_INPUT_SITES: ReadonlySet<CaptureSite> = new Set(['attn_in', 'o_in', 'mlp_in', 'down_in', 'lm_head_in'])

export interface CapturePoint {
  /** 'L3.attn_in', 'L11.resid_out', 'lm_head_in'. */
  id: string
  site: CaptureSite
  /** Block index; null for the lm_head input. */
  block: number | null
  channels: number
  /** Tensor names of the linear layers this activation feeds (empty for the residual stream). */
  linears: string[]
  /** Graph output names of the per-run reductions over rows. */
  outputs: { sum: string; sumAbs: string; sumSq: string; maxAbs: string; gram?: string; min?: string; max?: string; raw?: string }
}

export interface CaptureTap {
  site: CaptureSite
  block: number | null
  value: string
  channels: number
  linears: string[]
}

/** `raw`: also output the activation itself [rows, channels] (k-means activation codebook fits). */
export function addCaptureOutputs(g: GraphBuilder, taps: CaptureTap[], options: { gram?: boolean; sites?: CaptureSite[]; raw?: boolean }): CapturePoint[] {
  const wanted = new Set(options.sites ?? CAPTURE_SITES)
  const rows = g.constInt64([0])
  const points: CapturePoint[] = []
  for (const tap of taps) {
    if (!wanted.has(tap.site)) continue
    const id = tap.block === null ? tap.site : `L${tap.block}.${tap.site}`
    const x = tap.value // [batch·seq, channels]
    const name = (stat: string): string => `cap.${id}.${stat}`
    const C = tap.channels
    g.output(name('sum'), g.op('ReduceSum', [x, rows], { keepdims: { int: 0 } }), 'float32', [C])
    g.output(name('sum_abs'), g.op('ReduceL1', [x], { axes: { ints: [0] }, keepdims: { int: 0 } }), 'float32', [C])
    g.output(name('sum_sq'), g.op('ReduceSumSquare', [x], { axes: { ints: [0] }, keepdims: { int: 0 } }), 'float32', [C])
    g.output(name('max_abs'), g.op('ReduceMax', [g.op('Abs', [x])], { axes: { ints: [0] }, keepdims: { int: 0 } }), 'float32', [C])
    const outputs: CapturePoint['outputs'] = { sum: name('sum'), sumAbs: name('sum_abs'), sumSq: name('sum_sq'), maxAbs: name('max_abs') }
    if ((KV_CAPTURE_SITES as readonly CaptureSite[]).includes(tap.site)) {
      g.output(name('min'), g.op('ReduceMin', [x], { axes: { ints: [0] }, keepdims: { int: 0 } }), 'float32', [C])
      g.output(name('max'), g.op('ReduceMax', [x], { axes: { ints: [0] }, keepdims: { int: 0 } }), 'float32', [C])
      Object.assign(outputs, { min: name('min'), max: name('max') })
    }
    if (options.gram && LINEAR_INPUT_SITES.has(tap.site)) {
      g.output(name('gram'), g.op('Gemm', [x, x], { transA: { int: 1 } }), 'float32', [C, C])
      outputs.gram = name('gram')
    }
    if (options.raw) {
      g.output(name('x'), g.op('Identity', [x]), 'float32', ['rows', C])
      outputs.raw = name('x')
    }
    points.push({ id, site: tap.site, block: tap.block, channels: C, linears: tap.linears, outputs })
  }
  return points
}
