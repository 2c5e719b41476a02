import { deserializeError as deserializeShared, type SerializedError } from '../jobs/serialized-error'
import type { CaptureResult } from './activation-capture'
import type { CaptureSite } from './capture-points'
import { InferenceInputError } from './errors'
import type { KldCacheMode } from './kld'
import type { KvEcho } from './kv-quant'
import type { KvJobSettings } from './kv-calibration'
import type { ActGraphOptions } from './act-quant'
import type { BackendKind } from './ort-backend'
import type { EvalProgress, PerplexityResult } from './perplexity'
import type { GenerationResult } from './generate'
import type { TextSource } from './text-source'

/**
 * Messages between the inference service (main side) and inference.worker.ts, and the plain
 * data of jobs and results (structured-clone safe, JSON apart from Float32/64Arrays), so the
 * CLI and the UI drive the engine the same way. One union per direction, one `switch` on
 * `type` at each end.
 */

/**
 * A model variant: a model file plus weight overrides. Functions cannot cross a thread
 * boundary, so producers of dequantised rows come as a module the worker imports.
 */
export interface VariantSpec {
  /** Model path; default: the job's model. */
  model?: string
  label?: string
  /** Tensor name (as stored) → float32 values in the stored layout. */
  overrides?: Record<string, Float32Array>
  /**
   * A module exporting `(model: OpenedModel, options: unknown) => WeightOverrides | Promise<WeightOverrides>`
   * (named `exportName`, default `createOverrides`); absolute path or file URL.
   */
  overridesModule?: { module: string; exportName?: string; options?: unknown }
}

interface JobCommon {
  /** Model path (HF folder, safetensors, GGUF). */
  model: string
  /** tokenizer.json to use instead of the model's own (needed for GGUF). */
  tokenizer?: string
  backend?: BackendKind
  threads?: number
}

export interface PerplexityJob extends JobCommon {
  kind: 'perplexity'
  text: TextSource
  variant?: VariantSpec
  ctx?: number
  maxWindows?: number
  /** KL divergence against `base` (default: the job's model without overrides). */
  kld?: { base?: VariantSpec; cache?: KldCacheMode; cacheDir?: string; cacheBudgetBytes?: number } | null
  /**
   * KV-cache fake quantization; with smooth, the ranges come from `calibrationText` (default
   * resources/eval/calibration.txt, `calibrationWindows` windows of 256 tokens, default 32).
   */
  kv?: KvJobSettings | null
  /** Fake quantization of every decoder linear's input (int per token, top-k outliers kept). */
  act?: ActGraphOptions | null
}

export interface GenerateJob extends JobCommon {
  kind: 'generate'
  prompt: string | { tokens: number[] }
  /** Variants generating from the same prompt and seed, side by side (default: the model). */
  variants?: VariantSpec[]
  maxTokens?: number
  temperature?: number
  topP?: number
  seed?: number
  /** Stop token ids; 'model' (default): the model's declared end-of-sequence ids. */
  stopTokens?: number[] | 'model'
  /**
   * KV-cache fake quantization of every variant (as PerplexityJob's; past-only: a token enters
   * the cache quantized after its step). Smoothing is calibrated per variant, on its weights.
   */
  kv?: KvJobSettings | null
  /** Fake quantization of every decoder linear's input (k-means codebooks included). */
  act?: ActGraphOptions | null
}

export interface CaptureJob extends JobCommon {
  kind: 'capture'
  text: TextSource
  variant?: VariantSpec
  ctx?: number
  maxWindows?: number
  gram?: boolean
  sites?: CaptureSite[]
}

/** Which backends load here (the UI offers 'native' only when it does). */
export interface BackendsJob {
  kind: 'backends'
}

export interface BackendsResult {
  wasm: { available: true }
  native: { available: boolean; reason?: string }
}

export type InferenceJob = PerplexityJob | GenerateJob | CaptureJob | BackendsJob

export interface GeneratedVariant extends GenerationResult {
  label: string
  model: string
  text: string
}

export interface GenerateJobResult {
  prompt: string | null
  promptIds: number[]
  variants: GeneratedVariant[]
  backend: BackendKind
  /** The KV-cache quantization generated with (absent: full precision); calibration of the first variant. */
  kv?: KvEcho
  /** The activation quantization generated with (absent: full precision). */
  act?: Record<string, unknown>
}

export type InferenceJobResult<J extends InferenceJob> = J extends PerplexityJob
  ? PerplexityResult
  : J extends GenerateJob
    ? GenerateJobResult
    : J extends CaptureJob
      ? CaptureResult
      : BackendsResult

export type AnyJobResult = PerplexityResult | GenerateJobResult | CaptureResult | BackendsResult

/** Progress of a job: evaluation stages, or one generated token of one variant. */
export type InferenceProgress =
  | EvalProgress
  | { stage: 'token'; variant: number; index: number; id: number; /** Decoded text of this variant so far. */ text: string }

export type InferenceRequest = { type: 'run'; jobId: number; job: InferenceJob } | { type: 'cancel'; jobId: number }

export type InferenceMessage =
  | { type: 'progress'; jobId: number; progress: InferenceProgress }
  | { type: 'result'; jobId: number; result: AnyJobResult }
  | { type: 'error'; jobId: number; error: SerializedError }

export type { SerializedError } from '../jobs/serialized-error'
export { serializeError } from '../jobs/serialized-error'

/** The same error type on this side, so callers can test `name` / instanceof as in-process. */
export function deserializeError(e: SerializedError): Error {
  return deserializeShared(e, 'inference worker', { InferenceInputError: (message) => new InferenceInputError(message) })
}
