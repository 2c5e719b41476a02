/**
 * The export report's types, alone and type-only: the UI (worker/api/contract.ts) imports them
 * without pulling the exporters' Node-typed modules into its typecheck.
 */

export type ExportFormatId = 'gguf' | 'onnx' | 'safetensors' | 'compressed-tensors'

/** Floating types a format may write its float tensors in. */
export type ExportFloatType = 'bf16' | 'fp16' | 'fp32'

/** One tensor as written. */
export interface ExportedTensor {
  /** Name in the written file(s) (a format may rename: GGUF's blk.0.attn_q.weight). */
  name: string
  /** The source model's tensor it comes from. */
  source: string
  /** The plan's method as a spec ('rtn:bits=4,group=128,…'), or null for a tensor kept as stored. */
  method: string | null
  /** Type as the target names it ('F32', 'BF16', 'Q4_K', 'int4 g128 asym (pack-quantized)', …). */
  writtenType: string
  /** Bytes this tensor occupies in the output (all its parts: codes, scales, zero points). */
  bytes: number
  /** 'kept': not in the plan; written as stored or converted to the output float type. */
  support: 'exact' | 'fallback' | 'kept'
  /** What was done differently from the plan (fallbacks), or rounding to the output float type. */
  note?: string
  /**
   * Largest |written − planned| over the tensor's values, when they differ (fallback, or a
   * float type that rounds the dequantised values); 0 or absent when exact.
   */
  maxAbsError?: number
  /** Root mean square of written − planned over the tensor (with maxAbsError). */
  rmsError?: number
}

/** What a format's `export` returns; the driver completes it into an ExportReport. */
export interface ExportContent {
  tensors: ExportedTensor[]
  /** Bytes per section of the output (e.g. quantized, kept, metadata, tokenizer); they sum to the total. */
  sections: Record<string, number>
  /** Facts the user must know (rounding, fallbacks, what the consumer will do differently). */
  notes: string[]
}

/** The export's report (JSON), also written beside the export as `<name>.report.json`. */
export interface ExportReport extends ExportContent {
  format: ExportFormatId
  label: string
  /** The export's final path (file or folder). */
  path: string
  /** Path of the report written beside it. */
  reportPath: string
  files: { path: string; bytes: number }[]
  bytes: number
  seconds: number
  model: { path: string; name: string; fingerprint: string }
  plan: { source: string; name: string; description?: string; quantized: number }
  /** Perplexity / KLD of the export, added by the CLI or UI when they evaluate it. */
  evaluation?: Record<string, unknown>
}
