/**
 * The one API contract between the Quantscope UI and the engine. Both transports carry it
 * unchanged: Electron IPC (preload `window.quantscope`, main/ipc-transport.ts) and the
 * browser-mode WebSocket (main/browser/host.ts). Pure types only, so the renderer can import
 * it without pulling in any Node code or the schema library: the parameter types are derived
 * from the valibot schemas in schemas.ts, which the transports check every call against.
 *
 * Every method is a request with one response. Long methods (statistics, evaluation,
 * generation) are jobs: the caller picks a `jobId`, receives `job-progress` events for it
 * while it runs, and may call `cancelJob`; the response then fails with `cancelled: true`.
 */
import type * as v from 'valibot'
import type { ExportedTensor, ExportFloatType, ExportReport } from '../export/report-types'
import type { ModelConfig, ModelFormatId } from '../formats/contract'
import type { KldBaseMode, KldSummary } from '../inference/kld-types'
import type { LinearRole } from '../model/logical-model'
import type { Plan, PlanEntry } from '../plan/plan-schema'
import type { CalibrationNeed, StorageBreakdown } from '../quant/contract'
import type { OrientedTensorStats, StatsOptions, StatsOrientation, TensorStats } from '../stats/stats-types'
import type { ApiMethodName } from './method-names'
import type * as schemas from './schemas'

export type { CalibrationNeed, KldBaseMode, KldSummary, LinearRole, ModelConfig, ModelFormatId, OrientedTensorStats, Plan, PlanEntry, StatsOptions, StatsOrientation, StorageBreakdown, TensorStats }

/** Parameters of a method as its schema (worker/api/schemas.ts) outputs them. */
type ParamsOf<M extends ApiMethodName> = v.InferOutput<schemas.ApiParamSchemas[M]>

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
  /** Identity of the tensor layout, as plans made for this model carry it (plan/plan.ts modelFingerprint). */
  fingerprint: string
  /** A few format metadata entries, stringified and shortened for display. */
  metadata: { key: string; value: string }[]
}

export type RecentModel = v.InferOutput<typeof schemas.recentModelSchema>

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
export type InferenceBackendId = v.InferOutput<typeof schemas.backendSchema>

export interface InferenceBackendInfo {
  id: InferenceBackendId
  label: string
  available: boolean
  /** Why it does not load here (shown beside the disabled entry). */
  reason?: string
}

/** The text to evaluate: the shipped held-out text (resources/eval/heldout.txt) or a text file. */
export type EvalTextRef = v.InferOutput<typeof schemas.evalTextRefSchema>

/**
 * Which weights to run: a variant the engine lists for the open model ('base' is the model as
 * stored; quantized variants join the list as the quantizers arrive), or another model file
 * with the same tokenizer (e.g. a quantized export).
 */
export type VariantRef = v.InferOutput<typeof schemas.variantRefSchema>

export interface VariantInfo {
  id: string
  label: string
  description: string
}

/** One perplexity evaluation, as the runs table shows it and as it is kept per model (fields: schemas.ts). */
export type EvalRun = v.InferOutput<typeof schemas.evalRunSchema>

export type SamplingSettings = v.InferOutput<typeof schemas.samplingSchema>

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
  /** Activation and KV-cache fake quantization every variant generated with (absent: full precision), as a run records them. */
  act?: EvalRun['act']
  kv?: EvalRun['kv']
  /** One per requested variant, in request order. */
  outputs: GeneratedOutput[]
  seconds: number
}

// ---- Quantization ----------------------------------------------------------------------

/** One parameter of a quantization method, read from its schema (for menus and forms). */
export interface QuantParamInfo {
  key: string
  /** 'enum': one of `options`; 'integer'/'number' within [min, max] when given. */
  type: 'integer' | 'number' | 'boolean' | 'enum' | 'string'
  /** null: the param is required (e.g. ggml's `type`). */
  default: number | boolean | string | null
  min?: number
  max?: number
  options?: (string | number)[]
}

