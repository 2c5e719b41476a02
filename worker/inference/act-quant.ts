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
 * not the result. The k-means kind (a per-layer-input codebook fitted on calibration activations)
 * is not wired into the graph yet.
 */
export interface ActGraphOptions {
  kind: 'int'
  bits: number
  /** k per side. */
  outliers: number
}

export function checkActOptions(o: ActGraphOptions, smallestInput: number): void {
  if (o.kind !== 'int') throw new InferenceInputError(`activation quantization '${String(o.kind)}' is not built into the evaluation graph (int only)`)
  if (!Number.isInteger(o.bits) || o.bits < 2 || o.bits > 16) throw new InferenceInputError(`activation bits must be an integer from 2 to 16, got ${o.bits}`)
  if (!Number.isInteger(o.outliers) || o.outliers < 0) throw new InferenceInputError(`activation outliers must be an integer ≥ 0, got ${o.outliers}`)
  if (2 * o.outliers >= smallestInput) throw new InferenceInputError(`activation outliers: ${2 * o.outliers} per token leave nothing of a ${smallestInput}-value linear input to quantize`)
}

/** x [rows, cols] → the same, fake-quantized per row. */
export function fakeQuantActInt(g: GraphBuilder, x: string, o: ActGraphOptions): string {
  const levels = 2 ** o.bits - 1
  let lo: string
  let hi: string
  let outlier: string | null = null
  if (o.outliers > 0) {
    const k = g.constInt64([o.outliers])
    const top = (largest: number): string => g.node('TopK', [x, k], { attrs: { axis: { int: 1 }, largest: { int: largest }, sorted: { int: 0 } }, outputs: 2 })[1]!
    // 1 at the 2k outlier columns of each row, 0 elsewhere
    const idx = g.op('Concat', [top(1), top(0)], { axis: { int: 1 } })
    const zeros = g.op('Mul', [x, g.constFloat([0], [])])
    const ones = g.op('Add', [g.op('Mul', [g.op('Cast', [idx], { to: { int: 1 } }), g.constFloat([0], [])]), g.constFloat([1], [])])
    outlier = g.op('Cast', [g.op('ScatterElements', [zeros, idx, ones], { axis: { int: 1 } })], { to: { int: 9 } })
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
