/**
 * The evaluation half of the engine API (worker/api/contract.ts): perplexity runs, side-by-side
 * generation, the backends and variants on offer, and the runs kept per model. Every
 * inference call goes to worker/inference/inference-service, which runs it on its own worker
 * thread; this side only translates parameters, maps progress to job events and keeps runs,
 * so the engine thread stays free while a model evaluates.
 */
import { randomUUID } from 'node:crypto'
import { stat } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type {
  ApiParams,
  ApiResult,
  EvalRun,
  EvalTextRef,
  EvaluateParams,
  GenerateParams,
  KvSweepResult,
  GeneratedOutput,
  InferenceBackendInfo,
  JobProgressDetail,
  ModelSummary,
  VariantInfo,
  VariantRef,
} from './contract'
import { availableBackends, evalPerplexity, generate } from '../inference/inference-service'
import type { ActGraphOptions } from '../inference/act-quant'
import { checkKvSettings, type KvQuantSettings } from '../inference/kv-quant'
import type { ActKvProgress, CodebooksJob, CodebooksResult } from './actkv-protocol'
import { runActKvInWorker } from './actkv-thread'
import { EngineError } from './errors'
import type { OpenedModel } from '../formats/contract'
import type { PlanSize } from '../plan/size'
import { planVariant } from './plan-variants'
import type { InferenceProgress, VariantSpec } from '../inference/inference-protocol'

/** The part of the inference service used here (a fake can stand in for tests). */
export interface InferenceApi {
  evalPerplexity: typeof evalPerplexity
  generate: typeof generate
  availableBackends: typeof availableBackends
}

const realInference: InferenceApi = { evalPerplexity, generate, availableBackends }

/** Where runs are kept, per model path (main/runs-store.ts in the apps). */
export interface EvalRunsBackend {
  /** Runs of the model at this path, newest first. */
  list(modelPath: string): Promise<EvalRun[]>
  add(run: EvalRun): Promise<void>
  /** Removes run `id` of the model at this path; false when there was none. */
  remove(modelPath: string, id: string): Promise<boolean>
}

/** Runs kept for the life of the process only (when no state folder is configured). */
export class MemoryEvalRuns implements EvalRunsBackend {
  private readonly runs = new Map<string, EvalRun[]>()
  async list(modelPath: string): Promise<EvalRun[]> {
    return [...(this.runs.get(resolve(modelPath)) ?? [])]
  }
  async add(run: EvalRun): Promise<void> {
    const key = resolve(run.modelPath)
    this.runs.set(key, [run, ...(this.runs.get(key) ?? [])])
  }
  async remove(modelPath: string, id: string): Promise<boolean> {
    const key = resolve(modelPath)
    const runs = this.runs.get(key) ?? []
    const kept = runs.filter((r) => r.id !== id)
    this.runs.set(key, kept)
    return kept.length < runs.length
  }
}

/** A variant the engine offers, with the inference spec that builds it. */
export interface VariantEntry extends VariantInfo {
  /** Undefined: the model as stored. */
  spec?: VariantSpec
}

/** The model a call is about: where it lives and what it holds. */
export interface ModelHandle {
  path: string
  summary: ModelSummary
  /** The opened model (needed for plan variants, which are checked against it). */
  model?: OpenedModel
}

/** Variants beyond 'base' for a model (quantized variants join here as the quantizers arrive). */
export type VariantCatalog = (model: ModelHandle) => VariantEntry[] | Promise<VariantEntry[]>

export interface EvaluateServiceOptions {
  inference?: InferenceApi
  runs?: EvalRunsBackend
  variants?: VariantCatalog
  /** The shipped held-out text; default resources/eval/heldout.txt of this checkout or build. */
  heldoutText?: string
  /** Runtime threads per inference job (default: every core). */
  threads?: number
  /** Calibration capture cache of plan variants; undefined: `<cache root>/calibration`, null: memory only. */
  calibrationCacheDir?: string | null
  /** Fits k-means activation codebooks (default: in the activation/KV worker). */
  fitCodebooks?: (job: CodebooksJob, hooks: { signal?: AbortSignal; onProgress?(p: ActKvProgress): void }) => Promise<CodebooksResult>
}

export type KvSweepParams = ApiParams<'kvSweep'>

/** The four KV schemes a sweep covers per bit width. */
export const KV_SCHEMES = [
  { smooth: false, pastOnly: false },
  { smooth: false, pastOnly: true },
  { smooth: true, pastOnly: false },
  { smooth: true, pastOnly: true },
] as const

