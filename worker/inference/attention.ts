import type { GraphBuilder } from '../formats/onnx/graph-builder'
import { MS_DOMAIN } from '../formats/onnx/graph-builder'
import { pastOnlyContext, type KvLayerQuant } from './kv-quant'

/**
 * The attention part of a decoder block, from the fused q|k|v projection to the input of the
 * output projection, in two interchangeable forms:
 *
 * - 'gqa': com.microsoft GroupQueryAttention (CPU kernel in onnxruntime-web and -node): RoPE
 *   (do_rotary, rotate-half layout), KV-cache concat, causal softmax and grouped heads in one
 *   op over the packed q|k|v. Positions come from the cache length (0 … total−1).
 * - 'ops': the same math in standard ONNX ops (Split/Mul/Concat for RoPE, MatMul, Softmax), with
 *   explicit position ids; for runtimes without the contrib op, and as a cross-check.
 *
 * Both take q|k|v as [batch·seq, (Hq + 2·Hkv)·d] and return [batch·seq, Hq·d], plus the
 * present K/V [batch, Hkv, total, d] when a cache is given.
 */
export type AttentionKind = 'gqa' | 'ops'

/**
 * 'auto' is 'ops': onnxruntime-web's GroupQueryAttention kernel took 4× as long as the
 * standard-op form per 256-token window (default model, 2 threads), and natively both were
 * equal. GQA stays selectable (its CPU kernel needs head sizes that are multiples of 16).
 */
export function resolveAttention(kind: AttentionKind | 'auto' | undefined, headDim: number): AttentionKind {
  if (kind === 'gqa' && headDim % 16 !== 0) throw new Error(`GroupQueryAttention needs a head size that is a multiple of 16, this model has ${headDim}`)
  return kind === 'gqa' ? 'gqa' : 'ops'
}

export interface AttentionShared {
  g: GraphBuilder
  numHeads: number
  numKvHeads: number
  headDim: number
  /** Shape(input_ids) = [batch, seq] (int64). */
  shapeBT: string
  /** seq as an int64 scalar. */
  seqLen: string
  /** position_ids [batch, seq] (int64). */
  positions: string
  /** RoPE tables [maxPositions, d/2]. */
  cosTable: string
  sinTable: string
  /** Values computed once per graph and reused by every layer. */
  cache: Map<string, string>
  /**
   * Additive mask [batch, 1, 1, seq, keys] replacing the 'ops' form's causal mask from position
   * ids (io 'hf': causal by sequence index, and attention_mask's padding).
   */
  mask?: string
}

export interface AttentionOutput {
  out: string
  presentKey: string
  presentValue: string
  /** The new tokens' K (after RoPE) and V [batch, Hkv, seq, d], full precision ('ops' only). */
  newKey?: string
  newValue?: string
}

/** `kvQuant`: KV-cache fake quantization of this layer (kv-quant.ts; 'ops' only). */
export function attention(kind: AttentionKind, s: AttentionShared, qkv: string, past: { key: string; value: string } | null, kvQuant?: KvLayerQuant | null): AttentionOutput {
  if (kvQuant && kind !== 'ops') throw new Error('KV-cache quantization is built on the standard-op attention')
  return kind === 'gqa' ? gqaAttention(s, qkv, past) : opsAttention(s, qkv, past, kvQuant ?? null)
}

function once(s: AttentionShared, key: string, make: () => string): string {
  let v = s.cache.get(key)
  if (!v) {
    v = make()
    s.cache.set(key, v)
  }
  return v
}

function dimsOf(s: AttentionShared, ...tail: number[]): string {
  return once(s, `dims:${tail.join(',')}`, () => s.g.op('Concat', [s.shapeBT, s.g.constInt64(tail)], { axis: { int: 0 } }))
}

function gqaAttention(s: AttentionShared, qkv: string, past: { key: string; value: string } | null): AttentionOutput {
  const { g, numHeads: Hq, numKvHeads: Hkv, headDim: d } = s
  const packed = g.op('Reshape', [qkv, dimsOf(s, (Hq + 2 * Hkv) * d)]) // [batch, seq, (Hq+2Hkv)·d]
  // total = cache length + seq; seqlens_k = total − 1 per batch row (int32), as the op wants.
  const total = once(s, `gqa-total:${past !== null}`, () =>
    past ? g.op('Add', [g.op('Gather', [g.op('Shape', [past.key]), g.constInt64([2], [])], { axis: { int: 0 } }), s.seqLen]) : s.seqLen,
  )
  const totalI32 = once(s, `gqa-total32:${past !== null}`, () => g.op('Cast', [total], { to: { int: 6 } }))
  const seqlensK = once(s, `gqa-seqlens:${past !== null}`, () => {
    const batch = g.op('Slice', [s.shapeBT, g.constInt64([0]), g.constInt64([1])])
    return g.op('Cast', [g.op('Expand', [g.op('Sub', [g.op('Reshape', [total, g.constInt64([1])]), g.constInt64([1])]), batch])], { to: { int: 6 } })
  })
  const [out, presentKey, presentValue] = g.node(
    'GroupQueryAttention',
    [packed, '', '', past?.key ?? '', past?.value ?? '', seqlensK, totalI32, s.cosTable, s.sinTable],
    {
      domain: MS_DOMAIN,
      outputs: 3,
      attrs: {
        num_heads: { int: Hq },
        kv_num_heads: { int: Hkv },
        scale: { float: 1 / Math.sqrt(d) },
        do_rotary: { int: 1 },
        rotary_interleaved: { int: 0 },
      },
    },
  ) as [string, string, string]
  return { out: g.op('Reshape', [out, g.constInt64([-1, Hq * d])]), presentKey, presentValue }
}

