/**
 * The API's parameters, and the records the app keeps on disk, defined once as valibot
 * schemas. contract.ts derives its TypeScript types from them (type-only, so the UI never
 * bundles valibot); the transports check every incoming call against `apiParamSchemas` once,
 * at their edge (parse-request.ts); the recent-models and runs files are read through the
 * same schemas, record by record.
 *
 * Messages are written to follow the key's path: parse-request.ts prints
 * "evaluate: 'ctx' must be an integer in [2, 32768]".
 *
 * Unknown keys in a call are refused (strict objects), so a misspelt optional key is an error
 * instead of a silently ignored setting. Records read from files are lenient about unknown
 * keys (a newer version may have added one) but strict about the ones they need.
 */
import * as v from 'valibot'
import type { ModelFormatId } from '../formats/contract'
import { KLD_BASE_MODES, type KldSummary } from '../inference/kld-types'
import { PlanSchema } from '../plan/plan-schema'
import type { ApiMethodName } from './method-names'

/** Limits of what a call may ask for: far beyond what the UI offers, well short of absurd. */
export const API_LIMITS = {
  /** Paths and ids. */
  string: 4096,
  /** Prompts may be longer than paths and ids. */
  prompt: 32_768,
  ctx: 32_768,
  windows: 1_000_000,
  newTokens: 4096,
  variants: 4,
  bins: [2, 4096],
  topK: [0, 1024],
  heatmapSize: [1, 512],
  /** Methods compared in one quantizePreview. */
  previewMethods: 8,
  /** Plan names. */
  planName: 200,
} as const

/** A path or id: non-empty, bounded, no NUL (which the file system would cut the path at). */
function name() {
  const nonEmpty = 'must be a non-empty string'
  return v.pipe(
    v.string(nonEmpty),
    v.minLength(1, nonEmpty),
    v.maxLength(API_LIMITS.string, `is longer than ${API_LIMITS.string} characters`),
    v.check((s) => !s.includes('\0'), 'contains a NUL character'),
  )
}

function integer(lo: number, hi: number) {
  const message = `must be an integer in [${lo}, ${hi}]`
  return v.pipe(v.number(message), v.integer(message), v.minValue(lo, message), v.maxValue(hi, message))
}

/** A finite number in the half-open interval (lo, hi]. */
function aboveUpTo(lo: number, hi: number) {
  const message = `must be a number in (${lo}, ${hi}]`
  return v.pipe(v.number(message), v.finite(message), v.gtValue(lo, message), v.maxValue(hi, message))
}

/** A quantization plan (worker/plan/plan-schema.ts), checked whole; problems name the key path. */
function planSchema() {
  return PlanSchema
}

function planName() {
  const message = `must be a non-empty string of at most ${API_LIMITS.planName} characters`
  return v.pipe(v.string(message), v.minLength(1, message), v.maxLength(API_LIMITS.planName, message))
}

/** Quantization params as a plan stores them: key → number, boolean or word. */
const quantParamsSchema = v.record(
  v.pipe(v.string(), v.maxLength(64, 'param names are at most 64 characters')),
  v.union([v.number(), v.boolean(), v.pipe(v.string(), v.maxLength(256))], 'must be a number, a boolean or a string'),
  'must be an object of params',
)

export const backendSchema = v.picklist(['wasm', 'native'], "must be 'wasm' or 'native'")

export const evalTextRefSchema = v.variant(
  'kind',
  [v.strictObject({ kind: v.literal('heldout') }), v.strictObject({ kind: v.literal('file'), path: name() })],
  "must be 'heldout' or 'file'",
)

/**
 * Which weights to run: a variant the engine lists for the open model ('base' is the model as
 * stored), or another model file with the same tokenizer (e.g. a quantized export).
 */
export const variantRefSchema = v.variant(
  'kind',
  [
    v.strictObject({ kind: v.literal('listed'), id: name() }),
    v.strictObject({ kind: v.literal('model'), path: name() }),
    /**
     * The open model with an inline plan applied (base + dequantised plan). `name` labels the
     * run (a saved plan's name); without it the label is the plan's uniform spec.
     */
    v.strictObject({ kind: v.literal('plan'), plan: planSchema(), name: v.optional(planName()) }),
  ],
  "must be 'listed', 'model' or 'plan'",
)

