/**
 * The Evaluate tab's state and actions (part of the workbench): the settings of the next
 * perplexity run and generation, the backends and variants on offer, the runs kept for the
 * open model, and the two jobs with their progress. Settings live here rather than in the
 * views, so they survive switching tabs.
 */
import { markRaw, reactive } from 'vue'
import type {
  ActSettings,
  KvSettings,
  ApiError,
  EvalRun,
  EvalTextRef,
  GenerateComparison,
  InferenceBackendId,
  InferenceBackendInfo,
  JobProgressDetail,
  ModelSummary,
  Plan,
  SamplingSettings,
  VariantInfo,
  VariantRef,
} from '../../../worker/api/contract'
import { asApiError, startJob, type ApiClient, type Job } from '../api'

/** A variant as the pickers hold it: a listed id, another model file by path, or the layer grid's current plan. */
export interface VariantChoice {
  kind: 'listed' | 'model' | 'plan'
  id: string
  path: string
}

/** The plan being edited in the layer grid, as a variant: null while nothing is planned. */
export interface CurrentPlan {
  plan: Plan
  name: string
  /** Its exact size (planSize), when known. */
  bytes: number | null
  bitsPerWeight: number | null
}

export interface EvalSettings {
  text: 'heldout' | 'file'
  filePath: string
  ctx: number
  /** null: every window of the text. */
  maxWindows: number | null
  kld: boolean
  variant: VariantChoice
  /** Activation fake-quant of every decoder linear's input ('none': full precision). */
  act: ActChoice
  /** KV-cache fake-quant (bits 0: full precision). */
  kv: KvChoice
}

export interface ActChoice {
  kind: 'none' | 'int' | 'kmeans'
  bits: number
  /** k per side of the top-k detector. */
  outliers: number
  norm: 'absmax-non-outlier' | 'none'
  /** k-means: windows of 256 calibration tokens for the codebooks (32 = the CLI's default). */
  calibrationWindows: number
}

export interface KvChoice {
  /** 0: off. */
  bits: number
  /** Values of head_dim per group; null: the whole head vector. */
  group: number | null
  smooth: boolean
  pastOnly: boolean
}

/** The API's act setting of a choice (undefined: off). */
export function actParams(a: ActChoice): ActSettings | undefined {
  if (a.kind === 'none') return undefined
  return a.kind === 'int' ? { kind: 'int', bits: a.bits, outliers: a.outliers } : { kind: 'kmeans', bits: a.bits, outliers: a.outliers, norm: a.norm, calibrationWindows: a.calibrationWindows }
}

/** The API's kv setting of a choice (undefined: off). */
export function kvParams(k: KvChoice): KvSettings | undefined {
  if (!k.bits) return undefined
  return { bits: k.bits, group: k.group, smooth: k.smooth, pastOnly: k.pastOnly }
}

export { actText, deltaPpl, isBaseRun, kvScheme, kvText, runWarnings, sameProtocol } from './run-facts'

export interface GenerateSettings {
  prompt: string
  maxTokens: number
  greedy: boolean
  temperature: number
  topP: number
  seed: number
  variants: [VariantChoice, VariantChoice]
  /** Generate with the run settings' activation and KV-cache quantization (both variants). */
  withQuant: boolean
}

/** An inference job as the progress bar shows it. */
export interface RateJobView {
  label: string
  stage: JobProgressDetail['stage'] | 'starting'
  done: number
  total: number
  tokensPerSecond: number | null
  ppl: number | null
  /** Generation: the variant being generated (index). */
  variant: number | null
  /** The user asked to cancel it. */
  cancelRequested?: boolean
  cancel(): void
}

export interface EvaluationState {
  modelId: string | null
  backend: InferenceBackendId
  backends: InferenceBackendInfo[]
  variants: VariantInfo[]
  runs: EvalRun[]
  /** The run that just finished (highlighted in the table). */
  lastRunId: string | null
  loadError: ApiError | null
  settings: EvalSettings
  evalJob: RateJobView | null
  evalError: ApiError | null
  gen: GenerateSettings
  genJob: RateJobView | null
  genError: ApiError | null
  generation: GenerateComparison | null
  /** Text generated so far per variant, while the job runs. */
  streaming: string[]
}

export const DEFAULT_CTX = 256
export const DEFAULT_MAX_WINDOWS = 40

export type Evaluation = ReturnType<typeof createEvaluation>

const listed = (id: string): VariantChoice => ({ kind: 'listed', id, path: '' })

