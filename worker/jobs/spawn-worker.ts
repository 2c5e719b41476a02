import { Worker } from 'node:worker_threads'

/**
 * Engine worker entries, by name. The path is relative to worker/ in source mode; in an
 * electron-vite build each one is an input of the main bundle emitted as `<name>.js`
 * beside the main entry (see electron.vite.config.ts).
 */
export const ENGINE_WORKERS = {
  stats: 'stats/stats.worker',
  inference: 'inference/inference.worker',
} as const

export type EngineWorkerName = keyof typeof ENGINE_WORKERS

const runningFromSource = import.meta.url.endsWith('.ts')

/** Starts an engine worker thread, from TypeScript sources or from the built bundle. */
export function spawnEngineWorker(name: EngineWorkerName, workerData: Record<string, unknown> = {}): Worker {
  if (runningFromSource) {
    const entry = new URL(`../${ENGINE_WORKERS[name]}.ts`, import.meta.url).href
    return new Worker(new URL('./ts-worker-bootstrap.mjs', import.meta.url), {
      workerData: { ...workerData, __entry: entry },
    })
  }
  return new Worker(new URL(`./${name}.worker.js`, import.meta.url), { workerData })
}
