import type { GraphBuilder } from '../formats/onnx/graph-builder'
import { InferenceInputError } from './errors'

/**
 * KLLM's uniform activation baseline in the evaluation graph: the input of every decoder
 * linear (q|k|v, o, gate|up, down; lm_head stays full precision) fake-quantized per token
 * with asymmetric b-bit INT, the k largest and k smallest entries of each token kept in full
 * precision (Orizuru's top-k, here an ONNX TopK per side), exactly the definition of
 * quant/activations/int-per-token.ts:
 *   over the non-outliers m = min, M = max, s = (M − m)/(2^b − 1),
 *   q = clamp(⌊(x − m)/s + ½⌋, 0, 2^b − 1), x̂ = q·s + m; outliers pass unchanged.
 * Differences: float32 instead of float64 for s and m; at exactly equal values ONNX TopK picks
 * the lower column first on both sides (the TS detector's stable order picks the higher column
 * among equal largest values), which changes which of two equal values is called the outlier,
 * not the result.
 *
 * The k-means kind (quant/activations/kmeans-act.ts): per token, the non-outliers divided by
 * their absmax (norm 'absmax-non-outlier'; 'none' keeps them raw), coded to the nearest centroid
 * of the layer input's codebook — the number of codebook midpoints strictly below the value
 * (Greater + ReduceSum over the 2^b − 1 midpoints, a value on a midpoint stays low, as
 * nearestLevel) — then Gather(centroids)·absmax; outliers unchanged. Codebooks are fitted on
 * calibration activations before the graph is built (plan/act-codebooks.ts) and passed in by
 * capture point id ('L3.attn_in', 'L3.o_in', 'L3.mlp_in', 'L3.down_in').
 */
export type ActGraphOptions =
  | {
      kind: 'int'
      bits: number
      /** k per side. */
      outliers: number
    }
  | {
      kind: 'kmeans'
      bits: number
      outliers: number
      norm: 'absmax-non-outlier' | 'none'
      /** Capture point id → 2^bits centroids, ascending. */
      codebooks: Record<string, Float32Array>
    }

/** What a result echoes (no codebooks). */
export function actEcho(o: ActGraphOptions): Record<string, unknown> {
  return o.kind === 'int' ? { kind: 'int', bits: o.bits, outliers: o.outliers } : { kind: 'kmeans', bits: o.bits, outliers: o.outliers, norm: o.norm, codebooks: Object.keys(o.codebooks).length }
}

export function checkActOptions(o: ActGraphOptions, smallestInput: number): void {
  if (o.kind !== 'int' && o.kind !== 'kmeans') throw new InferenceInputError(`activation quantization '${String((o as { kind: unknown }).kind)}' is not built into the evaluation graph`)
  if (!Number.isInteger(o.bits) || o.bits < 1 || o.bits > 16) throw new InferenceInputError(`activation bits must be an integer from 2 to 16, got ${o.bits}`)
  if (!Number.isInteger(o.outliers) || o.outliers < 0) throw new InferenceInputError(`activation outliers must be an integer ≥ 0, got ${o.outliers}`)
  if (2 * o.outliers >= smallestInput) throw new InferenceInputError(`activation outliers: ${2 * o.outliers} per token leave nothing of a ${smallestInput}-value linear input to quantize`)
}

/** x [rows, cols], the input at capture point `id` → the same, fake-quantized per row. */
export function fakeQuantAct(g: GraphBuilder, x: string, o: ActGraphOptions, id: string): string {
  if (o.kind === 'int') return fakeQuantActInt(g, x, o)
  const centroids = o.codebooks[id]
  if (!centroids || centroids.length !== 2 ** o.bits) throw new InferenceInputError(`k-means activations: no codebook of ${2 ** o.bits} centroids for the input ${id}`)
  for (let i = 1; i < centroids.length; i++) if (!(centroids[i]! >= centroids[i - 1]!)) throw new InferenceInputError(`k-means activations: the codebook of ${id} is not ascending at ${i}`)
  const outlier = o.outliers > 0 ? outlierMask(g, x, o.outliers) : null
  let norm: string | null = null
  if (o.norm === 'absmax-non-outlier') {
    const abs = g.op('Abs', [x])
    norm = g.op('ReduceMax', [outlier ? g.op('Where', [outlier, g.constFloat([0], []), abs]) : abs], { axes: { ints: [1] }, keepdims: { int: 1 } })
  }
  // A token whose inliers are all 0 has norm 0: any code times 0 decodes to 0, as in kmeans-act.ts.
  const u = norm ? g.op('Div', [x, g.op('Max', [norm, g.constFloat([1.1754943508222875e-38], [])])]) : x
  const code = nearestCentroid(g, u, centroids, id.replace(/\W/g, '_'))
  let deq = g.op('Gather', [g.constFloat(centroids, [centroids.length], `act_codebook_${id.replace(/\W/g, '_')}`), code], { axis: { int: 0 } })
  if (norm) deq = g.op('Mul', [deq, norm])
  return outlier ? g.op('Where', [outlier, x, deq]) : deq
}