/**
 * Refuses what the graph cannot build before any work, with the engine's own messages: KV
 * bits/group against the head size, activation outliers against the smallest linear input.
 */
function checkQuantSettings(model: ModelHandle, params: Pick<EvaluateParams, 'act' | 'kv'>): void {
  const cfg = model.summary.config
  if (params.kv) {
    try {
      checkKvSettings({ bits: params.kv.bits, group: params.kv.group ?? null }, cfg?.headDim ?? undefined)
    } catch (err) {
      throw new EngineError('BadRequest', `evaluate: ${(err as Error).message}`)
    }
  }
  const k = params.act?.outliers ?? 0
  const smallest = cfg ? Math.min(cfg.hiddenSize, cfg.numHeads * cfg.headDim) : null
  if (params.act && smallest !== null && 2 * k >= smallest) {
    throw new EngineError('BadRequest', `evaluate: act.outliers ${k} keeps ${2 * k} values per token, which leaves nothing of a ${smallest}-value linear input to quantize`)
  }
}

export type JobProgress = (done: number, total: number, detail?: JobProgressDetail) => void

/** Runs one job under a jobId: progress events, cancel, a finished event (EngineService.runJob). */
export type JobRunner = <T>(jobId: string, work: (hooks: { onProgress: JobProgress; signal: AbortSignal }) => Promise<T>) => Promise<T>

// Two levels up from worker/api/ in the sources and from out/main/ in a build: the app root.
const DEFAULT_HELDOUT = fileURLToPath(new URL('../../resources/eval/heldout.txt', import.meta.url))

export const BASE_VARIANT_ID = 'base'

export class EvaluateService {
  private readonly inference: InferenceApi
  private readonly runs: EvalRunsBackend
  private backends: Promise<InferenceBackendInfo[]> | null = null

  constructor(
    private readonly options: EvaluateServiceOptions,
    private readonly runJob: JobRunner,
  ) {
    this.inference = options.inference ?? realInference
    this.runs = options.runs ?? new MemoryEvalRuns()
  }

  get heldoutText(): string {
    return this.options.heldoutText ?? DEFAULT_HELDOUT
  }

  async listVariants(model: ModelHandle): Promise<VariantInfo[]> {
    return (await this.variantEntries(model)).map(({ id, label, description }) => ({ id, label, description }))
  }

  /** Which backends load here; checked once, in an inference worker, then remembered. */
  listBackends(): Promise<InferenceBackendInfo[]> {
    this.backends ??= this.inference.availableBackends().then(
      (b) => [
        { id: 'wasm', label: 'WASM (onnxruntime-web)', available: true },
        { id: 'native', label: 'native CPU (onnxruntime-node)', available: b.native.available, ...(b.native.reason ? { reason: b.native.reason } : {}) },
      ],
      (err: unknown) => {
        // The check itself failing must not hide the always-present WASM backend.
        this.backends = null
        return [
          { id: 'wasm', label: 'WASM (onnxruntime-web)', available: true },
          { id: 'native', label: 'native CPU (onnxruntime-node)', available: false, reason: `the check failed: ${(err as Error).message}` },
        ]
      },
    )
    return this.backends
  }

  listRuns(model: ModelHandle): Promise<EvalRun[]> {
    return this.runs.list(resolve(model.path))
  }

  deleteRun(model: ModelHandle, runId: string): Promise<boolean> {
    return this.runs.remove(resolve(model.path), runId)
  }

  async evaluate(model: ModelHandle, params: EvaluateParams): Promise<EvalRun> {
    const textFile = await this.textFile(params.text)
    const variantRef = params.variant ?? { kind: 'listed', id: BASE_VARIANT_ID }
    const variant = await this.resolveVariant(model, variantRef)
    checkQuantSettings(model, params)
    const run = await this.runJob(params.jobId, (hooks) => this.measure(model, params, textFile, variantRef, variant, hooks))
    // Keeping the run is best effort: the numbers are returned either way.
    await this.runs.add(run).catch(() => {})
    return run
  }

