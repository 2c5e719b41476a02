/**
 * Multiply and add counts of a decoder's linear layers, dense against KLLM's index-based compute
 * (index-compute.ts performs exactly these counts; the tests check it). Per output of a
 * [rows = out, cols = in] linear, one token, k outliers per side, K_A = 2^ba centroids:
 *
 *   dense:        cols multiplies,                      cols − 1 adds
 *   index-based:  K_A + 2k (+1 for the normaliser) mul, (cols − 2k) + (K_A − 1) + 2k adds
 *
 * (the inlier accumulations into the K_A code bins, the combine, the outliers' side path). The
 * weight's bits do not enter the counts: C_W[a_ij] is a table read, whatever the table's size.
 * Dequantising the activations for the dense path, attention's QKᵀ and AV, norms and the
 * lm_head are not counted (the lm_head can be added). Counts are of arithmetic only: they are
 * not a speed-up, and KLLM's 9.67× / 229.5× come from its hardware simulation, not from here.
 */
import type { ModelConfig } from '../../formats/contract'

export interface OpCount {
  mul: number
  add: number
}

export interface ActCodingShape {
  /** Activation bits: K_A = 2^bits centroids. */
  bits: number
  /** Outliers per side (k). */
  outliers: number
  /** Whether a per-token normaliser multiplies each output ('absmax-non-outlier'). */
  normalised: boolean
}

export interface LinearShape {
  /** Role in the block: q, k, v, o, gate, up, down (or lm_head). */
  name: string
  rows: number
  cols: number
}

export interface LinearOpCounts extends LinearShape {
  dense: OpCount
  index: OpCount
}

/** Counts for `tokens` tokens through one [rows, cols] linear. */
export function linearOpCounts(shape: LinearShape, act: ActCodingShape, tokens = 1): LinearOpCounts {
  const { rows, cols } = shape
  const KA = 2 ** act.bits
  const k = act.outliers
  if (2 * k >= cols) throw new RangeError(`op counts: ${2 * k} outliers per token leave nothing of ${shape.name}'s ${cols} inputs to code`)
  const outputs = tokens * rows
  return {
    ...shape,
    dense: { mul: outputs * cols, add: outputs * (cols - 1) },
    index: { mul: outputs * (KA + 2 * k + (act.normalised ? 1 : 0)), add: outputs * (cols - 2 * k + (KA - 1) + 2 * k) },
  }
}

type ShapeConfig = Pick<ModelConfig, 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' | 'numKvHeads' | 'headDim' | 'vocabSize'>

/** The seven linears of one llama/mistral/qwen2 block (the shapes decoder-spec.ts checks), [out, in]. */
export function blockLinearShapes(c: ShapeConfig): LinearShape[] {
  const q = c.numHeads * c.headDim
  const kv = c.numKvHeads * c.headDim
  return [
    { name: 'q', rows: q, cols: c.hiddenSize },
    { name: 'k', rows: kv, cols: c.hiddenSize },
    { name: 'v', rows: kv, cols: c.hiddenSize },
    { name: 'o', rows: c.hiddenSize, cols: q },
    { name: 'gate', rows: c.intermediateSize, cols: c.hiddenSize },
    { name: 'up', rows: c.intermediateSize, cols: c.hiddenSize },
    { name: 'down', rows: c.hiddenSize, cols: c.intermediateSize },
  ]
}

export interface ModelOpCounts {
  /** e.g. 'W4A4 (k-means, 4 outliers/side)'. */
  label: string
  tokens: number
  /** One block's linears (every block has the same shapes). */
  block: LinearOpCounts[]
  lmHead: LinearOpCounts | null
  total: { dense: OpCount; index: OpCount }
  /** SiLU evaluations per token over all blocks: dense (one per intermediate value) vs per-centroid LUT. */
  silu: { dense: number; lut: number }
}

export function modelOpCounts(config: ShapeConfig, weightBits: number, act: ActCodingShape, opts: { tokens?: number; lmHead?: boolean } = {}): ModelOpCounts {
  const tokens = opts.tokens ?? 1
  const block = blockLinearShapes(config).map((s) => linearOpCounts(s, act, tokens))
  const lmHead = opts.lmHead ? linearOpCounts({ name: 'lm_head', rows: config.vocabSize, cols: config.hiddenSize }, act, tokens) : null
  const total = { dense: { mul: 0, add: 0 }, index: { mul: 0, add: 0 } }
  for (const l of block) {
    for (const side of ['dense', 'index'] as const) {
      total[side].mul += config.numLayers * l[side].mul
      total[side].add += config.numLayers * l[side].add
    }
  }
  if (lmHead) {
    for (const side of ['dense', 'index'] as const) {
      total[side].mul += lmHead[side].mul
      total[side].add += lmHead[side].add
    }
  }
  // The gate output is coded before SiLU: 2^ba evaluations per token (once per layer without a
  // normaliser) plus one per outlier, against intermediateSize dense ones.
  const KA = 2 ** act.bits
  const perToken = act.normalised ? KA + 2 * act.outliers : 2 * act.outliers
  const silu = {
    dense: tokens * config.numLayers * config.intermediateSize,
    lut: config.numLayers * (tokens * perToken + (act.normalised ? 0 : KA)),
  }
  const label = `W${weightBits}A${act.bits} (k-means, ${act.outliers} outlier${act.outliers === 1 ? '' : 's'}/side${act.normalised ? ', per-token absmax' : ''})`
  return { label, tokens, block, lmHead, total, silu }
}