/** A method of the quantizer library (worker/quant/registry.ts). */
export interface QuantMethodInfo {
  id: string
  label: string
  /** Nominal bits per weight of the codes with the default params (required params: their first option or minimum). */
  bits: number
  /** What it needs besides the weight, with the default params ('none' | 'activation-stats' | 'gram'). */
  needs: CalibrationNeed
  params: QuantParamInfo[]
}

/** The exact size of the open model under a plan (worker/plan/size.ts). */
export interface PlanSizeInfo {
  /** Whole model as planned: planned tensors at their storage, the rest as stored. */
  bytes: number
  /** The model as stored. */
  storedBytes: number
  planned: { tensors: number; params: number; bytes: number; storedBytes: number; storage: StorageBreakdown }
  kept: { tensors: number; params: number; bytes: number }
  /** 8·bytes/params over the planned tensors (null when none is planned). */
  bitsPerWeight: number | null
  /** 8·bytes/params over the whole model. */
  modelBitsPerWeight: number
}

/** Damage of a quantized weight (worker/quant/metrics.ts), JSON-safe. */
export interface QuantErrorInfo {
  mse: number
  /** null when the error is exactly 0 (SQNR +∞). */
  sqnrDb: number | null
  maxAbsError: number
  /** Summed squared output error per calibration token; null without XᵀX. */
  outputErrorPerToken: number | null
  /** Mean squared error of one output element on the calibration activations; null without XᵀX. */
  outputMse: number | null
}

/** One method's result on one tensor, in HF [out, in] orientation. */
export interface QuantPreview {
  methodId: string
  /** Params with every default filled in. */
  params: Record<string, number | boolean | string>
  /** METHOD:key=value,… of the params (as the CLI and plans write it). */
  spec: string
  bytes: number
  storage: StorageBreakdown
  bitsPerWeight: number
  metrics: QuantErrorInfo
  /** Seconds quantize() took (reading the weight excluded). */
  seconds: number
  /** The values weight (row, col) can take: its group's grid or its row's table, ascending, outliers excluded. */
  levels: { row: number; col: number; group: { index: number; col0: number; col1: number }; values: number[] }
  /** The weights of that group of the row, original and dequantised (to draw beside the levels). */
  groupWeights: { original: number[]; dequantized: number[] }
  /** Histogram of w − ŵ over the tensor: `counts.length` bins over [lo, hi] (lo = min, hi = max error). */
  errorHistogram: { lo: number; hi: number; counts: number[] }
  /**
   * Mean |w − ŵ| over blocks, same geometry as the stats heatmap: row r in band
   * floor(r·rows/R), column c in cell floor(c·cols/C), rows = min(R, size), cols = min(C, size); row-major.
   */
  errorHeatmap: { rows: number; cols: number; values: number[] }
}

export interface QuantizePreviewResult {
  tensor: string
  /** HF orientation [out, in]. */
  rows: number
  cols: number
  /** One per requested method, in request order. */
  methods: QuantPreview[]
  /** Seconds capturing calibration data (0 when no method needed it or it came from the cache). */
  calibrationSeconds: number
}

/** A llama.cpp quantization mix made into a plan for the open model (plan/llama-cpp-presets.ts). */
export interface LlamaCppPresetPlan {
  /** llama-quantize's ftype name: 'Q4_K_M'. */
  preset: string
  /** What the plan editor calls it: 'llama.cpp Q4_K_M'. */
  name: string
  /** The ggml type llama-quantize gives each tensor it quantizes (`ggml:type=…`); the plan's description names the preset. */
  plan: Plan
  size: PlanSizeInfo
  /** Tensors of the plan per ggml type; 'keep': left as stored (rows not whole blocks of any fallback type, as llama-quantize keeps them F16). */
  counts: Record<string, number>
  /** The tensors counted as 'keep'. */
  kept: string[]
}

/** A plan kept for a model (listPlans, savePlan). */
export type SavedPlan = v.InferOutput<typeof schemas.savedPlanSchema>

