/**
 * The contract every model format implements (one folder per format: safetensors/, gguf/,
 * onnx/, each with its reader). Adding a format is one entry in `registry.ts`; nothing else
 * knows the list. `open-model.ts` dispatches through the registry.
 *
 * Conventions shared by all formats:
 * - `shape` is row-major, outermost dimension first (numpy / PyTorch order). GGUF stores
 *   ne[0] innermost, so its reader reverses the dims.
 * - Any tensor can be viewed as a matrix [rows, cols] with cols = last dimension and rows =
 *   product of the others (a linear weight [N, K] is N rows of K inputs). Decoding happens
 *   row range by row range, so statistics stream over tensors larger than memory allows.
 * - `dtype` is the stored type: safetensors names for plain types (F32, F16, BF16, F64,
 *   F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL), ggml names for GGUF block types (Q4_K …),
 *   and for ONNX the safetensors-style name of the element type (or MATMULNBITS_Q<bits>).
 */
export type ModelFormatId = 'safetensors' | 'gguf' | 'onnx'

export interface TensorEntry {
  /** Name exactly as stored in the file. */
  name: string
  dtype: string
  shape: number[]
  /** Bytes the tensor occupies in its file(s). */
  byteLength: number
  /** File holding the tensor's bytes (absolute path). */
  file: string
  /** Absolute byte offset of the first byte in `file`. */
  byteOffset: number
  /** False for stored types this build cannot decode (still listed, with their name). */
  decodable: boolean
  /**
   * Optional second name used to classify the tensor into a block and role, e.g. the
   * name of the ONNX MatMul node an anonymous initializer feeds.
   */
  alias?: string
  /**
   * Set on virtual entries a reader derives from stored ones (e.g. the dequantised weight of
   * an ONNX MatMulNBits node): the stored tensors it comes from. Virtual entries are not
   * counted in parameter/byte totals and are not "as stored in the file".
   */
  derivedFrom?: string[]
}

/** Architecture hyper-parameters, normalised across HF config versions and GGUF metadata. */
export interface ModelConfig {
  /** 'llama' | 'mistral' | 'qwen2' | … as the source names it (HF model_type, GGUF general.architecture). */
  architecture: string
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  numKvHeads: number
  headDim: number
  vocabSize: number
  rmsNormEps: number
  ropeTheta: number
  maxPositionEmbeddings: number | null
  tieWordEmbeddings: boolean
  /** q/k/v projections carry a bias (qwen2). */
  attentionBias: boolean
  /** Declared storage dtype (torch_dtype / dtype), if any. */
  dtype: string | null
  /** RoPE scaling as declared (e.g. {rope_type: 'llama3', factor: 8, …}), or null for plain RoPE. */
  ropeScaling: Record<string, unknown> | null
}

export interface OpenedModel {
  format: ModelFormatId
  /** Every file the model was read from (absolute paths), weights first. */
  files: string[]
  /** Architecture name if the source declares one, else null. */
  architecture: string | null
  config: ModelConfig | null
  /** Format-level metadata (GGUF key/values, safetensors __metadata__, ONNX producer …). */
  metadata: Record<string, unknown>
  tensors: TensorEntry[]
  /** Path of a tokenizer.json next to the model, if any. */
  tokenizerPath: string | null
  /**
   * Decoded float32 values of rows [rowStart, rowEnd) of `name` viewed as [rows, cols].
   * Reads only the bytes of those rows.
   */
  readRows(name: string, rowStart: number, rowEnd: number): Promise<Float32Array>
  /**
   * readRows in float64: F64 tensors exactly (float32 would turn 1e300 into Infinity and
   * round the rest), every other type widened from readRows. Statistics of F64 tensors use it
   * when present (the three file readers have it; in-memory test models need not).
   */
  readRows64?(name: string, rowStart: number, rowEnd: number): Promise<Float64Array>
  /** The stored bytes of a tensor, undecoded. */
  readRaw(name: string): Promise<Uint8Array>
  /**
   * The stored bytes of rows [rowStart, rowEnd) of a plain-dtype tensor (F16, BF16, F32 …), for
   * exporters that copy a kept tensor in its own type chunk by chunk. Readers whose tensors
   * are plain byte ranges have it (safetensors); others leave it out.
   */
  readRawRows?(name: string, rowStart: number, rowEnd: number): Promise<Uint8Array>
  close(): Promise<void>
}

/** One entry of the format registry (formats/registry.ts); each format folder exports one. */
export interface ModelFormat {
  id: ModelFormatId
  /** Name shown to users. */
  label: string
  /**
   * File name endings this format owns, lower case (['.gguf']). A file ending in one of them is
   * opened by this format whatever its bytes, so a corrupt file gets this format's own error.
   */
  extensions: readonly string[]
  /** Recognises the format from the first bytes (at least 16 when the file has them), for other names. */
  match(head: Uint8Array): boolean
  open(path: string): Promise<OpenedModel>
}

/** Matrix view of a shape: cols = last dim (1 for scalars), rows = product of the rest. */
export function matrixShape(shape: readonly number[]): { rows: number; cols: number } {
  if (shape.length === 0) return { rows: 1, cols: 1 }
  const cols = shape[shape.length - 1]!
  let rows = 1
  for (let i = 0; i < shape.length - 1; i++) rows *= shape[i]!
  return { rows, cols }
}

/**
 * Why a shape read from a file header cannot be used, or null when it can: every dim a
 * non-negative safe integer, and the element count and the matrix view's row count exact
 * JS integers (≤ 2^53), so nothing downstream multiplies its way into inexact numbers. A
 * zero dim is legal (the tensor is empty, whatever the other dims say).
 */
export function shapeProblem(shape: readonly number[]): string | null {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) return `dimension ${d} of shape [${shape.join(', ')}] is not a non-negative integer below 2^53`
  }
  let rows = 1
  for (let i = 0; i < shape.length - 1; i++) rows *= shape[i]!
  const count = rows * (shape.length ? shape[shape.length - 1]! : 1)
  if (!Number.isSafeInteger(rows)) return `shape [${shape.join(', ')}] has more than 2^53 rows (product of all but the last dimension)`
  if (!Number.isSafeInteger(count)) return `shape [${shape.join(', ')}] holds more than 2^53 elements`
  return null
}

export function elementCount(shape: readonly number[]): number {
  let n = 1
  for (const d of shape) n *= d
  return n
}
