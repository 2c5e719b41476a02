/**
 * Export worker thread: opens the source model, runs the export driver (export/run-export.ts)
 * and posts its progress (stage, tensor), then the report or the error. 'cancel' aborts the
 * driver, which removes the staged output before it answers.
 */
import { runExport } from '../export/run-export'
import type { ExportProgress, ExportReport } from '../export/contract'
import { openModel } from '../formats/open-model'
import { serveOneJob, type OneJobContext } from '../jobs/serve-one-job'
import type { ExportWorkerJob } from './export-protocol'

async function run(job: ExportWorkerJob, { signal, progress }: OneJobContext<ExportProgress>): Promise<ExportReport> {
  const model = await openModel(job.modelPath)
  try {
    return await runExport(
      { model, modelPath: job.modelPath, plan: job.plan, planSource: job.planSource, format: job.format, out: job.out, options: job.options },
      { signal, onProgress: progress },
    )
  } finally {
    await model.close().catch(() => {})
  }
}

serveOneJob<ExportWorkerJob, ExportProgress, ExportReport>('export.worker', run, (report) => ({ type: 'result', report }) as { type: 'result' })