  /**
   * kvSweep: every combination of `bits` × {naive, past-only, smoothed, both} that has no kept
   * run of the same variant, text, ctx and windows (and no activation quant), evaluated one
   * after the other in one job; each is kept as a run.
   */
  async kvSweep(model: ModelHandle, params: KvSweepParams): Promise<KvSweepResult> {
    const textFile = await this.textFile(params.text)
    const variantRef = params.variant ?? { kind: 'listed', id: BASE_VARIANT_ID }
    const variant = await this.resolveVariant(model, variantRef)
    const bits = [...new Set(params.bits ?? [2, 3, 4])].sort((a, b) => b - a)
    const kept = await this.listRuns(model)
    const textKey = (t: EvalTextRef): string => (t.kind === 'heldout' ? 'heldout' : `file:${resolve(t.path)}`)
    const wanted = bits.flatMap((b) => KV_SCHEMES.map((scheme) => ({ bits: b, group: null, ...scheme })))
    const missing = wanted.filter(
      (kv) =>
        !kept.some(
          (r) =>
            r.kv &&
            !r.act &&
            r.kv.bits === kv.bits &&
            r.kv.group === null &&
            r.kv.smooth === kv.smooth &&
            r.kv.pastOnly === kv.pastOnly &&
            r.variantLabel === variant.label &&
            r.variant.kind === variantRef.kind &&
            textKey(r.text) === textKey(params.text) &&
            r.ctx === params.ctx &&
            r.maxWindows === (params.maxWindows ?? null),
        ),
    )
    for (const kv of missing) checkQuantSettings(model, { kv })
    const runs = await this.runJob(params.jobId, async ({ onProgress, signal }) => {
      const out: EvalRun[] = []
      for (const kv of missing) {
        signal.throwIfAborted()
        const one: EvaluateParams = { jobId: params.jobId, modelId: params.modelId, text: params.text, ctx: params.ctx, backend: params.backend, variant: variantRef, kv, ...(params.maxWindows !== undefined ? { maxWindows: params.maxWindows } : {}) }
        const done = out.length
        // Progress over the whole sweep: each evaluation's share of the tokens.
        const run = await this.measure(model, one, textFile, variantRef, variant, {
          signal,
          onProgress: (d, t, detail) => {
            // loading and calibrating count their own units (weights, windows); evaluating counts evaluations
            if (detail?.stage !== 'evaluating' || t === 0) return onProgress(d, t, detail)
            onProgress(done + d / t, missing.length, { stage: 'evaluating', ...(detail.ppl !== undefined ? { ppl: detail.ppl } : {}) })
          },
        })
        await this.runs.add(run).catch(() => {})
        out.push(run)
        onProgress(out.length, missing.length, { stage: 'evaluating', ppl: run.ppl })
      }
      return out
    })
    return { runs, existing: wanted.length - missing.length }
  }