/**
 * Index of the nearest centroid of `u` [rows, cols] (int64): the number of codebook midpoints
 * strictly below it. A uniform bucketing of the midpoints' span with buckets no wider than the
 * smallest midpoint gap (≤ 1 midpoint each) gives, by a Gather, the count below the previous
 * bucket; three comparisons with the next midpoints finish it exactly, even when float rounding
 * puts u one bucket off. O(1) per value instead of 2^b − 1 comparisons ([rows, cols, 255]
 * floats at 8 bits). Codebooks whose gaps would need more than 2^16 buckets (near-equal
 * centroids) fall back to comparing with every midpoint.
 */
function nearestCentroid(g: GraphBuilder, u: string, centroids: Float32Array, tag: string): string {
  const mids = Array.from({ length: centroids.length - 1 }, (_, i) => Math.fround((centroids[i]! + centroids[i + 1]!) / 2))
  let gap = Infinity
  for (let i = 1; i < mids.length; i++) gap = Math.min(gap, mids[i]! - mids[i - 1]!)
  const lo = mids[0]!
  const buckets = mids.length === 1 ? 2 : Math.floor((mids.at(-1)! - lo) / gap) + 2
  if (!(gap > 0) || buckets > 65536) {
    const above = g.op('Greater', [g.op('Unsqueeze', [u, g.constInt64([2])]), g.constFloat(mids, [mids.length], `act_mids_${tag}`)])
    return g.op('ReduceSum', [g.op('Cast', [above], { to: { int: 7 } }), g.constInt64([2])], { keepdims: { int: 0 } })
  }
  const width = mids.length === 1 ? 1 : gap
  // below[b] = midpoints below bucket b − 1's left edge
  const below: number[] = []
  for (let b = 0, n = 0; b < buckets; b++) {
    const edge = lo + (b - 1) * width
    while (n < mids.length && mids[n]! < edge) n++
    below.push(n)
  }
  const bucket = g.op('Cast', [g.op('Clip', [g.op('Floor', [g.op('Div', [g.op('Sub', [u, g.constFloat([lo], [])]), g.constFloat([width], [])])]), g.constFloat([0], []), g.constFloat([buckets - 1], [])])], { to: { int: 7 } })
  const base = g.op('Gather', [g.constInt64(below, [below.length], `act_below_${tag}`), bucket], { axis: { int: 0 } })
  const padded = g.constFloat([...mids, Infinity, Infinity, Infinity], [mids.length + 3], `act_mids_${tag}`)
  let code = base
  for (let j = 0; j < 3; j++) {
    const m = g.op('Gather', [padded, j === 0 ? base : g.op('Add', [base, g.constInt64([j], [])])], { axis: { int: 0 } })
    code = g.op('Add', [code, g.op('Cast', [g.op('Greater', [u, m])], { to: { int: 7 } })])
  }
  return code
}

/** Bool [rows, cols]: true at the k largest and k smallest columns of each row. */
function outlierMask(g: GraphBuilder, x: string, k: number): string {
  const kk = g.constInt64([k])
  const top = (largest: number): string => g.node('TopK', [x, kk], { attrs: { axis: { int: 1 }, largest: { int: largest }, sorted: { int: 0 } }, outputs: 2 })[1]!
  const idx = g.op('Concat', [top(1), top(0)], { axis: { int: 1 } })
  const zeros = g.op('Mul', [x, g.constFloat([0], [])])
  const ones = g.op('Add', [g.op('Mul', [g.op('Cast', [idx], { to: { int: 1 } }), g.constFloat([0], [])]), g.constFloat([1], [])])
  return g.op('Cast', [g.op('ScatterElements', [zeros, idx, ones], { axis: { int: 1 } })], { to: { int: 9 } })
}

function fakeQuantActInt(g: GraphBuilder, x: string, o: { bits: number; outliers: number }): string {
  const levels = 2 ** o.bits - 1
  let lo: string
  let hi: string
  let outlier: string | null = null
  if (o.outliers > 0) {
    outlier = outlierMask(g, x, o.outliers)
    lo = g.op('ReduceMin', [g.op('Where', [outlier, g.constFloat([Infinity], []), x])], { axes: { ints: [1] }, keepdims: { int: 1 } })
    hi = g.op('ReduceMax', [g.op('Where', [outlier, g.constFloat([-Infinity], []), x])], { axes: { ints: [1] }, keepdims: { int: 1 } })
  } else {
    lo = g.op('ReduceMin', [x], { axes: { ints: [1] }, keepdims: { int: 1 } })
    hi = g.op('ReduceMax', [x], { axes: { ints: [1] }, keepdims: { int: 1 } })
  }
  const step = g.op('Max', [g.op('Div', [g.op('Sub', [hi, lo]), g.constFloat([levels], [])]), g.constFloat([1.1754943508222875e-38], [])])
  const code = g.op('Clip', [g.op('Floor', [g.op('Add', [g.op('Div', [g.op('Sub', [x, lo]), step]), g.constFloat([0.5], [])])]), g.constFloat([0], []), g.constFloat([levels], [])])
  const deq = g.op('Add', [g.op('Mul', [code, step]), lo])
  return outlier ? g.op('Where', [outlier, x, deq]) : deq
}