export const samplingSchema = v.variant(
  'kind',
  [
    v.strictObject({ kind: v.literal('greedy') }),
    v.strictObject({
      kind: v.literal('sample'),
      temperature: aboveUpTo(0, 100),
      topP: aboveUpTo(0, 1),
      seed: integer(0, 2 ** 32 - 1),
    }),
  ],
  "must be 'greedy' or 'sample'",
)

export const statsOptionsSchema = v.strictObject({
  bins: v.optional(integer(...API_LIMITS.bins)),
  topK: v.optional(integer(...API_LIMITS.topK)),
  heatmapSize: v.optional(integer(...API_LIMITS.heatmapSize)),
})

const noParams = v.strictObject({})

/** Activation fake-quant kinds of the evaluation graph (inference/act-quant.ts). */
export const ACT_KINDS = ['int', 'kmeans'] as const
/** k-means normalisations (quant/activations/spec.ts ACT_NORMALISATIONS; our choice, the paper leaves it open). */
export const ACT_NORMS = ['absmax-non-outlier', 'none'] as const

/**
 * Activation quantization of every decoder linear's input: int per token (bits 2–16) or KLLM's
 * k-means codebooks (bits 1–8, fitted on the calibration text); `outliers` is k per side of the
 * top-k detector; `norm` only for k-means (default absmax-non-outlier).
 */
export const actSettingsSchema = v.pipe(
  v.strictObject({
    kind: v.picklist(ACT_KINDS, `must be one of ${ACT_KINDS.join(', ')}`),
    bits: integer(1, 16),
    outliers: v.optional(integer(0, 4096)),
    norm: v.optional(v.picklist(ACT_NORMS, `must be one of ${ACT_NORMS.join(', ')}`)),
    /** k-means: windows of 256 calibration tokens the codebooks are fitted on (default 32, as `eval --act`). */
    calibrationWindows: v.optional(integer(1, API_LIMITS.windows)),
  }),
  v.check((a) => a.kind === 'kmeans' || a.calibrationWindows === undefined, "'calibrationWindows' goes with kind 'kmeans' only"),
  v.check((a) => a.kind !== 'int' || a.bits >= 2, "'bits' of int activations must be an integer in [2, 16]"),
  v.check((a) => a.kind !== 'kmeans' || a.bits <= 8, "'bits' of k-means activations must be an integer in [1, 8] (2^bits centroids)"),
  v.check((a) => a.kind === 'kmeans' || a.norm === undefined, "'norm' goes with kind 'kmeans' only"),
)

/** KV-cache fake-quant (inference/kv-quant.ts): per-token bits 2–8, optional groups along head_dim, smoothing, past-only. */
export const kvSettingsSchema = v.strictObject({
  bits: integer(2, 8),
  /** Values of head_dim per quantization group (must divide it); absent/null: the whole head vector. */
  group: v.optional(v.nullable(integer(2, 4096))),
  /** WKVQuant's static per-channel shift/scale from the calibration text. */
  smooth: v.optional(v.boolean('must be a boolean')),
  /** Past-only: the current token's own K/V stay full precision. */
  pastOnly: v.optional(v.boolean('must be a boolean')),
})

export const evaluateParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  text: evalTextRefSchema,
  ctx: integer(2, API_LIMITS.ctx),
  maxWindows: v.optional(integer(1, API_LIMITS.windows)),
  backend: backendSchema,
  /** Also measure KL divergence and top-1 agreement against the base model. */
  kld: v.optional(v.boolean('must be a boolean')),
  /** Default: the base model. */
  variant: v.optional(variantRefSchema),
  /** Fake-quantize every decoder linear's input (absent: full precision). */
  act: v.optional(actSettingsSchema),
  /** Fake-quantize the KV cache (absent: full precision). */
  kv: v.optional(kvSettingsSchema),
})

const variantsMessage = `must be a list of 1 to ${API_LIMITS.variants} variants`

