/**
 * Importance worker thread: opens the model, tokenizes the text, runs the one-pass LSAQ and
 * cosine importance (importance/layer-importance.ts) and, when asked, measured sensitivity
 * (importance/sensitivity.ts) and the local error proxy on the calibration text
 * (importance/local-proxy.ts), posting progress per stage, then the result or the error.
 * 'cancel' aborts both between runtime calls.
 */
import { openModel } from '../formats/open-model'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { computeLayerImportance, type LayerImportanceResult } from '../importance/layer-importance'
import { DEFAULT_LOCAL_SPEC, localBlockImportance, type LocalImportanceResult } from '../importance/local-proxy'
import { measureSensitivity, type SensitivityResult } from '../importance/sensitivity'
import { serveOneJob, type OneJobContext } from '../jobs/serve-one-job'
import type { ImportanceWorkerJob, ImportanceWorkerProgress, ImportanceWorkerResult } from './importance-protocol'

async function run(job: ImportanceWorkerJob, { signal, progress }: OneJobContext<ImportanceWorkerProgress>): Promise<ImportanceWorkerResult> {
  const t0 = performance.now()
  const model = await openModel(job.modelPath)
  try {
    const ids = await tokensOf({ file: job.textFile }, () => openTokenizer(model, null))
    const wantLens = job.methods.includes('lsaq')
    const wantCos = job.methods.includes('cosine')
    let one: LayerImportanceResult | null = null
    if (wantLens || wantCos) {
      one = await computeLayerImportance(
        model,
        ids,
        { lsaq: wantLens ? { k: job.k, finalNorm: job.finalNorm } : null, cosine: wantCos, ctx: job.ctx, maxWindows: job.maxWindows, backend: job.backend, threads: job.threads },
        { signal, onProgress: (p) => progress({ stage: p.stage === 'loading' ? 'loading' : 'evaluating', done: p.done, total: p.total }) },
      )
    }
    let sens: SensitivityResult | null = null
    if (job.methods.includes('sensitivity')) {
      if (!job.quant) throw new Error('sensitivity needs a method spec (quant), e.g. rtn:bits=3,group=128')
      // The base log-probs and the first block take a while: say which stage runs meanwhile.
      const blocks = one?.lsaq?.length ?? one?.cosine?.length ?? model.config?.numLayers
      if (blocks) progress({ stage: 'measuring', done: 0, total: blocks })
      sens = await measureSensitivity(
        model,
        ids,
        { spec: job.quant, ctx: job.ctx, maxWindows: job.maxWindows, backend: job.backend, threads: job.threads, cacheDir: job.cacheDir },
        { signal, onProgress: (p) => progress({ stage: 'measuring', done: p.done, total: p.total }) },
      )
    }
    let local: LocalImportanceResult | null = null
    if (job.methods.includes('local')) {
      // The calibration text (never the evaluated one), with the capture cache GPTQ shares.
      local = await localBlockImportance(
        model,
        job.quant ?? DEFAULT_LOCAL_SPEC,
        // No result cache asked for: no capture cache either (tests, a read-only home).
        job.cacheDir === null ? { calibration: { backend: job.backend, threads: job.threads, cacheDir: null }, cacheDir: null } : { calibration: { backend: job.backend, threads: job.threads } },
        { signal, onProgress: (p) => progress({ stage: p.stage === 'measuring' ? 'local' : p.stage === 'calibrating' ? 'calibrating' : 'loading', done: p.done, total: p.total }) },
      )
    }
    const blocks = one?.lsaq?.length ?? one?.cosine?.length ?? (sens ? Math.max(...sens.blocks.map((b) => b.layer)) + 1 : local!.layers.length)
    const layers = Array.from({ length: blocks }, (_, l) => l)
    const byLayer = (pick: (b: SensitivityResult['blocks'][number]) => number): (number | null)[] => {
      const m = new Map(sens!.blocks.map((b) => [b.layer, pick(b)]))
      return layers.map((l) => m.get(l) ?? null)
    }
    return {
      layers,
      ...(one?.lsaq ? { lsaq: one.lsaq } : {}),
      ...(one?.cosine ? { cosine: one.cosine } : {}),
      ...(sens ? { sensitivity: { deltaKld: byLayer((b) => b.deltaKld), deltaPpl: byLayer((b) => b.deltaPpl), basePpl: sens.basePpl, spec: sens.spec, cached: sens.cached } } : {}),
      ...(local ? { local: { values: layers.map((l) => local.importance[l] ?? null), spec: local.spec, tokens: local.tokens, cached: local.cached } } : {}),
      k: one?.k ?? null,
      finalNorm: one?.finalNorm ?? null,
      ctx: one?.ctx ?? sens?.ctx ?? job.ctx,
      windows: one?.windows ?? sens?.windows ?? local!.windows,
      tokens: one?.tokens ?? (sens ? sens.windows * sens.ctx : local!.tokens),
      backend: one?.backend ?? job.backend ?? 'wasm',
      seconds: (performance.now() - t0) / 1000,
    }
  } finally {
    await model.close().catch(() => {})
  }
}

serveOneJob<ImportanceWorkerJob, ImportanceWorkerProgress, ImportanceWorkerResult>('importance.worker', run)
