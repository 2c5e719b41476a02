/**
 * One orientation for every linear weight, whatever the format stored: Hugging Face's
 * [out, in] with HF's row order. Statistics are computed on the matrix as stored (rows are
 * read in storage order, which is what makes them stream); this file turns them into the
 * statistics of the HF-oriented matrix, so "output channel 37" means the same channel of the
 * same weight in safetensors, GGUF and ONNX.
 *
 * - ONNX MatMul computes X·B with B stored [in, out] (torch.onnx folds nn.Linear's transpose
 *   into the initializer): rows and columns swap.
 * - llama.cpp's converter permutes the rows of llama q/k per head for its RoPE layout
 *   (worker/inference/gguf-layout.ts): stored row h·d + 2i + j holds HF row h·d + j·d/2 + i.
 *
 * Only per-row/per-column arrays, the heatmap and the top-k coordinates change; the value
 * distribution (moments, histogram, counts) does not depend on the orientation.
 */
import type { OpenedModel } from '../formats/contract'
import type { OrientedTensorStats, StatsOrientation, TensorStats } from './stats-types'

export interface OrientationPlan {
  /** Swap rows and columns (ONNX MatMul initializer stored [in, out]). */
  transpose: boolean
  /** Head size of a GGUF llama q/k weight whose rows are permuted, else null. */
  unpermuteHeadDim: number | null
}

export const AS_STORED: OrientationPlan = Object.freeze({ transpose: false, unpermuteHeadDim: null })

/** Consumer chains (onnx reader's `initializerConsumers`) whose weight operand is stored [in, out]. */
const MATMUL_B_CHAINS = new Set(['MatMul', 'Cast>MatMul', 'DequantizeLinear>MatMul'])

/**
 * llama.cpp permutes q/k rows for the architectures its LlamaModel converter writes (llama,
 * mistral); qwen2 and others use the NEOX RoPE layout and are stored in HF order. The
 * inference path (decoder-spec.ts `qkPermuted`) makes the same decision.
 */
export function ggufPermutesQk(architecture: string | null | undefined): boolean {
  return architecture === 'llama' || architecture === 'mistral'
}

/**
 * How tensor `name` of `model` must be re-oriented. `role` is its linear role in the logical
 * model ('q', 'k', … or null).
 */
export function orientationPlan(model: OpenedModel, name: string, role: string | null): OrientationPlan {
  const entry = model.tensors.find((t) => t.name === name)
  if (!entry || entry.shape.length !== 2) return AS_STORED
  if (model.format === 'onnx') {
    // Virtual MatMulNBits weights are already [N, K]; Gemm's B is taken as transB=1 (torch's export of nn.Linear).
    if (entry.derivedFrom) return AS_STORED
    const consumers = model.metadata.initializerConsumers as Record<string, string> | undefined
    const chain = consumers?.[name]
    return chain && MATMUL_B_CHAINS.has(chain) ? { transpose: true, unpermuteHeadDim: null } : AS_STORED
  }
  if (model.format === 'gguf' && (role === 'q' || role === 'k')) {
    const cfg = model.config
    const arch = cfg?.architecture ?? model.architecture
    if (!cfg || !ggufPermutesQk(arch)) return AS_STORED
    const d = cfg.headDim
    if (d < 2 || d % 2 !== 0 || entry.shape[0]! % d !== 0) return AS_STORED
    return { transpose: false, unpermuteHeadDim: d }
  }
  return AS_STORED
}

/** HF row held by stored row `r` of a llama.cpp-permuted q/k weight with head size `d`. */
export function hfRowOfGgufRow(r: number, d: number): number {
  const h = Math.floor(r / d)
  const within = r - h * d
  const i = within >> 1
  const j = within & 1
  return h * d + j * (d / 2) + i
}