export const generateParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  prompt: v.pipe(
    v.string('must be a non-empty string'),
    v.minLength(1, 'must be a non-empty string'),
    v.maxLength(API_LIMITS.prompt, `is longer than ${API_LIMITS.prompt} characters`),
  ),
  maxTokens: integer(1, API_LIMITS.newTokens),
  sampling: samplingSchema,
  /** The variants to compare (the UI sends two), all from the same prompt and seed. */
  variants: v.pipe(
    v.array(variantRefSchema, variantsMessage),
    v.minLength(1, variantsMessage),
    v.maxLength(API_LIMITS.variants, variantsMessage),
  ),
  backend: v.optional(backendSchema),
  /** Fake-quantize every decoder linear's input of every variant (as evaluate's). */
  act: v.optional(actSettingsSchema),
  /** Quantized KV cache for every variant (past-only: a token enters the cache quantized after its step). */
  kv: v.optional(kvSettingsSchema),
})

const previewMethodsMessage = `must be a list of 1 to ${API_LIMITS.previewMethods} methods`

export const quantizePreviewParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  /** A 2-D weight of the model (as listed in the summary). */
  tensor: name(),
  /** Methods to compare on this tensor, each with its params (defaults filled in). */
  methods: v.pipe(
    v.array(v.strictObject({ methodId: name(), params: v.optional(quantParamsSchema) }), previewMethodsMessage),
    v.minLength(1, previewMethodsMessage),
    v.maxLength(API_LIMITS.previewMethods, previewMethodsMessage),
  ),
  /** Output channel (HF row) whose levels are returned; default 0. */
  row: v.optional(integer(0, 2 ** 31)),
  /** Input channel picking the group within the row; default 0. */
  col: v.optional(integer(0, 2 ** 31)),
  /** Bins of the error histogram (default 128). */
  bins: v.optional(integer(...API_LIMITS.bins)),
  /** Cells per side of the |error| heatmap at most (default 128). */
  heatmapSize: v.optional(integer(...API_LIMITS.heatmapSize)),
  /** Windows of the calibration text for methods that need XᵀX (default: all). */
  calibrationWindows: v.optional(integer(1, API_LIMITS.windows)),
})

/** Every export format the API names, built or not (export-api.ts checks this equals export/contract.ts EXPORT_FORMAT_IDS). */
export const API_EXPORT_FORMAT_IDS = ['gguf', 'onnx', 'safetensors', 'compressed-tensors'] as const

export const exportFormatSchema = v.picklist(API_EXPORT_FORMAT_IDS, `must be one of ${API_EXPORT_FORMAT_IDS.join(', ')}`)

/** The export's float type and the format's own options (the engine checks the keys against the format). */
const exportOptionsEntries = {
  dtype: v.optional(v.picklist(['bf16', 'fp16', 'fp32'], "must be 'bf16', 'fp16' or 'fp32'")),
  formatOptions: v.optional(
    v.record(
      v.pipe(v.string(), v.maxLength(64, 'option names are at most 64 characters')),
      v.union([v.number(), v.boolean(), v.pipe(v.string(), v.maxLength(256))], 'must be a number, a boolean or a string'),
      'must be an object of options',
    ),
  ),
}

export const exportModelParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  plan: planSchema(),
  /** Names the plan in the report (a saved plan's name). */
  planName: v.optional(planName()),
  format: exportFormatSchema,
  /** Absolute destination (file or folder by format); it must not exist and its folder must. */
  out: name(),
  ...exportOptionsEntries,
  /** Evaluate the written export (perplexity on the held-out text, KLD against the source model); absent: do not. */
  evaluate: v.optional(
    v.strictObject({
      ctx: integer(2, API_LIMITS.ctx),
      maxWindows: v.optional(integer(1, API_LIMITS.windows)),
      backend: backendSchema,
    }),
  ),
})

/** Layer-importance methods (worker/importance/): logit-lens LSAQ, ShortGPT's cosine, measured ΔKLD per block, the local error proxy. */
export const IMPORTANCE_METHOD_IDS = ['lsaq', 'cosine', 'sensitivity', 'local'] as const

export const importanceMethodSchema = v.picklist(IMPORTANCE_METHOD_IDS, `must be one of ${IMPORTANCE_METHOD_IDS.join(', ')}`)

