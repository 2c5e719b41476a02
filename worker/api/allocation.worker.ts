/**
 * Allocation worker thread: opens the model, measures what the allocators ask for
 * (allocation-sweep.ts measureAllocatorInputs: LSAQ importance, per-tensor ΔKLD from its disk
 * cache or measured) and evaluates the plans it is given, posting progress per stage, then the
 * result or the error. 'cancel' aborts between runtime calls.
 */
import { openModel } from '../formats/open-model'
import { evaluatePerplexity } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { serveOneJob, type OneJobContext } from '../jobs/serve-one-job'
import { parseOptionSpecs } from '../plan/allocate'
import { createOverrides } from '../plan/apply'
import { measureAllocatorInputs } from './allocation-sweep'
import type { AllocationWorkerJob, AllocationWorkerProgress, AllocationWorkerResult } from './allocation-protocol'

async function run(job: AllocationWorkerJob, { signal, progress }: OneJobContext<AllocationWorkerProgress>): Promise<AllocationWorkerResult> {
  const t0 = performance.now()
  const model = await openModel(job.modelPath)
  try {
    const tokenizer = () => openTokenizer(model, null)
    const result: AllocationWorkerResult = { cached: 0, measured: 0, evaluations: [], seconds: 0 }
    const { measure } = job
    if (measure.allocators.length > 0) {
      const options = parseOptionSpecs(measure.options)
      const ids = await tokensOf({ file: measure.textFile }, tokenizer)
      // ΔKLD serves greedy and optimal alike: measured once.
      const kinds = [...new Set(measure.allocators.map((a): 'lsaq' | 'optimal' => (a === 'lsaq' ? 'lsaq' : 'optimal')))]
      for (const allocator of kinds) {
        const inputs = await measureAllocatorInputs(
          { model, allocator, options, allTensors: measure.allTensors, ids, ctx: job.ctx, windows: measure.windows, backend: job.backend, threads: job.threads, cacheDir: measure.cacheDir },
          {
            signal,
            onImportance: (p) => progress({ stage: p.stage === 'loading' ? 'loading' : 'measuring', done: p.done, total: p.total, label: 'LSAQ importance' }),
            onSensitivity: (p) => {
              if (p.cached) result.cached++
              else result.measured++
              progress({ stage: 'measuring', done: p.done, total: p.total, label: `ΔKLD ${p.tensor} at ${p.option}` })
            },
          },
        )
        if (inputs.importance) result.importance = inputs.importance
        if (inputs.costs) result.costs = inputs.costs
      }
    }
    if (job.evaluate && job.evaluate.plans.length > 0) {
      const ev = job.evaluate
      const ids = await tokensOf({ file: ev.textFile }, tokenizer)
      for (const [i, { label, plan }] of ev.plans.entries()) {
        progress({ stage: 'evaluating', done: i, total: ev.plans.length, label })
        const overrides = await createOverrides(model, { plan, source: label })
        const r = await evaluatePerplexity(model, ids, { ctx: job.ctx, maxWindows: ev.windows, backend: job.backend, threads: job.threads, overrides }, { signal })
        result.evaluations.push({ label, ppl: r.ppl, windows: r.windows })
      }
      progress({ stage: 'evaluating', done: ev.plans.length, total: ev.plans.length })
    }
    result.seconds = (performance.now() - t0) / 1000
    return result
  } finally {
    await model.close().catch(() => {})
  }
}

serveOneJob<AllocationWorkerJob, AllocationWorkerProgress, AllocationWorkerResult>('allocation.worker', run)