export type EvaluateParams = ParamsOf<'evaluate'>

export type GenerateParams = ParamsOf<'generate'>

// ---- Export ------------------------------------------------------------------------------

/**
 * The export formats and the report, as the UI sees them. The report types come from
 * export/report-types.ts (type-only, no Node types); the format id is the API schema's, and
 * export-api.ts fails to compile if it drifts from export/contract.ts.
 */
export type ExportFormatId = v.InferOutput<typeof schemas.exportFormatSchema>
export type { ExportedTensor, ExportFloatType }

/** The export's report without its free-form evaluation (the API adds a typed one). */
export type ExportReportInfo = Omit<ExportReport, 'evaluation' | 'format'> & { format: ExportFormatId }

/** A choice a format offers beyond the float type (GGUF: the ggml type for methods it cannot store). */
export interface ExportFormatOptionInfo {
  /** Key in `formatOptions`. */
  key: string
  label: string
  /** Allowed values; `default` null: the format picks per tensor (e.g. the ggml type nearest in bits). */
  choices: string[]
  default: string | null
  hint: string
}

/** An export format as the dialog lists it (worker/export/registry.ts). */
export interface ExportFormatInfo {
  id: ExportFormatId
  label: string
  /** False: named, but not in this build. */
  built: boolean
  /** A single file or a folder; null when not built. */
  output: 'file' | 'folder' | null
  /** Why this model cannot be exported to it (not built, or not a model the format takes), or null. */
  unavailable: string | null
  dtypes: ExportFloatType[]
  options: ExportFormatOptionInfo[]
}

/** What a format does with one planned tensor (export/contract.ts TensorSupport). */
export interface ExportTensorSupport {
  tensor: string
  /** The plan's method as a spec. */
  method: string
  support: 'exact' | 'fallback' | 'unsupported'
  /** Fallback: what is written instead; unsupported: why not. */
  detail?: string
}

/** What a format can represent of a plan, checked before any work. */
export interface ExportSupportInfo {
  format: ExportFormatId
  label: string
  output: 'file' | 'folder' | null
  /** Why the export cannot run at all (format not built, model not taken, tensors unsupported), or null. */
  refusal: string | null
  counts: { exact: number; fallback: number; unsupported: number; kept: number }
  /** Planned tensors in model order. */
  tensors: ExportTensorSupport[]
  /** A free destination beside the source model, named after the model, plan and format. */
  defaultDestination: string
  /** The destination asked about (`out`), and why it cannot be written (null: it can). */
  destination: { path: string; problem: string | null } | null
}

/** The export's own perplexity and KLD against the source model, measured after writing it. */
export type ExportEvaluation =
  | {
      status: 'measured'
      textLabel: string
      ctx: number
      windows: number
      tokens: number
      backend: InferenceBackendId
      ppl: number
      nll: number
      kld: KldSummary | null
      seconds: number
      /** The run kept with the source model's runs (Evaluate tab). */
      runId: string
    }
  /** The export could not be opened or run by the evaluation (e.g. a format it does not read yet). */
  | { status: 'failed'; message: string }

/** The export's report, as written beside it (`reportPath`), with the evaluation when one ran. */
export type ExportModelReport = ExportReportInfo & { evaluation?: ExportEvaluation }

export type ExportModelParams = ParamsOf<'exportModel'>

// ---- Layer importance ----------------------------------------------------------------------

export type ImportanceMethodId = v.InferOutput<typeof schemas.importanceMethodSchema>

/** One method's per-layer importance, raw (its own unit); null where the method has no value for a block. */
export interface ImportanceSeries {
  method: ImportanceMethodId
  label: string
  /** What the numbers are ('1 − Jaccard', '1 − cos', 'ΔKLD nats'). */
  unit: string
  values: (number | null)[]
}

