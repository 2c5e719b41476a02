/**
 * The export driver shared by the CLI and the API: resolve the plan against the model, ask the
 * format what it can represent (refusing unsupported tensors before any work), stage the
 * output beside the destination, let the format write it, rename it into place, and write the
 * report beside it. A failure or a cancel removes the staged output and says why.
 */
import { rename } from 'node:fs/promises'
import type { OpenedModel } from '../formats/contract'
import { openOutputFile } from '../io/output-file'
import { resolvePlanFor } from '../plan/apply'
import { modelDisplayName, modelFingerprint, type Plan } from '../plan/plan'
import { ExportError, type ExportFormatId, type ExportHooks, type ExportJob, type ExportOptions, type ExportReport } from './contract'
import { exportFormat } from './registry'
import { checkDestination, discardStage, listOutputFiles, prepareStage, reportPathFor, stagePathFor } from './staging'

export interface ExportRequest {
  model: OpenedModel
  /** The model path as given (folder or file). */
  modelPath: string
  plan: Plan
  planSource: string
  format: ExportFormatId | string
  out: string
  options?: ExportOptions
}

/** The planned tensors a format cannot write, as one message (null when all can be written). */
export function unsupportedTensors(job: Pick<ExportJob, 'model' | 'entries' | 'options'>, format: ReturnType<typeof exportFormat>): string | null {
  const problems: string[] = []
  for (const e of job.entries) {
    const s = format.support(job.model, e, job.options)
    if (s.kind === 'unsupported') problems.push(`'${e.tensor.name}' (${e.methodId}): ${s.reason}`)
  }
  if (problems.length === 0) return null
  const shown = problems.slice(0, 5).join('; ')
  return `${format.label} cannot represent ${problems.length} planned tensor(s): ${shown}${problems.length > 5 ? `; … ${problems.length - 5} more` : ''}`
}

export async function runExport(request: ExportRequest, hooks: ExportHooks = {}): Promise<ExportReport> {
  const started = performance.now()
  const format = exportFormat(request.format, request.out)
  const options = request.options ?? {}
  const entries = resolvePlanFor(request.model, request.plan, request.planSource)
  const job: ExportJob = { model: request.model, modelPath: request.modelPath, plan: request.plan, planSource: request.planSource, entries, options }
  const modelProblem = format.checkModel(request.model)
  if (modelProblem) throw new ExportError(request.out, `${format.label}: ${modelProblem}`)
  const unsupported = unsupportedTensors(job, format)
  if (unsupported) throw new ExportError(request.out, unsupported)
  const out = await checkDestination(request.model, request.out, format.output)
  const reportPath = reportPathFor(out, format.output)

  const stage = stagePathFor(out)
  const openOutput = hooks.openOutput ?? openOutputFile
  let content
  try {
    await prepareStage(stage, format.output)
    content = await format.export(job, stage, { ...hooks, openOutput })
    hooks.signal?.throwIfAborted()
    await rename(stage, out)
  } catch (err) {
    await discardStage(stage)
    throw explainFailure(out, err, hooks.signal)
  }
  const files = await listOutputFiles(out)
  const report: ExportReport = {
    format: format.id,
    label: format.label,
    path: out,
    reportPath,
    files,
    bytes: files.reduce((a, f) => a + f.bytes, 0),
    seconds: (performance.now() - started) / 1000,
    model: { path: request.modelPath, name: modelDisplayName(request.model), fingerprint: modelFingerprint(request.model) },
    plan: { source: request.planSource, name: request.plan.model.name, ...(request.plan.description ? { description: request.plan.description } : {}), quantized: entries.length },
    ...content,
  }
  await writeReport(report)
  return report
}

/** Writes (or rewrites, after an evaluation is added) the report beside the export, atomically. */
export async function writeReport(report: ExportReport): Promise<void> {
  const tmp = `${report.reportPath}.partial-${process.pid}`
  const fh = await openOutputFile(tmp)
  try {
    await fh.write(new TextEncoder().encode(JSON.stringify(report, null, 2) + '\n'))
    await fh.close()
    await rename(tmp, report.reportPath)
  } catch (err) {
    await fh.close().catch(() => {})
    await discardStage(tmp)
    throw err
  }
}

/** The reason a staged export was dropped, in words: disk full, cancelled, or the original error. */
function explainFailure(out: string, err: unknown, signal?: AbortSignal): Error {
  const code = (err as NodeJS.ErrnoException)?.code
  if (signal?.aborted || (err as Error)?.name === 'AbortError') {
    return new ExportError(out, 'export cancelled; the partial output was removed, nothing was written')
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ExportError(out, `disk full while writing the export (${(err as Error).message.includes(code) ? '' : `${code}: `}${(err as Error).message}); the partial output was removed`)
  }
  if (err instanceof ExportError) return err
  const e = err as Error
  return new ExportError(out, `export failed, the partial output was removed: ${e?.message ?? String(err)}`)
}
