/**
 * The export half of the engine API (worker/api/contract.ts): the formats on offer, what a
 * format represents of the current plan, and the export job itself — written on an export
 * worker thread (export-thread.ts), then, when asked, reopened as a model and evaluated like
 * any other (evaluate-service.ts: perplexity on the held-out text, KLD against the source
 * model), its figures stored in the report beside the export. Everything that can refuse an
 * export (format not built, plan not representable, bad destination) is checked here before
 * any work starts.
 */
import { stat } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import { EXPORT_FORMAT_IDS, ExportError, type ExportFloatType, type ExportFormat, type ExportFormatId, type ExportOptions, type ExportReport } from '../export/contract'
import { GGUF_FALLBACK_OPTION } from '../export/gguf'
import { entrySpec } from '../export/planned-weights'
import { EXPORT_FORMATS, exportFormat } from '../export/registry'
import { unsupportedTensors, writeReport } from '../export/run-export'
import { checkDestination, reportPathFor } from '../export/staging'
import type { OpenedModel } from '../formats/contract'
import { isAbortError } from '../jobs/abort'
import type { ResolvedEntry } from '../plan/plan'
import { GGML_QUANT_TYPES } from '../quant/ggml'
import type { ApiParams, ExportedTensor as ApiExportedTensor, ExportFloatType as ApiExportFloatType, ExportFormatId as ApiExportFormatId, ExportReportInfo, ExportEvaluation, ExportFormatInfo, ExportFormatOptionInfo, ExportModelReport, ExportSupportInfo, ExportTensorSupport } from './contract'
import { EngineError } from './errors'
import { EvaluateService, type EvaluateServiceOptions, type JobProgress, type JobRunner } from './evaluate-service'
import { runExportInWorker } from './export-thread'
import { API_EXPORT_FORMAT_IDS } from './schemas'
import { resolveForApi } from './plan-variants'
import type { OpenedModelHandle } from './quant-api'

const FLOAT_TYPES: ExportFloatType[] = ['bf16', 'fp16', 'fp32']

// The API's copies of the export types (contract.ts keeps the UI free of Node imports) must stay equal to the engine's.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
const exportTypesMatch: [
  Same<ApiExportFormatId, ExportFormatId>,
  Same<ApiExportFloatType, ExportFloatType>,
  Same<ApiExportedTensor, ExportReport['tensors'][number]>,
  Same<ExportReportInfo, Omit<ExportReport, 'evaluation'>>,
] = [true, true, true, true]
void exportTypesMatch
if (API_EXPORT_FORMAT_IDS.join() !== EXPORT_FORMAT_IDS.join()) throw new Error('schemas.ts API_EXPORT_FORMAT_IDS differ from export/contract.ts EXPORT_FORMAT_IDS')

/** Names of formats this build lacks (a built format names itself). */
const UNBUILT_LABELS: Record<ExportFormatId, string> = { gguf: 'GGUF', onnx: 'ONNX', safetensors: 'safetensors (dequantised HF folder)', 'compressed-tensors': 'compressed-tensors' }

/** Format-specific choices the dialog offers, by the format's own option keys. */
const FORMAT_OPTIONS: Partial<Record<ExportFormatId, ExportFormatOptionInfo[]>> = {
  gguf: [
    {
      key: GGUF_FALLBACK_OPTION,
      label: 'Fallback type',
      choices: [...GGML_QUANT_TYPES],
      default: null,
      hint: 'the ggml type for methods GGUF cannot store (RTN, NF4, FP4, anyN, k-means, GPTQ, AWQ); default: the type nearest in bits',
    },
  ],
}

export interface ExportApiOptions {
  /** How the written export is evaluated: the same runs store, text and threads as the Evaluate tab. */
  evaluation: EvaluateServiceOptions
}

type ExportSupportParams = ApiParams<'exportSupport'>
type ExportModelParams = ApiParams<'exportModel'>

export class ExportApi {
  constructor(
    private readonly options: ExportApiOptions,
    private readonly runJob: JobRunner,
  ) {}

  formats(handle: OpenedModelHandle): ExportFormatInfo[] {
    return EXPORT_FORMAT_IDS.map((id): ExportFormatInfo => {
      const format = EXPORT_FORMATS.get(id)
      if (!format) {
        return { id, label: UNBUILT_LABELS[id], built: false, output: null, unavailable: `export to ${id} is not available in this build`, dtypes: [], options: [] }
      }
      return { id, label: format.label, built: true, output: format.output, unavailable: format.checkModel(handle.model), dtypes: [...FLOAT_TYPES], options: FORMAT_OPTIONS[id] ?? [] }
    })
  }