/** Layer importance of the open model on a text (importance/layer-importance.ts, sensitivity.ts). */
export interface LayerImportanceReport {
  /** Block indices; every series follows this order. */
  layers: number[]
  /** In the order asked for. */
  series: ImportanceSeries[]
  /** Spearman's ρ for every pair of series (over the layers both have); null when one is constant. */
  spearman: { a: ImportanceMethodId; b: ImportanceMethodId; rho: number | null; n: number }[]
  /** LSAQ's k and final-norm setting (null without LSAQ). */
  k: number | null
  finalNorm: boolean | null
  /** Measured sensitivity's spec, base perplexity and ΔPPL per layer. */
  sensitivity: { spec: string; basePpl: number; deltaPpl: (number | null)[]; cached: boolean } | null
  /** The local error proxy's spec and the calibration tokens its Grams came from (importance/local-proxy.ts). */
  local?: { spec: string; calibrationTokens: number; cached: boolean } | null
  textLabel: string
  ctx: number
  windows: number
  tokens: number
  backend: InferenceBackendId
  seconds: number
}

export type LayerImportanceParams = ParamsOf<'layerImportance'>

// ---- Activation and KV-cache quantization views -------------------------------------------

export type { ActivationInputView, ActivationViewResult, ActNorm, Histogram, KvHeatmap, KvViewResult } from './actkv-types'
import type { ActivationViewResult, KvViewResult } from './actkv-types'

export type ActSettings = NonNullable<EvaluateParams['act']>
export type KvSettings = NonNullable<EvaluateParams['kv']>

/** The KV evaluations kvSweep ran (the combinations that were missing) and how many were already kept. */
export interface KvSweepResult {
  runs: EvalRun[]
  /** Combinations skipped because a run of the same variant, text, ctx and windows was kept. */
  existing: number
}

// ---- Allocation under a budget ---------------------------------------------------------------

export type AllocatorId = v.InferOutput<typeof schemas.allocatePlanParamsSchema>['allocator']

/**
 * Bytes of the model under an allocated plan, as the stacked memory bar draws them: they sum to
 * `total`. codes + scales = the planned tensors in the layout (native: QuantMethod.storage's
 * codes vs scales/zeros/tables/outliers; gguf: the native split scaled to the GGUF bytes, since
 * ggml blocks interleave them); kept = every tensor the plan leaves as stored (embeddings,
 * lm_head, norms); kvCache = the reserve for the requested context and batch (0 without).
 */
export interface AllocationMemory {
  layout: 'native' | 'gguf'
  codes: number
  scales: number
  kept: number
  kvCache: number
  /** codes + scales + kept: the weights (native: planSize's bytes; gguf: the data section). */
  weights: number
  total: number
  /** The split of the planned bytes into codes and scales is exact (native) or proportional (gguf). */
  splitExact: boolean
  kv: { ctx: number; batch: number; bits: number } | null
}

/** An allocated plan (plan/allocate.ts) with what the budget panel shows. */
export interface AllocatePlanResult {
  plan: Plan
  allocator: AllocatorId
  budget: string
  /** Tensors per option spec. */
  counts: Record<string, number>
  /** 8 · planned bytes / planned weights. */
  bitsPerWeight: number
  /** Summed per-tensor ΔKLD of the picks (greedy/optimal), null for LSAQ. */
  predictedKld: number | null
  /** LSAQ: the blocks at the high option. */
  highLayers?: number[]
  memory: AllocationMemory
  /** How the allocator's inputs came: 'lsaq' importance or per-tensor 'sensitivity', from the cache or measured now. */
  measurement: { kind: 'lsaq' | 'sensitivity' | 'none'; fromCache: boolean; measured: number; seconds: number }
}

/** One point of a Pareto sweep: a plan, its size and its perplexity on the held-out windows. */
export interface ParetoPoint {
  /** 'optimal 3.5bpw', 'uniform rtn:bits=4,…', 'llama.cpp Q3_K_M'. */
  label: string
  kind: AllocatorId | 'uniform' | 'preset'
  /** The budget asked for (allocator points). */
  budget?: string
  /** Modelled size in the layout (weights; no KV reserve). */
  bytes: number
  /** Bits per weight over the allocation's target tensors. */
  bpw: number
  ppl: number
  plan: Plan
}

