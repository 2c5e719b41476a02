import type { GraphBuilder } from '../formats/onnx/graph-builder'

/**
 * Graph outputs for layer importance (worker/importance/), computed from the residual stream
 * h_0 … h_L (h_l enters block l, h_{l+1} leaves it) inside the evaluation graph, so the
 * [positions, vocab] logit-lens projections never leave the runtime:
 *
 *   imp.topk.i  [rows, k] int64  top-k token ids of lm_head(final_norm(h_i)) (or lm_head(h_i)
 *               without the final norm): onnxruntime's TopK, sorted, which by the ONNX
 *               specification puts the lower index first among equal values — the tie rule
 *               the PyTorch reference reproduces with a stable descending sort.
 *   imp.cos.l   [rows] float32   cos(h_l, h_{l+1}) per position.
 *
 * A run holds L + 1 lens projections of [rows, vocab] at most (the runtime frees each after
 * its TopK), which the caller bounds through the rows per run.
 */
export interface ImportanceGraphOptions {
  /** Logit-lens top-k ids per residual; null for none. */
  lens?: { k: number; finalNorm: boolean } | null
  /** Per-position cosine of each block's input and output. */
  cosine?: boolean
}

export interface ImportanceOutputs {
  /** L + 1 output names (residual 0 … L), empty without the lens. */
  topk: string[]
  k: number | null
  /** L output names (block 0 … L − 1), empty without cosine. */
  cos: string[]
}

export function addImportanceOutputs(
  g: GraphBuilder,
  residuals: string[],
  head: { finalNorm: (x: string) => string; lmHead: string; vocab: number },
  options: ImportanceGraphOptions,
): ImportanceOutputs {
  const result: ImportanceOutputs = { topk: [], k: null, cos: [] }
  const lens = options.lens
  if (lens) {
    const { k } = lens
    if (!Number.isInteger(k) || k < 1 || k > head.vocab) throw new RangeError(`importance: k must be an integer in [1, ${head.vocab}] (the vocabulary), got ${k}`)
    const K = g.constInt64([k])
    residuals.forEach((h, i) => {
      const z = g.op('Gemm', [lens.finalNorm ? head.finalNorm(h) : h, head.lmHead], { transB: { int: 1 } })
      const [, ids] = g.node('TopK', [z, K], { attrs: { axis: { int: -1 }, largest: { int: 1 }, sorted: { int: 1 } }, outputs: 2 }) as [string, string]
      const name = `imp.topk.${i}`
      g.output(name, ids, 'int64', ['rows', k])
      result.topk.push(name)
    })
    result.k = k
  }
  if (options.cosine) {
    const rowAxis = g.constInt64([1])
    const sumSq = (v: string): string => g.op('ReduceSumSquare', [v], { axes: { ints: [1] }, keepdims: { int: 0 } })
    for (let l = 0; l + 1 < residuals.length; l++) {
      const a = residuals[l]!
      const b = residuals[l + 1]!
      const dot = g.op('ReduceSum', [g.op('Mul', [a, b]), rowAxis], { keepdims: { int: 0 } })
      const cos = g.op('Div', [dot, g.op('Sqrt', [g.op('Mul', [sumSq(a), sumSq(b)])])])
      const name = `imp.cos.${l}`
      g.output(name, cos, 'float32', ['rows'])
      result.cos.push(name)
    }
  }
  return result
}
