/**
 * The one API contract between the Quantscope UI and the engine. Both transports carry it
 * unchanged: Electron IPC (preload `window.quantscope`, main/ipc-transport.ts) and the
 * browser-mode WebSocket (main/browser/host.ts). Pure types only, so the renderer can import
 * it without pulling in any Node code.
 *
 * Every method is a request with one response. Long methods (statistics, evaluation,
 * generation) are jobs: the caller picks a `jobId`, receives `job-progress` events for it
 * while it runs, and may call `cancelJob`; the response then fails with `cancelled: true`.
 */
import type { ModelConfig, ModelFormatId } from '../formats/contract'
import type { OrientedTensorStats, StatsOptions, StatsOrientation, TensorStats } from '../stats/stats-types'

export type { ModelConfig, ModelFormatId, OrientedTensorStats, StatsOptions, StatsOrientation, TensorStats }

/** Linear roles of a transformer block, in the order the layer grid shows them. */
export type LinearRole = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down'

/** Scalar statistics the layer grid can colour cells by. */
export type GridStatistic = 'absmax' | 'kurtosis' | 'std' | 'mean' | 'zeros'

/** One tensor as the UI lists it: where it sits in the model and what it costs. */
export interface TensorInfo {
  name: string
  dtype: string
  shape: number[]
  params: number
  bytes: number
  /** File name relative to the model's folder. */
  file: string
  /** Transformer block index, or null for embeddings, head, final norm, unassigned. */
  layer: number | null
  /** 'q' … 'down' for linears, the norm name for norms, null when unknown. */
  role: string | null
  /** Group in the model tree. */
  group: 'block' | 'embeddings' | 'lm_head' | 'final_norm' | 'unassigned'
  /** False when this build cannot decode the stored type (stats unavailable). */
  decodable: boolean
}

export interface BlockInfo {
  index: number
  linears: Partial<Record<LinearRole, string>>
  norms: Record<string, string>
  others: string[]
}

export interface DtypeShare {
  dtype: string
  tensors: number
  params: number
  bytes: number
}

export interface ModelFileInfo {
  /** Absolute path. */
  path: string
  /** Name relative to the model root. */
  name: string
  bytes: number
  /** Tensors stored in this file (0 for config/tokenizer files). */
  tensors: number
}

export interface ModelSummary {
  /** Handle for later calls; valid until the model is closed or the engine restarts. */
  modelId: string
  /** Path the user opened (file or folder). */
  path: string
  /** Display name: folder or file name. */
  name: string
  format: ModelFormatId
  architecture: string | null
  config: ModelConfig | null
  params: number
  bytes: number
  bytesByDtype: DtypeShare[]
  files: ModelFileInfo[]
  tensors: TensorInfo[]
  /** Roles present in this model, in grid order (a subset of q k v o gate up down). */
  linearRoles: LinearRole[]
  blocks: BlockInfo[]
  embeddings: string | null
  lmHead: string | null
  tiedEmbeddings: boolean
  finalNorm: string | null
  unassigned: string[]
  tokenizerPath: string | null
  /** A few format metadata entries, stringified and shortened for display. */
  metadata: { key: string; value: string }[]
}

export interface RecentModel {
  path: string
  name: string
  format: ModelFormatId | null
  /** Milliseconds since the epoch. */
  openedAt: number
}

export interface DefaultModelInfo {
  /** Model to open at start-up, or null when there is none. */
  path: string | null
  /** 'argument': given on the command line; 'embedded': resources/models/default. */
  source: 'argument' | 'embedded' | 'none'
  /** Why there is no model (shown in the UI), or null. */
  message: string | null
}

/** The scalar part of TensorStats (what the grid and tables show). */
export type TensorScalarStats = Pick<
  TensorStats,
  'rows' | 'cols' | 'count' | 'min' | 'max' | 'mean' | 'std' | 'absmax' | 'kurtosis' | 'nan' | 'inf' | 'zeros'
>

export interface LayerGridCell {
  block: number
  role: LinearRole
  tensor: string
  stats: TensorScalarStats
}