export interface ParetoSweepResult {
  points: ParetoPoint[]
  /** Budgets no plan of the allocator meets, with the allocator's reason. */
  skipped: { label: string; reason: string }[]
  layout: 'native' | 'gguf'
  textLabel: string
  ctx: number
  windows: number
  seconds: number
}

/** Method table: params and result of every call. */
export interface ApiMethods {
  openModel: { params: ParamsOf<'openModel'>; result: ModelSummary }
  closeModel: { params: ParamsOf<'closeModel'>; result: { closed: boolean } }
  listRecent: { params: ParamsOf<'listRecent'>; result: RecentModel[] }
  defaultModelPath: { params: ParamsOf<'defaultModelPath'>; result: DefaultModelInfo }
  tensorStats: {
    params: ParamsOf<'tensorStats'>
    /** In HF orientation ([out, in], HF row order) whatever the format stored; `orientation` says what changed. */
    result: OrientedTensorStats
  }
  layerGridStats: { params: ParamsOf<'layerGridStats'>; result: LayerGridStats }
  cancelJob: { params: ParamsOf<'cancelJob'>; result: { cancelled: boolean } }
  /** Perplexity (and optionally KLD) of a variant on a text; the run is kept for the model. */
  evaluate: { params: EvaluateParams; result: EvalRun }
  /** The same prompt continued by several variants, side by side. */
  generate: { params: GenerateParams; result: GenerateComparison }
  listBackends: { params: ParamsOf<'listBackends'>; result: InferenceBackendInfo[] }
  /** Runs kept for the model's path, newest first (they survive restarts). */
  listRuns: { params: ParamsOf<'listRuns'>; result: EvalRun[] }
  /** Forgets one kept run of the model; `deleted` is false when there was no such run. */
  deleteRun: { params: ParamsOf<'deleteRun'>; result: { deleted: boolean } }
  /** Variants of the model evaluation and generation can run ('base' first). */
  listVariants: { params: ParamsOf<'listVariants'>; result: VariantInfo[] }
  /** The quantizer library: every method with its params (from its schema). */
  listQuantMethods: { params: ParamsOf<'listQuantMethods'>; result: QuantMethodInfo[] }
  /** Exact size of the open model under a plan; a plan that does not fit the model fails with 'PlanError'. */
  planSize: { params: ParamsOf<'planSize'>; result: PlanSizeInfo }
  /** Job: quantize one tensor with each method (quant worker threads) and return what the inspector draws. */
  quantizePreview: { params: ParamsOf<'quantizePreview'>; result: QuantizePreviewResult }
  /** Plans saved for the model's path, newest first. */
  listPlans: { params: ParamsOf<'listPlans'>; result: SavedPlan[] }
  /** Saves (or, with `id`, replaces) a plan for the model; the plan must fit the model. */
  savePlan: { params: ParamsOf<'savePlan'>; result: SavedPlan }
  deletePlan: { params: ParamsOf<'deletePlan'>; result: { deleted: boolean } }
  /** llama-quantize's mixes the engine reproduces (Q2_K … Q8_0, Q4_K_M …), in its own order. */
  llamaCppPresets: { params: ParamsOf<'llamaCppPresets'>; result: string[] }
  /** A llama.cpp mix as a plan for the model, sized; an unknown preset, or one that quantizes nothing of the model, fails ('BadRequest' / 'PlanError'). */
  llamaCppPresetPlan: { params: ParamsOf<'llamaCppPresetPlan'>; result: LlamaCppPresetPlan }
  /** Every export format, built or not, with its options and whether this model can go to it. */
  exportFormats: { params: ParamsOf<'exportFormats'>; result: ExportFormatInfo[] }
  /** What a format represents of a plan (exact / fallback / unsupported per tensor), and whether `out` can be written. */
  exportSupport: { params: ParamsOf<'exportSupport'>; result: ExportSupportInfo }
  /** Job: writes the export (export worker thread), then optionally evaluates the written model. */
  exportModel: { params: ExportModelParams; result: ExportModelReport }
  /** Job: per-layer LSAQ, cosine and measured sensitivity on a text (importance worker thread), with their Spearman agreement. */
  layerImportance: { params: LayerImportanceParams; result: LayerImportanceReport }
  /** Job: a plan for a budget by an allocator (measurements on an allocation worker thread, cached); an infeasible budget fails with 'PlanError' giving the smallest feasible size. */
  allocatePlan: { params: ParamsOf<'allocatePlan'>; result: AllocatePlanResult }
  /** Job: allocators × budgets, uniform plans and llama.cpp presets, each evaluated (perplexity on held-out windows). */
  paretoSweep: { params: ParamsOf<'paretoSweep'>; result: ParetoSweepResult }
  /** Job: one layer's linear inputs on the calibration text: histograms with k-means centroids and INT grid, outlier share, top channels. */
  activationView: { params: ParamsOf<'activationView'>; result: ActivationViewResult }
  /** Job: K (after RoPE) and V of one layer and kv head on a calibration window, raw and smoothed; KV memory by context and bits. */
  kvView: { params: ParamsOf<'kvView'>; result: KvViewResult }
  /** Job: the missing KV evaluations bits × {naive, past-only, smoothed, both}; each is kept as a run. */
  kvSweep: { params: ParamsOf<'kvSweep'>; result: KvSweepResult }
}

