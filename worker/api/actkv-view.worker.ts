/**
 * Activation/KV worker thread: opens the model and runs one job of actkv-protocol.ts — the
 * k-means activation codebooks an evaluation needs (plan/act-codebooks.ts, exactly as the CLI
 * fits them), the activation view or the KV view (actkv-views.ts) — posting progress, then the
 * result or the error. These run the decoder graph over calibration windows: seconds to
 * minutes that must not hold the engine thread. 'cancel' aborts between runtime calls.
 */
import { parentPort } from 'node:worker_threads'
import { openModel } from '../formats/open-model'
import type { EvalProgress } from '../inference/perplexity'
import { serializeError } from '../jobs/serialized-error'
import { kmeansActOptions } from '../plan/act-codebooks'
import type { ActKvJob, ActKvMessage, ActKvProgress, ActKvRequest, ActKvResult } from './actkv-protocol'
import { computeActivationView, computeKvView, kmeansParams } from './actkv-views'

if (!parentPort) throw new Error('actkv-view.worker must run in a worker thread')
const port = parentPort
const controller = new AbortController()
const post = (msg: ActKvMessage): void => port.postMessage(msg)

const PROGRESS_INTERVAL_MS = 50
let last = 0
let lastStage = ''
function progress(p: ActKvProgress): void {
  const now = performance.now()
  if (p.stage === lastStage && p.done < p.total && now - last < PROGRESS_INTERVAL_MS) return
  last = now
  lastStage = p.stage
  post({ type: 'progress', progress: p })
}

/** Loading stays loading; a calibration pass is 'calibrating', the view's own pass 'evaluating'. */
const hooksFor = (evaluating: ActKvProgress['stage']) => ({
  signal: controller.signal,
  onProgress: (p: EvalProgress) => progress({ stage: p.stage === 'evaluating' ? evaluating : 'loading', done: p.done, total: p.total }),
})

async function run(job: ActKvJob): Promise<ActKvResult> {
  const model = await openModel(job.modelPath)
  try {
    const common = { backend: job.backend, threads: job.threads }
    if (job.kind === 'codebooks') {
      const { codebooks, calibrationTokens } = (await kmeansActOptions(model, kmeansParams(job.bits, job.outliers, job.norm), { ...common, ...(job.maxWindows !== undefined ? { maxWindows: job.maxWindows } : {}) }, hooksFor('calibrating'))) as {
        codebooks: Record<string, Float32Array>
        calibrationTokens: number
      }
      return { codebooks, calibrationTokens }
    }
    if (job.kind === 'activationView') return await computeActivationView(model, job, hooksFor('evaluating'))
    return await computeKvView(model, job, hooksFor('calibrating'))
  } finally {
    await model.close().catch(() => {})
  }
}

port.on('message', (msg: ActKvRequest) => {
  if (msg.type === 'cancel') {
    controller.abort()
    return
  }
  run(msg.job).then(
    (result) => post({ type: 'result', result }),
    (err: unknown) => post({ type: 'error', error: serializeError(err) }),
  )
})