const importanceMethodsMessage = `must be a list of 1 to ${IMPORTANCE_METHOD_IDS.length} different methods`

/** Layer importance of the open model on a text (importance-api.ts checks method/spec combinations). */
export const layerImportanceParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  text: evalTextRefSchema,
  methods: v.pipe(
    v.array(importanceMethodSchema, importanceMethodsMessage),
    v.minLength(1, importanceMethodsMessage),
    v.check((m) => new Set(m).size === m.length, importanceMethodsMessage),
  ),
  /** LSAQ's logit-lens top-k (default 10). */
  k: v.optional(integer(1, 1024)),
  /** LSAQ: the final norm before lm_head in the lens (default on). */
  finalNorm: v.optional(v.boolean('must be a boolean')),
  ctx: v.optional(integer(2, API_LIMITS.ctx)),
  maxWindows: v.optional(integer(1, API_LIMITS.windows)),
  /** Sensitivity and local: the method spec each block is quantized with alone, e.g. rtn:bits=3,group=128 (local's default rtn:bits=4,group=128). */
  quant: v.optional(v.pipe(v.string('must be a method spec'), v.minLength(1, 'must be a method spec'), v.maxLength(512, 'is longer than 512 characters'))),
  backend: v.optional(backendSchema),
})

/** Activation view of one layer's linear inputs on the calibration text (actkv-api.ts). */
export const activationViewParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  layer: integer(0, 4096),
  /** k-means codebook size 2^bits and the INT grid's levels (default 4). */
  bits: v.optional(integer(1, 8)),
  /** k per side of the top-k detector (default 4). */
  outliers: v.optional(integer(0, 4096)),
  norm: v.optional(v.picklist(ACT_NORMS, `must be one of ${ACT_NORMS.join(', ')}`)),
  bins: v.optional(integer(...API_LIMITS.bins)),
  /** Calibration windows of 256 tokens (default 32, as the evaluation's codebooks). */
  maxWindows: v.optional(integer(1, API_LIMITS.windows)),
  topChannels: v.optional(integer(1, 256)),
  backend: v.optional(backendSchema),
})

/** K (after RoPE) and V of one layer and kv head on one calibration window, raw and smoothed. */
export const kvViewParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  layer: integer(0, 4096),
  kvHead: integer(0, 4096),
  /** Tokens of the window shown (default 128). */
  tokens: v.optional(integer(2, 4096)),
  /** Windows of 256 calibration tokens for the smoothing statistics (default 32, as evaluation). */
  calibrationWindows: v.optional(integer(1, API_LIMITS.windows)),
  backend: v.optional(backendSchema),
})

/** The missing KV evaluations bits × {naive, past-only, smoothed, both}, as one job. */
export const kvSweepParamsSchema = v.strictObject({
  jobId: name(),
  modelId: name(),
  text: evalTextRefSchema,
  ctx: integer(2, API_LIMITS.ctx),
  maxWindows: v.optional(integer(1, API_LIMITS.windows)),
  backend: backendSchema,
  variant: v.optional(variantRefSchema),
  /** Default [2, 3, 4]. */
  bits: v.optional(v.pipe(v.array(integer(2, 8), 'must be a list of KV bit widths'), v.minLength(1, 'must name at least one bit width'), v.maxLength(7, 'at most 7 bit widths'))),
})

// ---- Allocation (allocation-api.ts) -----------------------------------------------------

export const ALLOCATOR_IDS = ['lsaq', 'greedy', 'optimal'] as const

const allocatorSchema = v.picklist(ALLOCATOR_IDS, `must be one of ${ALLOCATOR_IDS.join(', ')}`)

/** A budget as users write it ('12MB', '3.5bpw', a byte count); the engine parses it (plan/budget.ts). */
const budgetTextSchema = v.pipe(v.string('must be a budget like 12MB, 3.5bpw or a byte count'), v.minLength(1, 'must be a budget like 12MB, 3.5bpw or a byte count'), v.maxLength(64, 'is longer than 64 characters'))