function opsAttention(s: AttentionShared, qkv: string, past: { key: string; value: string } | null, kvQuant: KvLayerQuant | null): AttentionOutput {
  const { g, numHeads: Hq, numKvHeads: Hkv, headDim: d } = s
  const G = Hq / Hkv
  const axes = (...a: number[]): string => g.constInt64(a)
  const split = once(s, 'ops-split', () => g.constInt64([Hq * d, Hkv * d, Hkv * d]))
  const [q2, k2, v2] = g.node('Split', [qkv, split], { attrs: { axis: { int: 1 } }, outputs: 3 }) as [string, string, string]
  // [batch·seq, n·d] → [batch, n, seq, d]
  const heads = (v: string, n: number): string => g.op('Transpose', [g.op('Reshape', [v, dimsOf(s, n, d)])], { perm: { ints: [0, 2, 1, 3] } })
  const cosP = once(s, 'ops-cos', () => g.op('Unsqueeze', [g.op('Gather', [s.cosTable, s.positions], { axis: { int: 0 } }), axes(1)]))
  const sinP = once(s, 'ops-sin', () => g.op('Unsqueeze', [g.op('Gather', [s.sinTable, s.positions], { axis: { int: 0 } }), axes(1)]))
  const rope = (x: string): string => {
    // HF rotate_half: [x1, x2] → [x1·cos − x2·sin, x2·cos + x1·sin]
    const [x1, x2] = g.node('Split', [x], { attrs: { axis: { int: -1 } }, outputs: 2 }) as [string, string]
    const r1 = g.op('Sub', [g.op('Mul', [x1, cosP]), g.op('Mul', [x2, sinP])])
    const r2 = g.op('Add', [g.op('Mul', [x2, cosP]), g.op('Mul', [x1, sinP])])
    return g.op('Concat', [r1, r2], { axis: { int: -1 } })
  }
  const q = rope(heads(q2, Hq))
  const newKey = rope(heads(k2, Hkv))
  const newValue = heads(v2, Hkv)
  // With KV quantization the keys/values attended to (and the cache) hold the dequantised new tokens.
  let k = kvQuant ? kvQuant.key(newKey) : newKey
  let v = kvQuant ? kvQuant.value(newValue) : newValue
  if (past) {
    k = g.op('Concat', [past.key, k], { axis: { int: 2 } })
    v = g.op('Concat', [past.value, v], { axis: { int: 2 } })
  }
  // 0 where a key is visible, −inf where it lies after the query: [batch, 1, 1, seq, keys].
  const mask = s.mask ?? once(s, `ops-mask:${past !== null}`, () => {
    const queryPos = g.op('Unsqueeze', [s.positions, axes(2)]) // [batch, seq, 1]
    let keyPos: string
    if (past) {
      // With a cache the keys are [past | new] at positions 0 … total−1.
      const total = g.op('Gather', [g.op('Shape', [k]), g.constInt64([2], [])], { axis: { int: 0 } })
      keyPos = g.op('Range', [g.constInt64([0], []), total, g.constInt64([1], [])])
    } else keyPos = g.op('Unsqueeze', [s.positions, axes(1)]) // [batch, 1, seq]
    const hidden = g.op('Greater', [keyPos, queryPos])
    return g.op('Unsqueeze', [g.op('Where', [hidden, g.constFloat([-Infinity], []), g.constFloat([0], [])]), axes(1, 2)])
  })
  // Grouped-query attention without copying K/V per query head: q heads h = j·G + g share kv
  // head j (transformers' repeat_kv), so q is viewed as [batch, Hkv, G, seq, d] and K/V
  // broadcast over G as [batch, Hkv, 1, keys, d].
  const scale = once(s, 'ops-scale', () => g.constFloat([1 / Math.sqrt(d)], []))
  const q5 = g.op('Reshape', [g.op('Mul', [q, scale]), g.constInt64([0, Hkv, G, -1, d])])
  const kT5 = g.op('Unsqueeze', [g.op('Transpose', [k], { perm: { ints: [0, 1, 3, 2] } }), axes(2)])
  const v5 = g.op('Unsqueeze', [v, axes(2)])
  const ctx = kvQuant?.pastOnly
    ? pastOnlyContext(g, { q5, kT5, v5, kNew: newKey, vNew: newValue, mask, seqLen: s.seqLen, pastKey: past?.key ?? null })
    : g.op('MatMul', [g.op('Softmax', [g.op('Add', [g.op('MatMul', [q5, kT5]), mask])], { axis: { int: -1 } }), v5]) // [batch, Hkv, G, seq, d]
  const out = g.op('Reshape', [
    g.op('Transpose', [g.op('Reshape', [ctx, g.constInt64([0, Hq, -1, d])])], { perm: { ints: [0, 2, 1, 3] } }),
    g.constInt64([-1, Hq * d]),
  ])
  return { out, presentKey: k, presentValue: v, newKey, newValue }
}
