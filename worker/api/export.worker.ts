/**
 * Export worker thread: opens the source model, runs the export driver (export/run-export.ts)
 * and posts its progress (stage, tensor), then the report or the error. 'cancel' aborts the
 * driver, which removes the staged output before it answers.
 */
import { parentPort } from 'node:worker_threads'
import { runExport } from '../export/run-export'
import { openModel } from '../formats/open-model'
import { serializeError } from '../jobs/serialized-error'
import type { ExportWorkerMessage, ExportWorkerRequest } from './export-protocol'

if (!parentPort) throw new Error('export.worker must run in a worker thread')
const port = parentPort
const controller = new AbortController()
const post = (msg: ExportWorkerMessage): void => port.postMessage(msg)

/** Progress at most ~20 messages a second, a stage's first and last step always. */
const PROGRESS_INTERVAL_MS = 50

port.on('message', (msg: ExportWorkerRequest) => {
  if (msg.type === 'cancel') {
    controller.abort()
    return
  }
  const { job } = msg
  void (async () => {
    const model = await openModel(job.modelPath)
    try {
      let last = 0
      let lastStage = ''
      const report = await runExport(
        { model, modelPath: job.modelPath, plan: job.plan, planSource: job.planSource, format: job.format, out: job.out, options: job.options },
        {
          signal: controller.signal,
          onProgress(p) {
            const now = performance.now()
            if (p.stage === lastStage && p.done < p.total && now - last < PROGRESS_INTERVAL_MS) return
            last = now
            lastStage = p.stage
            post({ type: 'progress', progress: p })
          },
        },
      )
      post({ type: 'result', report })
    } finally {
      await model.close().catch(() => {})
    }
  })().catch((err: unknown) => post({ type: 'error', error: serializeError(err) }))
})