/** What an allocation shares with a sweep: options, targets, layout, and the text it measures on. */
const allocationEntries = {
  jobId: name(),
  modelId: name(),
  /** Option specs separated by ';' (`rtn:bits=4,group=128;rtn:bits=3,group=128`, `ggml:type=Q6_K;…;keep`). */
  options: v.pipe(v.string('must be option specs separated by ";"'), v.minLength(1, 'must be option specs separated by ";"'), v.maxLength(4096, 'is longer than 4096 characters')),
  /** Plan embeddings and lm_head too (greedy/optimal only), as llama.cpp's mixes do. */
  allTensors: v.optional(v.boolean('must be a boolean')),
  /** Sizes as the app stores the model (default) or as the GGUF export's data section. */
  layout: v.optional(v.picklist(['native', 'gguf'], "must be 'native' or 'gguf'")),
  /** The text LSAQ importance and ΔKLD are measured on; absent: the shipped calibration text (never the held-out one). */
  text: v.optional(evalTextRefSchema),
  /** Windows of the measurement text (default 4). */
  windows: v.optional(integer(1, 1024)),
  ctx: v.optional(integer(2, API_LIMITS.ctx)),
  backend: v.optional(backendSchema),
}

export const allocatePlanParamsSchema = v.strictObject({
  ...allocationEntries,
  budget: budgetTextSchema,
  allocator: allocatorSchema,
  /** A KV-cache reserve the memory breakdown (and a byte budget) includes. */
  kv: v.optional(v.strictObject({ ctx: integer(0, 1 << 24), batch: v.optional(integer(1, 4096)), bits: v.optional(integer(1, 32)) })),
})

export const paretoSweepParamsSchema = v.strictObject({
  ...allocationEntries,
  allocators: v.pipe(v.array(allocatorSchema, 'must be a list of allocators'), v.minLength(1, 'must list at least one allocator'), v.check((a) => new Set(a).size === a.length, 'lists an allocator twice')),
  budgets: v.pipe(v.array(budgetTextSchema, 'must be a list of budgets'), v.minLength(1, 'must list 1 to 32 budgets'), v.maxLength(32, 'must list 1 to 32 budgets')),
  /** Held-out windows each plan's perplexity is measured on. */
  evalWindows: integer(1, API_LIMITS.windows),
  /** Add the uniform plan of each option (default on). */
  uniform: v.optional(v.boolean('must be a boolean')),
  /** For ggml option sets: add llama.cpp's presets whose size falls in the sweep's range (default on). */
  presets: v.optional(v.boolean('must be a boolean')),
})

/** Every method's parameters. Keyed by exactly the names in method-names.ts. */
export const apiParamSchemas = {
  openModel: v.strictObject({ path: name() }),
  closeModel: v.strictObject({ modelId: name() }),
  listRecent: noParams,
  defaultModelPath: noParams,
  tensorStats: v.strictObject({ modelId: name(), tensor: name(), jobId: name(), options: v.optional(statsOptionsSchema) }),
  layerGridStats: v.strictObject({ modelId: name(), jobId: name() }),
  cancelJob: v.strictObject({ jobId: name() }),
  evaluate: evaluateParamsSchema,
  generate: generateParamsSchema,
  listBackends: noParams,
  listRuns: v.strictObject({ modelId: name() }),
  deleteRun: v.strictObject({ modelId: name(), runId: name() }),
  listVariants: v.strictObject({ modelId: name() }),
  listQuantMethods: noParams,
  planSize: v.strictObject({ modelId: name(), plan: planSchema() }),
  quantizePreview: quantizePreviewParamsSchema,
  listPlans: v.strictObject({ modelId: name() }),
  savePlan: v.strictObject({
    modelId: name(),
    /** Overwrites the saved plan with this id; a new id is made when absent. */
    id: v.optional(name()),
    name: planName(),
    plan: planSchema(),
  }),
  deletePlan: v.strictObject({ modelId: name(), planId: name() }),
  llamaCppPresets: noParams,
  /** The preset name is checked by the engine, which lists the presets in its error. */
  llamaCppPresetPlan: v.strictObject({ modelId: name(), preset: name() }),
  exportFormats: v.strictObject({ modelId: name() }),
  exportSupport: v.strictObject({
    modelId: name(),
    plan: planSchema(),
    planName: v.optional(planName()),
    format: exportFormatSchema,
    ...exportOptionsEntries,
    /** A destination to check (absolute, free, its folder there, not the source model). */
    out: v.optional(name()),
  }),
  exportModel: exportModelParamsSchema,
  layerImportance: layerImportanceParamsSchema,
  allocatePlan: allocatePlanParamsSchema,
  paretoSweep: paretoSweepParamsSchema,
  activationView: activationViewParamsSchema,
  kvView: kvViewParamsSchema,
  kvSweep: kvSweepParamsSchema,
} satisfies { [M in ApiMethodName]: v.GenericSchema }