// Every method of the table has a schema and every schema a method: otherwise this fails to compile.
type ExactKeys<A, B> = [Exclude<keyof A, keyof B>, Exclude<keyof B, keyof A>] extends [never, never] ? true : false
type Assert<T extends true> = T
export type MethodsMatchSchemas = Assert<ExactKeys<ApiMethods, schemas.ApiParamSchemas>>

export type ApiMethod = keyof ApiMethods
export type ApiParams<M extends ApiMethod> = ApiMethods[M]['params']
export type ApiResult<M extends ApiMethod> = ApiMethods[M]['result']

/** Methods that run as jobs (take a jobId, emit progress, can be cancelled). */
export type JobMethod = 'tensorStats' | 'layerGridStats' | 'evaluate' | 'generate' | 'quantizePreview' | 'exportModel' | 'layerImportance' | 'allocatePlan' | 'paretoSweep' | 'activationView' | 'kvView' | 'kvSweep'

/** A request on the wire: a discriminated union on `method`. */
export type ApiRequest = { [M in ApiMethod]: { id: number; method: M; params: ApiParams<M> } }[ApiMethod]

export interface ApiError {
  /** 'ModelFormatError', 'PlanError', 'NotFound', 'BadRequest', 'Cancelled', 'Error' … */
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
  stage: 'loading' | 'loading-base' | 'evaluating' | 'generating' | 'calibrating' | 'quantizing' | 'writing' | 'finishing' | 'measuring'
  /** Exporting: the tensor being written. */
  tensor?: string
  /** Allocation: what is being measured or which plan is evaluated. */
  label?: string
  /** Tokens per second over the stage so far (evaluating, generating). */
  tokensPerSecond?: number
  /** Perplexity over the windows done so far (evaluating). */
  ppl?: number
  /** Generating: which variant (index into the request's variants) and its text so far. */
  variant?: number
  text?: string
}

/**
 * Path of the browser-mode WebSocket. A literal type rather than a constant, because the UI
 * imports only types from this file: the host and the UI each write the literal, and this
 * type makes any other value a compile error on either side.
 */
export type ApiWebSocketPath = '/api/ws'

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
  /** Native save dialog for an export's destination, starting at `defaultPath`; resolves to the chosen path or null. */
  chooseSavePath(defaultPath: string): Promise<string | null>
}