export interface LayerGridStats {
  modelId: string
  roles: LinearRole[]
  blocks: number[]
  cells: LayerGridCell[]
  /** Linears that could not be analysed (undecodable type), with the reason. */
  skipped: { tensor: string; reason: string }[]
}

/** onnxruntime builds the inference engine can run on: WASM everywhere, native CPU where it loads. */
export type InferenceBackendId = 'wasm' | 'native'

export interface InferenceBackendInfo {
  id: InferenceBackendId
  label: string
  available: boolean
  /** Why it does not load here (shown beside the disabled entry). */
  reason?: string
}

/** The text to evaluate: the shipped held-out text (resources/eval/heldout.txt) or a text file. */
export type EvalTextRef = { kind: 'heldout' } | { kind: 'file'; path: string }

/**
 * Which weights to run: a variant the engine lists for the open model ('base' is the model as
 * stored; quantized variants join the list as the quantizers arrive), or another model file
 * with the same tokenizer (e.g. a quantized export).
 */
export type VariantRef = { kind: 'listed'; id: string } | { kind: 'model'; path: string }

export interface VariantInfo {
  id: string
  label: string
  description: string
}

/** KL divergence of a run against the base model on the same windows. */
export interface EvalKld {
  /** Mean KL(base ‖ variant) per predicted token, nats. */
  mean: number
  median: number
  p99: number
  /** Fraction of predicted positions where both models' top-1 token agree. */
  top1: number
  basePpl: number
  /** ppl(variant) − ppl(base). */
  deltaPpl: number
  /** Where the base log-probs came from: 'cache-read', 'cache-write' or 'recompute'. */
  baseSource: string
}

/** One perplexity evaluation, as the runs table shows it and as it is kept per model. */
export interface EvalRun {
  id: string
  /** The model the run belongs to (runs are kept per model path). */
  modelPath: string
  /** Milliseconds since the epoch. */
  createdAt: number
  variant: VariantRef
  variantLabel: string
  text: EvalTextRef
  /** 'held-out text' or the file's name. */
  textLabel: string
  ctx: number
  /** The limit asked for (null: every window of the text). */
  maxWindows: number | null
  windows: number
  /** Tokens evaluated: windows × ctx. */
  tokens: number
  /** Tokens of the whole text. */
  textTokens: number
  backend: InferenceBackendId
  threads: number
  ppl: number
  /** Mean NLL per predicted token, nats. */
  nll: number
  kld: EvalKld | null
  /** Wall time, loading included. */
  seconds: number
  tokensPerSecond: number
}

export type SamplingSettings = { kind: 'greedy' } | { kind: 'sample'; temperature: number; topP: number; seed: number }

export interface GeneratedOutput {
  variant: VariantRef
  label: string
  /** The continuation only (the prompt is not repeated). */
  text: string
  tokens: number
  stopReason: 'stop-token' | 'max-tokens'
  prefillSeconds: number
  decodeSeconds: number
  /** Generated tokens per second of decoding (prefill excluded). */
  tokensPerSecond: number
}

export interface GenerateComparison {
  prompt: string
  promptTokens: number
  maxTokens: number
  sampling: SamplingSettings
  backend: InferenceBackendId
  /** One per requested variant, in request order. */
  outputs: GeneratedOutput[]
  seconds: number
}

export interface EvaluateParams {
  jobId: string
  modelId: string
  text: EvalTextRef
  ctx: number
  maxWindows?: number
  backend: InferenceBackendId
  /** Also measure KL divergence and top-1 agreement against the base model. */
  kld?: boolean
  /** Default: the base model. */
  variant?: VariantRef
}

export interface GenerateParams {
  jobId: string
  modelId: string
  prompt: string
  maxTokens: number
  sampling: SamplingSettings
  /** The variants to compare (the UI sends two), all from the same prompt and seed. */
  variants: VariantRef[]
  backend?: InferenceBackendId
}

