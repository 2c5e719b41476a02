/**
 * Runs one export on its own worker thread (export.worker.ts) and resolves to its report.
 * Cancel: the worker aborts the driver, which removes the staged output; a worker that does
 * not answer within the grace period (inside one long tensor) is terminated, and the staged
 * output it leaves is removed from here (same process, so the same `.partial-<pid>` name).
 */
import type { ExportProgress, ExportReport } from '../export/contract'
import { discardStage, stagePathFor } from '../export/staging'
import { abortError } from '../jobs/abort'
import { deserializeError } from '../jobs/serialized-error'
import { spawnEngineWorker } from '../jobs/spawn-worker'
import type { ExportWorkerJob, ExportWorkerMessage, ExportWorkerRequest } from './export-protocol'

/** How long a cancelled export may take to stop at its next tensor before its thread is terminated. */
const CANCEL_GRACE_MS = 5000

/** Errors of the export driver keep their name across the thread boundary (the UI shows 'ExportError'). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  ExportError: (message) => Object.assign(new Error(message), { name: 'ExportError' }),
  PlanError: (message) => Object.assign(new Error(message), { name: 'PlanError' }),
}

export function runExportInWorker(job: ExportWorkerJob, hooks: { signal?: AbortSignal; onProgress?(p: ExportProgress): void } = {}): Promise<ExportReport> {
  const { signal, onProgress } = hooks
  if (signal?.aborted) return Promise.reject(abortError())
  const worker = spawnEngineWorker('export')
  return new Promise<ExportReport>((resolve, reject) => {
    let settled = false
    let graceTimer: NodeJS.Timeout | null = null
    const finish = (err: Error | null, report?: ExportReport): void => {
      if (settled) return
      settled = true
      signal?.removeEventListener('abort', onAbort)
      if (graceTimer) clearTimeout(graceTimer)
      void worker.terminate()
      if (err) reject(err)
      else resolve(report!)
    }
    const onAbort = (): void => {
      worker.postMessage({ type: 'cancel' } satisfies ExportWorkerRequest)
      graceTimer = setTimeout(() => {
        void worker.terminate().then(() => discardStage(stagePathFor(job.out)))
        finish(abortError('the export was cancelled; the partial output was removed'))
      }, CANCEL_GRACE_MS)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    worker.on('message', (msg: ExportWorkerMessage) => {
      if (msg.type === 'progress') {
        if (!settled) onProgress?.(msg.progress)
      } else if (msg.type === 'result') {
        finish(null, msg.report)
      } else {
        finish(deserializeError(msg.error, 'export worker', KNOWN_ERRORS))
      }
    })
    worker.on('error', (err) => finish(err))
    worker.on('exit', (code) => finish(new Error(`the export worker exited (code ${code}) before finishing`)))
    worker.postMessage({ type: 'run', job } satisfies ExportWorkerRequest)
  })
}