  /** One perplexity evaluation with its activation and KV settings, as a run (not yet kept). */
  private async measure(
    model: ModelHandle,
    params: EvaluateParams,
    textFile: string,
    variantRef: VariantRef,
    variant: { label: string; spec?: VariantSpec; size?: PlanSize },
    { onProgress, signal }: { onProgress: JobProgress; signal: AbortSignal },
  ): Promise<EvalRun> {
    const ctx = params.ctx
    const act = params.act ? await this.actOptions(model, params, { onProgress, signal }) : null
    const kv: KvQuantSettings | null = params.kv
      ? { bits: params.kv.bits, group: params.kv.group ?? null, smooth: params.kv.smooth ?? false, pastOnly: params.kv.pastOnly ?? false }
      : null
    let evalStart: number | null = null
    let firstBatch: { at: number; done: number } | null = null
    const result = await this.inference.evalPerplexity(
      model.path,
      { file: textFile },
      {
        ctx,
        maxWindows: params.maxWindows,
        backend: params.backend,
        threads: this.options.threads,
        variant: variant.spec,
        kld: params.kld ? {} : null,
        kv,
        act: act?.options ?? null,
      },
      {
        signal,
        onProgress: (p: InferenceProgress) => {
          if (p.stage === 'token') return
          const now = performance.now()
          if (p.stage !== 'evaluating') {
            onProgress(p.done, p.total, { stage: p.stage })
            // Evaluation starts when the last model finished loading.
            if (p.done >= p.total) evalStart = now
            return
          }
          const done = p.done * ctx
          // The rate from the first batch on: the time before it also holds building the
          // runtime session and its warm-up, which would make the ETA far too long.
          let rate: number | undefined
          if (firstBatch && now > firstBatch.at) rate = ((done - firstBatch.done) * 1000) / (now - firstBatch.at)
          else if (evalStart !== null && now > evalStart) rate = (done * 1000) / (now - evalStart)
          firstBatch ??= { at: now, done }
          onProgress(done, p.total * ctx, {
            stage: 'evaluating',
            ...(p.ppl !== undefined ? { ppl: p.ppl } : {}),
            ...(rate !== undefined && rate > 0 ? { tokensPerSecond: rate } : {}),
          })
        },
      },
    )
    return {
      id: randomUUID(),
      modelPath: resolve(model.path),
      createdAt: Date.now(),
      variant: variantRef,
      variantLabel: variant.label,
      text: params.text,
      textLabel: params.text.kind === 'heldout' ? 'held-out text' : basename(params.text.path),
      ctx: result.ctx,
      maxWindows: params.maxWindows ?? null,
      windows: result.windows,
      tokens: result.tokens,
      textTokens: result.textTokens,
      backend: result.backend,
      threads: result.threads,
      ppl: result.ppl,
      nll: result.nll,
      kld: result.kld
        ? {
            mean: result.kld.mean,
            median: result.kld.median,
            p99: result.kld.p99,
            top1: result.kld.top1,
            basePpl: result.kld.basePpl,
            deltaPpl: result.kld.deltaPpl,
            baseSource: result.kld.baseSource,
          }
        : null,
      seconds: result.seconds,
      tokensPerSecond: result.tokensPerSecond,
      // A plan variant records what it costs: the whole model's bytes and bits per quantized weight.
      ...(variant.size ? { bytes: variant.size.bytes, bitsPerWeight: variant.size.bitsPerWeight } : {}),
      ...(result.warnings.length > 0 ? { warnings: result.warnings } : {}),
      ...(act ? { act: act.echo } : {}),
      ...(result.kv
        ? {
            kv: {
              bits: result.kv.bits,
              group: result.kv.group ?? null,
              smooth: result.kv.smooth,
              pastOnly: result.kv.pastOnly,
              ...(result.kv.calibration ? { calibration: result.kv.calibration } : {}),
            },
          }
        : {}),
    }
  }

  /**
   * The evaluation graph's activation option, as `eval --act` builds it: int directly; k-means
   * with codebooks fitted on the calibration text by the open (full-precision) model, in the
   * activation/KV worker so the engine thread stays free.
   */
  private async actOptions(model: ModelHandle, params: Pick<EvaluateParams, 'act' | 'backend'>, hooks: { onProgress: JobProgress; signal: AbortSignal }): Promise<{ options: ActGraphOptions; echo: NonNullable<EvalRun['act']> }> {
    const a = params.act!
    const outliers = a.outliers ?? 0
    if (a.kind === 'int') return { options: { kind: 'int', bits: a.bits, outliers }, echo: { kind: 'int', bits: a.bits, outliers } }
    const norm = a.norm ?? 'absmax-non-outlier'
    const fit = await this.codebooks(
      { kind: 'codebooks', modelPath: model.path, bits: a.bits, outliers, norm, backend: params.backend, threads: this.options.threads, ...(a.calibrationWindows !== undefined ? { maxWindows: a.calibrationWindows } : {}) },
      { signal: hooks.signal, onProgress: (p) => hooks.onProgress(p.done, p.total, { stage: p.stage === 'loading' ? 'loading' : 'calibrating' }) },
    )
    return {
      options: { kind: 'kmeans', bits: a.bits, outliers, norm, codebooks: fit.codebooks },
      echo: { kind: 'kmeans', bits: a.bits, outliers, norm, calibrationTokens: fit.calibrationTokens },
    }
  }

  private codebooks(job: CodebooksJob, hooks: { signal?: AbortSignal; onProgress?(p: ActKvProgress): void }): Promise<CodebooksResult> {
    return (this.options.fitCodebooks ?? runActKvInWorker)(job, hooks)
  }