  async support(handle: OpenedModelHandle, params: ExportSupportParams): Promise<ExportSupportInfo> {
    const { model } = handle
    const entries = resolveForApi(model, params.plan, planSource(params.planName))
    const kept = model.tensors.filter((t) => !t.derivedFrom).length - entries.length
    const format = EXPORT_FORMATS.get(params.format)
    const output = format?.output ?? null
    const defaultDestination = await freeDestination(handle, params.planName, params.format, output ?? 'file')
    const destination = params.out !== undefined ? { path: params.out, problem: await destinationProblem(model, params.out, format) } : null
    if (!format) {
      const tensors = entries.map((e): ExportTensorSupport => ({ tensor: e.tensor.name, method: entrySpec(e), support: 'unsupported', detail: 'format not built' }))
      return {
        format: params.format,
        label: UNBUILT_LABELS[params.format],
        output,
        refusal: notBuiltMessage(params.format),
        counts: { exact: 0, fallback: 0, unsupported: entries.length, kept },
        tensors,
        defaultDestination,
        destination,
      }
    }
    const options = exportOptions(format, params, 'exportSupport')
    const counts = { exact: 0, fallback: 0, unsupported: 0, kept }
    const tensors = entries.map((e): ExportTensorSupport => {
      const s = format.support(model, e, options)
      counts[s.kind]++
      const base = { tensor: e.tensor.name, method: entrySpec(e), support: s.kind }
      return s.kind === 'exact' ? base : { ...base, detail: s.kind === 'fallback' ? s.description : s.reason }
    })
    return { format: format.id, label: format.label, output, refusal: refusalOf(format, model, entries, options), counts, tensors, defaultDestination, destination }
  }

  async exportModel(handle: OpenedModelHandle, params: ExportModelParams): Promise<ExportModelReport> {
    const { model } = handle
    if (!isAbsolute(params.out)) throw new EngineError('BadRequest', `exportModel: 'out' must be an absolute path, got '${params.out}'`)
    let format: ExportFormat
    try {
      format = exportFormat(params.format, params.out)
    } catch (err) {
      throw apiExportError(err)
    }
    const options = exportOptions(format, params, 'exportModel')
    const source = planSource(params.planName)
    const entries = resolveForApi(model, params.plan, source)
    // Refused before any work: the model, every planned tensor, the destination.
    const refusal = refusalOf(format, model, entries, options)
    if (refusal) throw apiExportError(new ExportError(params.out, refusal))
    const out = await checkDestination(model, params.out, format.output).catch((err: unknown) => Promise.reject(apiExportError(err)))

    return this.runJob(params.jobId, async ({ onProgress, signal }) => {
      const report = await runExportInWorker(
        { modelPath: handle.path, plan: params.plan, planSource: source, format: format.id, out, options },
        { signal, onProgress: (p) => onProgress(p.done, p.total, { stage: p.stage, ...(p.tensor ? { tensor: p.tensor } : {}) }) },
      ).catch((err: unknown) => Promise.reject(apiExportError(err)))
      if (!params.evaluate) return report as ExportModelReport
      const evaluation = await this.evaluateExport(handle, report, params.evaluate, { onProgress, signal })
      const full: ExportModelReport = { ...report, evaluation }
      // The report beside the export carries the measured figures too.
      await writeReport(full as ExportReport)
      return full
    })
  }

  /** Perplexity of the written export and its KLD against the source model; a model the evaluation cannot run is reported, not thrown. */
  private async evaluateExport(
    handle: OpenedModelHandle,
    report: ExportReport,
    settings: NonNullable<ExportModelParams['evaluate']>,
    hooks: { onProgress: JobProgress; signal: AbortSignal },
  ): Promise<ExportEvaluation> {
    // Inside the export's job: the evaluation's progress and cancel are the export job's.
    const service = new EvaluateService(this.options.evaluation, (_jobId, work) => work(hooks))
    try {
      const run = await service.evaluate(handle, {
        jobId: 'export-evaluation',
        modelId: handle.summary.modelId,
        text: { kind: 'heldout' },
        ctx: settings.ctx,
        maxWindows: settings.maxWindows,
        backend: settings.backend,
        kld: true,
        variant: { kind: 'model', path: report.path },
      })
      return {
        status: 'measured',
        textLabel: run.textLabel,
        ctx: run.ctx,
        windows: run.windows,
        tokens: run.tokens,
        backend: run.backend,
        ppl: run.ppl,
        nll: run.nll,
        kld: run.kld,
        seconds: run.seconds,
        runId: run.id,
      }
    } catch (err) {
      if (hooks.signal.aborted || isAbortError(err)) throw err
      return { status: 'failed', message: `the export was written, but Quantscope could not evaluate it: ${(err as Error)?.message ?? String(err)}` }
    }
  }
}

