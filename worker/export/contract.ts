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

import type { ExportContent, ExportFloatType, ExportFormatId } from './report-types'

export type { ExportContent, ExportedTensor, ExportFloatType, ExportFormatId, ExportReport } from './report-types'

/** Every format the CLI and the UI name, built or not (registry.ts says which are built). */
export const EXPORT_FORMAT_IDS: readonly ExportFormatId[] = Object.freeze(['gguf', 'onnx', 'safetensors', 'compressed-tensors'])

export type TensorSupport =
  | { kind: 'exact' }
  | { kind: 'fallback'; description: string }
  | { kind: 'unsupported'; reason: string }

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
