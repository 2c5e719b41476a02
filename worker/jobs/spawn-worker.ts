import { Worker } from 'node:worker_threads'

/**
 * Engine worker entries, by name. The path is relative to worker/ in source mode; in an
 * electron-vite build each one is an input of the main bundle emitted as `<name>.js`
 * beside the main entry (see electron.vite.config.ts).
 */
export const ENGINE_WORKERS = {
  stats: 'stats/stats.worker',
  inference: 'inference/inference.worker',
  quant: 'quant/quant.worker',
  /** Plans: one planned tensor per job, with calibration, error metrics and the inspector's payloads. */
  'plan-quant': 'plan/quant.worker',
  /** Exports: one model written to a target format per thread (api/export-thread.ts). */
  export: 'api/export.worker',
  /** Layer importance (LSAQ, cosine, measured sensitivity): one job per thread (api/importance-thread.ts). */
  importance: 'api/importance.worker',
  /** Allocation: LSAQ importance / per-tensor ΔKLD and a sweep's evaluations, one job per thread (api/allocation-thread.ts). */
  allocation: 'api/allocation.worker',
  /** Activation/KV: k-means activation codebooks for evaluation, the activation and KV views (api/actkv-thread.ts). */
  actkv: 'api/actkv-view.worker',
} as const

export type EngineWorkerName = keyof typeof ENGINE_WORKERS

/**
 * Engine modules a worker imports at run time by URL (an `overridesModule` of an inference
 * job), so a lower layer runs code of a higher one without importing it: the inference worker
 * builds a quantized variant with plan/apply.ts's createOverrides. Bundled like the workers,
 * as `<name>.js` beside them.
 */
export const ENGINE_MODULES = {
  'plan-overrides': 'plan/apply',
} as const

export type EngineModuleName = keyof typeof ENGINE_MODULES

const runningFromSource = import.meta.url.endsWith('.ts')

/**
 * Starts a worker thread from its TypeScript source or from its built file: the one place
 * that knows how (the engine's workers below, and the app's engine thread in main/).
 * `source` and `built` are thunks so each side only builds the URL it uses.
 */
export function spawnWorkerThread(entry: { source: () => URL; built: () => URL }, workerData: Record<string, unknown> = {}): Worker {
  if (runningFromSource) {
    // tsx's loader hooks do not reach a worker's entry on Node 20: go through the bootstrap.
    return new Worker(new URL('./ts-worker-bootstrap.mjs', import.meta.url), {
      workerData: { ...workerData, __entry: entry.source().href },
    })
  }
  return new Worker(entry.built(), { workerData })
}

/** Starts an engine worker thread, from TypeScript sources or from the built bundle. */
export function spawnEngineWorker(name: EngineWorkerName, workerData: Record<string, unknown> = {}): Worker {
  return spawnWorkerThread(
    { source: () => new URL(`../${ENGINE_WORKERS[name]}.ts`, import.meta.url), built: () => new URL(`./${name}.worker.js`, import.meta.url) },
    workerData,
  )
}

/** File URL of an engine module, from TypeScript sources or from the built bundle. */
export function engineModuleUrl(name: EngineModuleName): string {
  return runningFromSource ? new URL(`../${ENGINE_MODULES[name]}.ts`, import.meta.url).href : new URL(`./${name}.js`, import.meta.url).href
}