export type ApiParamSchemas = typeof apiParamSchemas

// ---- Records kept on disk -------------------------------------------------------------

const num = () => v.number('must be a number')
const str = () => v.string('must be a string')

/** A format id as stored; the format registry, not this file, knows the list. */
const formatIdSchema = v.custom<ModelFormatId>((x) => typeof x === 'string' && x.length > 0 && x.length <= 64, 'must be a format id')

export const recentModelSchema = v.object({
  path: name(),
  name: str(),
  format: v.nullable(formatIdSchema),
  /** Milliseconds since the epoch. */
  openedAt: num(),
})

export const kldSummarySchema = v.object({
  mean: num(),
  median: num(),
  p99: num(),
  top1: num(),
  basePpl: num(),
  deltaPpl: num(),
  baseSource: v.picklist(KLD_BASE_MODES, `must be one of ${KLD_BASE_MODES.join(', ')}`),
})

/** One perplexity evaluation, as the runs table shows it and as it is kept per model. */
export const evalRunSchema = v.object({
  id: name(),
  /** The model the run belongs to (runs are kept per model path). */
  modelPath: name(),
  /** Milliseconds since the epoch. */
  createdAt: num(),
  variant: variantRefSchema,
  variantLabel: str(),
  text: evalTextRefSchema,
  /** 'held-out text' or the file's name. */
  textLabel: str(),
  ctx: num(),
  /** The limit asked for (null: every window of the text). */
  maxWindows: v.nullable(num()),
  windows: num(),
  /** Tokens evaluated: windows × ctx. */
  tokens: num(),
  /** Tokens of the whole text. */
  textTokens: num(),
  backend: backendSchema,
  threads: num(),
  ppl: num(),
  /** Mean NLL per predicted token, nats. */
  nll: num(),
  kld: v.nullable(kldSummarySchema),
  /** Wall time, loading included. */
  seconds: num(),
  tokensPerSecond: num(),
  /** Plan variants: the whole model's exact bytes as planned. */
  bytes: v.optional(num()),
  /** Plan variants: bits per weight over the quantized tensors. */
  bitsPerWeight: v.optional(v.nullable(num())),
  /** What the user should know about the result (e.g. ctx beyond max_position_embeddings). */
  warnings: v.optional(v.array(str())),
  /** Activation fake-quant of the run (absent on full-precision runs and runs kept before it existed). */
  act: v.optional(
    v.object({
      kind: v.picklist(ACT_KINDS),
      bits: num(),
      outliers: num(),
      norm: v.optional(v.picklist(ACT_NORMS)),
      /** k-means: calibration tokens the codebooks were fitted on. */
      calibrationTokens: v.optional(num()),
    }),
  ),
  /** KV-cache fake-quant of the run (absent: full precision, or kept before it existed). */
  kv: v.optional(
    v.object({
      bits: num(),
      group: v.nullable(num()),
      smooth: v.boolean(),
      pastOnly: v.boolean(),
      calibration: v.optional(v.object({ source: str(), tokens: num(), windows: num() })),
    }),
  ),
})

/** One saved plan, as listPlans returns it and as it is kept per model. */
export const savedPlanSchema = v.object({
  id: name(),
  name: planName(),
  /** The model the plan was saved for (plans are kept per model path). */
  modelPath: name(),
  /** Milliseconds since the epoch. */
  savedAt: num(),
  plan: planSchema(),
})

// The summary inference computes and the schema of what is stored must stay the same type.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
const kldSchemaMatchesEngine: Same<v.InferOutput<typeof kldSummarySchema>, KldSummary> = true
void kldSchemaMatchesEngine