  async generate(model: ModelHandle, params: GenerateParams): Promise<ApiResult<'generate'>> {
    const variants = await Promise.all(params.variants.map((ref) => this.resolveVariant(model, ref)))
    const specs: VariantSpec[] = variants.map((v) => ({ ...v.spec, label: v.label }))
    const sampling = params.sampling
    const started = performance.now()
    const n = variants.length
    checkQuantSettings(model, params)
    const kv: KvQuantSettings | null = params.kv
      ? { bits: params.kv.bits, group: params.kv.group ?? null, smooth: params.kv.smooth ?? false, pastOnly: params.kv.pastOnly ?? false }
      : null
    let actEcho: EvalRun['act'] | undefined
    const result = await this.runJob(params.jobId, async ({ onProgress, signal }) => {
      const firstToken: number[] = []
      // k-means codebooks are fitted (or read from their cache) on the full-precision model, as for evaluate.
      const act = params.act ? await this.actOptions(model, { act: params.act, backend: params.backend ?? 'wasm' }, { onProgress, signal }) : null
      actEcho = act?.echo
      return this.inference.generate(
        model.path,
        params.prompt,
        {
          variants: specs,
          maxTokens: params.maxTokens,
          temperature: sampling.kind === 'greedy' ? 0 : sampling.temperature,
          topP: sampling.kind === 'greedy' ? 1 : sampling.topP,
          seed: sampling.kind === 'greedy' ? 0 : sampling.seed,
          backend: params.backend,
          threads: this.options.threads,
          kv,
          act: act?.options ?? null,
        },
        {
          signal,
          onProgress: (p: InferenceProgress) => {
            if (p.stage !== 'token') {
              onProgress(p.done, p.total, { stage: 'loading' })
              return
            }
            const now = performance.now()
            if (p.index === 0) firstToken[p.variant] = now
            // Decoding speed: tokens after the first over the time since it (prefill excluded).
            const seconds = (now - (firstToken[p.variant] ?? now)) / 1000
            // Progress towards the limit: a variant that stopped early counts as finished.
            onProgress(p.variant * params.maxTokens + p.index + 1, n * params.maxTokens, {
              stage: 'generating',
              variant: p.variant,
              text: p.text,
              ...(p.index > 0 && seconds > 0 ? { tokensPerSecond: p.index / seconds } : {}),
            })
          },
        },
      )
    })
    const outputs: GeneratedOutput[] = result.variants.map((v, i) => ({
      variant: params.variants[i]!,
      label: variants[i]!.label,
      text: v.text,
      tokens: v.ids.length,
      stopReason: v.stopReason,
      prefillSeconds: v.prefillSeconds,
      decodeSeconds: v.decodeSeconds,
      tokensPerSecond: v.tokensPerSecond,
    }))
    return {
      prompt: params.prompt,
      promptTokens: result.promptIds.length,
      maxTokens: params.maxTokens,
      sampling,
      backend: result.backend,
      ...(actEcho ? { act: actEcho } : {}),
      ...(result.kv
        ? { kv: { bits: result.kv.bits, group: result.kv.group ?? null, smooth: result.kv.smooth, pastOnly: result.kv.pastOnly, ...(result.kv.calibration ? { calibration: result.kv.calibration } : {}) } }
        : {}),
      outputs,
      seconds: (performance.now() - started) / 1000,
    }
  }

  private async variantEntries(model: ModelHandle): Promise<VariantEntry[]> {
    const dtypes = model.summary.bytesByDtype.map((d) => d.dtype)
    const base: VariantEntry = {
      id: BASE_VARIANT_ID,
      label: 'base',
      description: `the model as stored${dtypes.length ? ` (${dtypes.slice(0, 2).join(', ')})` : ''}`,
    }
    const extra = (await this.options.variants?.(model)) ?? []
    return [base, ...extra.filter((v) => v.id !== BASE_VARIANT_ID)]
  }

  private async resolveVariant(model: ModelHandle, ref: VariantRef): Promise<{ label: string; spec?: VariantSpec; size?: PlanSize }> {
    if (ref.kind === 'model') return { label: basename(ref.path), spec: { model: resolve(ref.path) } }
    if (ref.kind === 'plan') {
      if (!model.model) throw new EngineError('Unsupported', 'plan variants need the opened model')
      const cacheDir = this.options.calibrationCacheDir
      return planVariant(model.model, ref.plan, ref.name, cacheDir !== undefined ? { cacheDir } : undefined)
    }
    const entry = (await this.variantEntries(model)).find((v) => v.id === ref.id)
    if (!entry) throw new EngineError('NotFound', `model ${model.summary.name} has no variant '${ref.id}'`)
    return { label: entry.label, spec: entry.spec }
  }

  private async textFile(text: EvalTextRef): Promise<string> {
    if (text.kind === 'file') return resolve(text.path)
    const file = this.heldoutText
    const info = await stat(file).catch(() => null)
    if (!info?.isFile()) throw new EngineError('NotFound', `the shipped held-out text is missing: ${file}`)
    return file
  }
}
