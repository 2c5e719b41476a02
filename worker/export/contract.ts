/**
 * The contract every export format implements, one entry per target format in `registry.ts`
 * (GGUF for llama.cpp, ONNX, the dequantised Hugging Face folder, compressed-tensors). The
 * shared driver (`run-export.ts`) resolves the plan, refuses tensors a format cannot write,
 * stages the output under a temporary name beside the destination, renames it when complete
 * and writes the report beside it. A format only writes its bytes into the staged path.
 *
 * A format says per planned tensor what it can represent:
 * - exact: the written tensor dequantises to exactly the values the app evaluates;
 * - fallback: it writes something else, described (e.g. "integer zero point instead of RTN's
 *   fp16 minimum, re-quantized"); the report measures the difference per tensor;
 * - unsupported: the export refuses the plan, naming the tensor and why.
 */
import type { OpenedModel } from '../formats/contract'
import type { OpenOutput } from '../io/output-file'
import type { CalibrationOptions } from '../plan/calibration'
import type { Plan, ResolvedEntry } from '../plan/plan'

export type ExportFormatId = 'gguf' | 'onnx' | 'safetensors' | 'compressed-tensors'

/** Every format the CLI and the UI name, built or not (registry.ts says which are built). */
export const EXPORT_FORMAT_IDS: readonly ExportFormatId[] = Object.freeze(['gguf', 'onnx', 'safetensors', 'compressed-tensors'])

export type TensorSupport =
  | { kind: 'exact' }
  | { kind: 'fallback'; description: string }
  | { kind: 'unsupported'; reason: string }

/** Floating types a format may write its float tensors in. */
export type ExportFloatType = 'bf16' | 'fp16' | 'fp32'

export interface ExportOptions {
  /** Float type of written float tensors; unset: the model's declared dtype (fp32 when none). */
  dtype?: ExportFloatType
  /** Where calibrated methods (GPTQ, AWQ, anyN) get their activations, as `eval --plan` does. */
  calibration?: CalibrationOptions
  /** Largest safetensors shard in bytes (default 2 GB, as the Hugging Face tooling shards). */
  shardBytes?: number
  /** Format-specific choices by the format's own keys (e.g. GGUF's type for unrepresentable methods). */
  formatOptions?: Record<string, string | number | boolean>
}

/** What the driver hands a format: the opened source model and the plan resolved against it. */
export interface ExportJob {
  model: OpenedModel
  /** The model path as given (folder or file), for the report. */
  modelPath: string
  plan: Plan
  /** The plan file's path, or 'spec rtn:bits=4,…' for --quant. */
  planSource: string
  /** The plan's quantized tensors in model order (resolvePlanFor). */
  entries: ResolvedEntry[]
  options: ExportOptions
}

export interface ExportProgress {
  stage: 'calibrating' | 'writing' | 'finishing'
  done: number
  total: number
  tensor?: string
}

export interface ExportHooks {
  signal?: AbortSignal
  onProgress?(p: ExportProgress): void
  /** Opens every output file; tests inject one that fails part-way (disk full). Default: node:fs. */
  openOutput?: OpenOutput
}

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

export interface ExportFormat {
  id: ExportFormatId
  /** Name shown to users. */
  label: string
  /** A single file (GGUF) or a folder (HF, ONNX). */
  output: 'file' | 'folder'
  /** Why this source model cannot be exported to the format at all (e.g. not an HF model), or null. */
  checkModel(model: OpenedModel): string | null
  /** What the format can represent of one planned tensor under these options. */
  support(model: OpenedModel, entry: ResolvedEntry, options: ExportOptions): TensorSupport
  /**
   * Writes the export into `stagePath` (a file path, or an existing empty folder for folder
   * formats) tensor by tensor; the driver renames it to the destination when this resolves
   * and deletes it when this throws. Checks `hooks.signal` between tensors.
   */
  export(job: ExportJob, stagePath: string, hooks: ExportHooks): Promise<ExportContent>
}

/** An export that cannot run or did not complete; names the output and the reason. */
export class ExportError extends Error {
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`${path}: ${problem}`)
    this.name = 'ExportError'
  }
}
