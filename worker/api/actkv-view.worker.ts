/**
 * Activation/KV worker thread: opens the model and runs one job of actkv-protocol.ts — the
 * k-means activation codebooks an evaluation needs (plan/act-codebooks.ts, exactly as the CLI
 * fits them), the activation view or the KV view (actkv-views.ts) — posting progress, then the
 * result or the error. These run the decoder graph over calibration windows: seconds to
 * minutes that must not hold the engine thread. 'cancel' aborts between runtime calls.
 */
import { openModel } from '../formats/open-model'
import type { EvalProgress } from '../inference/perplexity'
import { serveOneJob, type OneJobContext } from '../jobs/serve-one-job'
import { kmeansActOptions } from '../plan/act-codebooks'
import type { ActKvJob, ActKvProgress, ActKvResult } from './actkv-protocol'
import { computeActivationView, computeKvView, kmeansParams } from './actkv-views'

async function run(job: ActKvJob, { signal, progress }: OneJobContext<ActKvProgress>): Promise<ActKvResult> {
  /** Loading stays loading; a calibration pass is 'calibrating', the view's own pass 'evaluating'. */
  const hooksFor = (evaluating: ActKvProgress['stage']) => ({
    signal,
    onProgress: (p: EvalProgress) => progress({ stage: p.stage === 'evaluating' ? evaluating : 'loading', done: p.done, total: p.total }),
  })
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

serveOneJob<ActKvJob, ActKvProgress, ActKvResult>('actkv-view.worker', run)