/** The statistics of the HF-oriented matrix; `stats` (maybe a cached object) is not modified. */
export function orientStats(stats: TensorStats, plan: OrientationPlan): OrientedTensorStats {
  let s: TensorStats = stats
  if (plan.transpose) s = transposed(s)
  let heatmapRowsPermuted = false
  if (plan.unpermuteHeadDim !== null) {
    const r = unpermuted(s, plan.unpermuteHeadDim)
    s = r.stats
    heatmapRowsPermuted = r.heatmapRowsPermuted
  }
  const orientation: StatsOrientation = {
    transposed: plan.transpose,
    rowsUnpermuted: plan.unpermuteHeadDim !== null,
    heatmapRowsPermuted,
    note: orientationNote(plan, heatmapRowsPermuted),
  }
  return { ...s, orientation }
}

function orientationNote(plan: OrientationPlan, heatmapRowsPermuted: boolean): string | null {
  if (plan.transpose) return 'Shown as [out, in], HF orientation; stored transposed ([in, out], ONNX MatMul).'
  if (plan.unpermuteHeadDim !== null) {
    return heatmapRowsPermuted
      ? "Rows shown in HF order (llama.cpp's q/k permutation undone), except the heatmap, whose row bands keep the stored order."
      : "Rows shown in HF order; stored permuted by llama.cpp's converter for its RoPE layout."
  }
  return null
}

function byMagnitude(a: { value: number; index: number }, b: { value: number; index: number }): number {
  return Math.abs(b.value) - Math.abs(a.value) || a.index - b.index
}

function transposed(s: TensorStats): TensorStats {
  const { rows: hr, cols: hc, values } = s.heatmap
  const t = new Array<number>(values.length)
  for (let r = 0; r < hr; r++) for (let c = 0; c < hc; c++) t[c * hr + r] = values[r * hc + c]!
  // Shown matrix has s.cols rows of s.rows columns.
  const topK = s.topK.map((e) => ({ index: e.col * s.rows + e.row, row: e.col, col: e.row, value: e.value })).sort(byMagnitude)
  return {
    ...s,
    rows: s.cols,
    cols: s.rows,
    rowAbsmax: s.colAbsmax,
    colAbsmax: s.rowAbsmax,
    topK,
    heatmap: { rows: hc, cols: hr, values: t },
  }
}

function unpermuted(s: TensorStats, d: number): { stats: TensorStats; heatmapRowsPermuted: boolean } {
  // An empty tensor has empty per-row arrays (tensor-stats.ts) however many rows its shape says.
  if (s.count === 0) return { stats: s, heatmapRowsPermuted: false }
  const rowAbsmax = new Array<number>(s.rows)
  for (let r = 0; r < s.rows; r++) rowAbsmax[hfRowOfGgufRow(r, d)] = s.rowAbsmax[r]!
  const topK = s.topK
    .map((e) => {
      const row = hfRowOfGgufRow(e.row, d)
      return { index: row * s.cols + e.col, row, col: e.col, value: e.value }
    })
    .sort(byMagnitude)
  const { rows: hr, cols: hc, values } = s.heatmap
  // Heatmap row bands are floor(r·hr/rows) (stats-accumulator.ts). If every row stays in its
  // band the heatmap is already right; with one band per row it is permuted like the rows.
  const band = (r: number): number => Math.floor((r * hr) / s.rows)
  let sameBands = true
  for (let r = 0; r < s.rows && sameBands; r++) sameBands = band(r) === band(hfRowOfGgufRow(r, d))
  let heatmap = s.heatmap
  let heatmapRowsPermuted = false
  if (!sameBands) {
    if (hr === s.rows) {
      const out = new Array<number>(values.length)
      for (let r = 0; r < hr; r++) {
        const to = hfRowOfGgufRow(r, d)
        for (let c = 0; c < hc; c++) out[to * hc + c] = values[r * hc + c]!
      }
      heatmap = { rows: hr, cols: hc, values: out }
    } else {
      heatmapRowsPermuted = true
    }
  }
  return { stats: { ...s, rowAbsmax, topK, heatmap }, heatmapRowsPermuted }
}