/** The API's reference to a choice; the plan choice needs the current plan (null: nothing planned). */
export function variantRef(choice: VariantChoice, plan: CurrentPlan | null = null): VariantRef {
  if (choice.kind === 'plan') {
    if (!plan) throw new Error('No plan: set bits of some cells in the layer grid first.')
    return { kind: 'plan', plan: plan.plan, name: plan.name }
  }
  return choice.kind === 'model' ? { kind: 'model', path: choice.path.trim() } : { kind: 'listed', id: choice.id }
}

/** `onCancelled(label)`: a job the user cancelled has stopped (the workbench says so). */
export function createEvaluation(client: ApiClient, onCancelled: (label: string) => void = () => {}, currentPlan: () => CurrentPlan | null = () => null) {
  const state = reactive<EvaluationState>({
    modelId: null,
    backend: 'wasm',
    backends: [],
    variants: [],
    runs: [],
    lastRunId: null,
    loadError: null,
    settings: {
      text: 'heldout',
      filePath: '',
      ctx: DEFAULT_CTX,
      maxWindows: DEFAULT_MAX_WINDOWS,
      kld: false,
      variant: listed('base'),
      act: { kind: 'none', bits: 4, outliers: 4, norm: 'absmax-non-outlier', calibrationWindows: 32 },
      kv: { bits: 0, group: null, smooth: false, pastOnly: true },
    },
    evalJob: null,
    evalError: null,
    gen: {
      prompt: 'The built-in function',
      maxTokens: 32,
      greedy: true,
      temperature: 0.8,
      topP: 0.95,
      seed: 0,
      variants: [listed('base'), listed('base')],
      withQuant: false,
    },
    genJob: null,
    genError: null,
    generation: null,
    streaming: [],
  })
  let evalJob: Job<EvalRun> | null = null
  let genJob: Job<GenerateComparison> | null = null
  let loaded: string | null = null

  function rateView(label: string, cancel: () => void): RateJobView {
    const view: RateJobView = reactive({
      label,
      stage: 'starting',
      done: 0,
      total: 0,
      tokensPerSecond: null,
      ppl: null,
      variant: null,
      cancel: () => {
        view.cancelRequested = true
        cancel()
      },
    })
    return view
  }

  function applyProgress(view: RateJobView, done: number, total: number, detail?: JobProgressDetail): void {
    const stage = detail?.stage ?? view.stage
    // Rates and ppl belong to their stage: drop them when the stage changes.
    if (stage !== view.stage) Object.assign(view, { tokensPerSecond: null, ppl: null })
    Object.assign(view, { stage, done, total })
    if (detail?.tokensPerSecond !== undefined) view.tokensPerSecond = detail.tokensPerSecond
    if (detail?.ppl !== undefined) view.ppl = detail.ppl
    if (detail?.variant !== undefined) view.variant = detail.variant
  }

  function cancelAll(): void {
    evalJob?.cancel()
    genJob?.cancel()
    evalJob = null
    genJob = null
    state.evalJob = null
    state.genJob = null
  }

  /** A new model was opened: forget the old one's runs and jobs (loaded lazily by `load`). */
  function setModel(model: ModelSummary | null): void {
    cancelAll()
    state.modelId = model?.modelId ?? null
    state.runs = []
    state.variants = []
    state.lastRunId = null
    state.loadError = null
    state.evalError = null
    state.genError = null
    state.generation = null
    state.streaming = []
    state.settings.variant = listed('base')
    state.gen.variants = [listed('base'), listed('base')]
    loaded = null
  }

  /** Fetches backends, variants and the model's kept runs (once per model). */
  async function load(): Promise<void> {
    const modelId = state.modelId
    if (!modelId || loaded === modelId) return
    loaded = modelId
    try {
      const [backends, variants, runs] = await Promise.all([
        client.call('listBackends', {}),
        client.call('listVariants', { modelId }),
        client.call('listRuns', { modelId }),
      ])
      if (state.modelId !== modelId) return
      state.backends = backends
      if (!backends.find((b) => b.id === state.backend)?.available) state.backend = 'wasm'
      state.variants = variants
      state.runs = runs.map((r) => markRaw(r))
      // Compare the base with the second listed variant by default, when there is one.
      if (variants.length > 1) state.gen.variants = [listed(variants[0]!.id), listed(variants[1]!.id)]
    } catch (err) {
      if (state.modelId === modelId) {
        state.loadError = asApiError(err)
        loaded = null
      }
    }
  }

  function variantLabel(choice: VariantChoice): string {
    if (choice.kind === 'plan') return currentPlan()?.name ?? 'plan (empty)'
    if (choice.kind === 'model') return choice.path.split(/[\\/]/).filter(Boolean).pop() ?? 'model'
    return state.variants.find((v) => v.id === choice.id)?.label ?? choice.id
  }

  function runEvaluation(): void {
    const modelId = state.modelId
    if (!modelId || evalJob) return
    const s = state.settings
    state.evalError = null
    const text: EvalTextRef = s.text === 'heldout' ? { kind: 'heldout' } : { kind: 'file', path: s.filePath.trim() }
    const textLabel = text.kind === 'heldout' ? 'the held-out text' : (text.path.split(/[\\/]/).pop() ?? text.path)
    let variant: VariantRef
    try {
      variant = variantRef(s.variant, currentPlan())
    } catch (err) {
      state.evalError = asApiError(err)
      return
    }
    const act = actParams(s.act)
    const kv = kvParams(s.kv)
    const quant = [act ? `A${act.bits} ${act.kind === 'kmeans' ? 'k-means' : 'int'}` : '', kv ? `KV${kv.bits}` : ''].filter(Boolean).join(', ')
    const view = rateView(`Perplexity of ${variantLabel(s.variant)}${quant ? ` (${quant})` : ''} on ${textLabel}${s.kld ? ' with KLD' : ''}`, () => job.cancel())
    const job = startJob(
      client,
      'evaluate',
      {
        modelId,
        text,
        ctx: s.ctx,
        ...(s.maxWindows !== null ? { maxWindows: s.maxWindows } : {}),
        backend: state.backend,
        kld: s.kld,
        variant,
        ...(act ? { act } : {}),
        ...(kv ? { kv } : {}),
      },
      (done, total, detail) => applyProgress(view, done, total, detail),
    )
    evalJob = job
    state.evalJob = view
    job.promise
      .then(
        (run) => {
          if (state.modelId !== modelId) return
          state.runs = [markRaw(run), ...state.runs.filter((r) => r.id !== run.id)]
          state.lastRunId = run.id
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (evalJob === job && !e.cancelled) state.evalError = e
          if (e.cancelled && view.cancelRequested) onCancelled(view.label)
        },
      )
      .finally(() => {
        if (evalJob === job) {
          evalJob = null
          state.evalJob = null
        }
      })
  }

  /** Deletes a kept run (engine and table); a failure shows where evaluation errors do. */
  async function deleteRun(runId: string): Promise<void> {
    const modelId = state.modelId
    if (!modelId) return
    try {
      await client.call('deleteRun', { modelId, runId })
      if (state.modelId === modelId) state.runs = state.runs.filter((r) => r.id !== runId)
    } catch (err) {
      state.evalError = asApiError(err)
    }
  }

  function runGeneration(): void {
    const modelId = state.modelId
    if (!modelId || genJob) return
    const g = state.gen
    state.genError = null
    let variants: VariantRef[]
    try {
      variants = g.variants.map((v) => variantRef(v, currentPlan()))
    } catch (err) {
      state.genError = asApiError(err)
      return
    }
    state.generation = null
    state.streaming = g.variants.map(() => '')
    const sampling: SamplingSettings = g.greedy ? { kind: 'greedy' } : { kind: 'sample', temperature: g.temperature, topP: g.topP, seed: g.seed }
    const view = rateView(`Generating ${g.maxTokens} tokens with ${g.variants.map(variantLabel).join(' and ')}`, () => job.cancel())
    const job = startJob(
      client,
      'generate',
      {
        modelId,
        prompt: g.prompt,
        maxTokens: g.maxTokens,
        sampling,
        variants,
        backend: state.backend,
        ...(g.withQuant && actParams(state.settings.act) ? { act: actParams(state.settings.act) } : {}),
        ...(g.withQuant && kvParams(state.settings.kv) ? { kv: kvParams(state.settings.kv) } : {}),
      },
      (done, total, detail) => {
        applyProgress(view, done, total, detail)
        if (detail?.stage === 'generating' && detail.variant !== undefined && detail.text !== undefined) state.streaming[detail.variant] = detail.text
      },
    )
    genJob = job
    state.genJob = view
    job.promise
      .then(
        (result) => {
          if (genJob !== job) return
          state.generation = markRaw(result)
          state.streaming = []
        },
        (err: unknown) => {
          const e = asApiError(err)
          if (e.cancelled && view.cancelRequested) onCancelled(view.label)
          if (genJob !== job || e.cancelled) return
          state.genError = e
          state.streaming = []
        },
      )
      .finally(() => {
        if (genJob === job) {
          genJob = null
          state.genJob = null
        }
      })
  }

  /** Runs made elsewhere (the KV sweep) join the table. */
  function addRuns(runs: EvalRun[]): void {
    const ids = new Set(runs.map((r) => r.id))
    state.runs = [...runs.map((r) => markRaw(r)).reverse(), ...state.runs.filter((r) => !ids.has(r.id))]
  }

  return { state, setModel, load, runEvaluation, runGeneration, deleteRun, variantLabel, currentPlan, addRuns, rateView, applyProgress }
}