/** Method table: params and result of every call. */
export interface ApiMethods {
  openModel: { params: { path: string }; result: ModelSummary }
  closeModel: { params: { modelId: string }; result: { closed: boolean } }
  listRecent: { params: Record<string, never>; result: RecentModel[] }
  defaultModelPath: { params: Record<string, never>; result: DefaultModelInfo }
  tensorStats: {
    params: { modelId: string; tensor: string; options?: Partial<StatsOptions>; jobId: string }
    /** In HF orientation ([out, in], HF row order) whatever the format stored; `orientation` says what changed. */
    result: OrientedTensorStats
  }
  layerGridStats: { params: { modelId: string; jobId: string }; result: LayerGridStats }
  cancelJob: { params: { jobId: string }; result: { cancelled: boolean } }
  /** Perplexity (and optionally KLD) of a variant on a text; the run is kept for the model. */
  evaluate: { params: EvaluateParams; result: EvalRun }
  /** The same prompt continued by several variants, side by side. */
  generate: { params: GenerateParams; result: GenerateComparison }
  listBackends: { params: Record<string, never>; result: InferenceBackendInfo[] }
  /** Runs kept for the model's path, newest first (they survive restarts). */
  listRuns: { params: { modelId: string }; result: EvalRun[] }
  /** Variants of the model evaluation and generation can run ('base' first). */
  listVariants: { params: { modelId: string }; result: VariantInfo[] }
}

export type ApiMethod = keyof ApiMethods
export type ApiParams<M extends ApiMethod> = ApiMethods[M]['params']
export type ApiResult<M extends ApiMethod> = ApiMethods[M]['result']

/** Methods that run as jobs (take a jobId, emit progress, can be cancelled). */
export type JobMethod = 'tensorStats' | 'layerGridStats' | 'evaluate' | 'generate'

/** A request on the wire: a discriminated union on `method`. */
export type ApiRequest = { [M in ApiMethod]: { id: number; method: M; params: ApiParams<M> } }[ApiMethod]

export interface ApiError {
  /** 'ModelFormatError', 'NotFound', 'BadRequest', 'Cancelled', 'Error' … */
  name: string
  message: string
  /** For ModelFormatError: the file, tensor and problem as the reader reported them. */
  file?: string
  tensor?: string | null
  problem?: string
  cancelled?: boolean
}

export type ApiResponse =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: ApiError }

/** Events the engine pushes to the UI. */
export type ApiEvent =
  | { type: 'job-progress'; jobId: string; done: number; total: number; detail?: JobProgressDetail }
  | { type: 'job-finished'; jobId: string; outcome: 'done' | 'failed' | 'cancelled' }
  /** Desktop only: File → Open Model, a recent model or a second launch asked to open a path. */
  | { type: 'open-model-request'; path: string }

/**
 * What inference jobs add to a progress event. While loading, done/total count weight
 * tensors; while evaluating or generating they count tokens.
 */
export interface JobProgressDetail {
  stage: 'loading' | 'loading-base' | 'evaluating' | 'generating'
  /** Tokens per second over the stage so far (evaluating, generating). */
  tokensPerSecond?: number
  /** Perplexity over the windows done so far (evaluating). */
  ppl?: number
  /** Generating: which variant (index into the request's variants) and its text so far. */
  variant?: number
  text?: string
}

/** Messages from engine to UI on the WebSocket. */
export type ServerMessage = ({ kind: 'response' } & ApiResponse) | { kind: 'event'; event: ApiEvent }

/** Per-method functions, as the engine implements them. */
export type ApiFunctions = { [M in ApiMethod]: (params: ApiParams<M>) => Promise<ApiResult<M>> }

/** A result or an error, as values: Errors lose their fields when they cross contextBridge. */
export type ApiOutcome<T> = { ok: true; result: T } | { ok: false; error: ApiError }

/**
 * `window.quantscope` in the desktop app (main/preload.ts): one function per method, each
 * resolving to an ApiOutcome (the renderer's transport unwraps it), plus the shell helpers.
 */
export type QuantscopeBridge = { [M in ApiMethod]: (params: ApiParams<M>) => Promise<ApiOutcome<ApiResult<M>>> } & {
  readonly mode: 'electron'
  onEvent(listener: (event: ApiEvent) => void): () => void
  /** Absolute path of a dropped File (webUtils.getPathForFile); '' when it has none. */
  pathForFile(file: File): string
  /** Native open dialog; resolves to the chosen path or null. */
  chooseModelPath(kind: 'file' | 'folder'): Promise<string | null>
}