function planSource(name: string | undefined): string {
  return name ? `plan '${name}'` : 'plan'
}

function notBuiltMessage(id: ExportFormatId): string {
  return `export to ${id} is not available in this build (available: ${[...EXPORT_FORMATS.keys()].join(', ')})`
}

/** Why the export cannot run at all (the model, or planned tensors), as runExport would refuse it. */
function refusalOf(format: ExportFormat, model: OpenedModel, entries: ResolvedEntry[], options: ExportOptions): string | null {
  const problem = format.checkModel(model)
  if (problem) return `${format.label}: ${problem}`
  return unsupportedTensors({ model, entries, options }, format)
}

/** The driver's options from the call: float type and the format's own options, checked against what the format offers. */
function exportOptions(format: ExportFormat, params: { dtype?: ExportFloatType; formatOptions?: Record<string, string | number | boolean> }, method: string): ExportOptions {
  const offered = FORMAT_OPTIONS[format.id] ?? []
  for (const [key, value] of Object.entries(params.formatOptions ?? {})) {
    const option = offered.find((o) => o.key === key)
    if (!option) throw new EngineError('BadRequest', `${method}: ${format.label} has no option '${key}'${offered.length ? ` (options: ${offered.map((o) => o.key).join(', ')})` : ''}`)
    if (!option.choices.includes(String(value))) throw new EngineError('BadRequest', `${method}: 'formatOptions.${key}' must be one of ${option.choices.join(', ')}, got '${String(value)}'`)
  }
  return {
    ...(params.dtype ? { dtype: params.dtype } : {}),
    ...(params.formatOptions && Object.keys(params.formatOptions).length ? { formatOptions: { ...params.formatOptions } } : {}),
  }
}

/** Why `out` cannot be the destination, or null: absolute, not the source model, free, its folder there. */
async function destinationProblem(model: OpenedModel, out: string, format: ExportFormat | undefined): Promise<string | null> {
  if (!isAbsolute(out)) return 'must be an absolute path'
  try {
    await checkDestination(model, out, format?.output ?? 'file')
    return null
  } catch (err) {
    if (err instanceof ExportError) return err.problem
    throw err
  }
}

/**
 * A destination beside the source model that is free: `<model>-<plan>-<format>[.ext]` in the
 * folder holding the model (above an HF folder, which must not be written into).
 */
async function freeDestination(handle: OpenedModelHandle, planName: string | undefined, format: ExportFormatId, output: 'file' | 'folder'): Promise<string> {
  const abs = resolve(handle.path)
  const isFolder = (await stat(abs).catch(() => null))?.isDirectory() ?? false
  let dir = dirname(abs)
  let name = basename(abs)
  // A model file inside an HF folder (an index or one of several files): go above the folder.
  if (!isFolder && handle.model.files.length > 1 && handle.model.files.some((f) => dirname(resolve(f)) === dir)) {
    name = basename(dir)
    dir = dirname(dir)
  }
  name = name.replace(/\.safetensors\.index\.json$/i, '').replace(/\.(gguf|onnx|safetensors)$/i, '')
  const slug = (planName ?? 'plan').trim().replace(/[^\w.-]+/g, '-').replace(/^[-.]+|[-.]+$/g, '') || 'plan'
  const ext = output === 'file' ? `.${format}` : ''
  const exists = (p: string) => stat(p).then(() => true, () => false)
  for (let i = 1; ; i++) {
    const candidate = join(dir, `${name}-${slug}-${format}${i > 1 ? `-${i}` : ''}${ext}`)
    if (!(await exists(candidate)) && !(await exists(reportPathFor(candidate, output)))) return candidate
  }
}

/** An ExportError as the API reports it: the destination as `file`, the reason as `problem`. */
function apiExportError(err: unknown): unknown {
  if (err instanceof ExportError) return Object.assign(new Error(err.message), { name: 'ExportError', file: err.path, problem: err.problem })
  return err
}
