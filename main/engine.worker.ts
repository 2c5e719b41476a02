/**
 * The engine's own thread. Both shells (Electron main, browser-mode host) run the
 * EngineService here, so opening models (header parsing, GGUF metadata) and job bookkeeping
 * never run on the thread that serves the window or the WebSocket. Statistics go one level
 * further down, to the StatsService's worker pool.
 *
 * Protocol: the parent posts ApiRequest values ({id, method, params}) or {kind: 'shutdown'};
 * this thread posts ServerMessage values (responses and events), and {kind: 'shutdown-done'}.
 * The parent is this process's own transport, which has already checked every request against
 * the API's schemas; they are not checked a second time here.
 */
import { dirname, join } from 'node:path'
import { parentPort, workerData } from 'node:worker_threads'
import type { ApiRequest, DefaultModelInfo, ServerMessage } from '../worker/api/contract'
import { EngineService } from '../worker/api/engine-service'
import { dispatchChecked } from './api-dispatcher'
import { RecentModelsFile } from './recent-models'
import { PLANS_FILE_NAME, SavedPlansFile } from './plans-store'
import { EvalRunsFile, RUNS_FILE_NAME } from './runs-store'

export interface EngineThreadData {
  recentFile: string | null
  cacheDir: string | null
  statsThreads: number | null
  defaultModel: DefaultModelInfo
}

const port = parentPort
if (!port) throw new Error('engine.worker must run as a worker thread')
const data = workerData as EngineThreadData

const engine = new EngineService({
  recent: data.recentFile ? new RecentModelsFile(data.recentFile) : undefined,
  // Evaluation runs live beside the recent-models list, in the app's state folder.
  runs: data.recentFile ? new EvalRunsFile(join(dirname(data.recentFile), RUNS_FILE_NAME)) : undefined,
  // Saved quantization plans too.
  plans: data.recentFile ? new SavedPlansFile(join(dirname(data.recentFile), PLANS_FILE_NAME)) : undefined,
  cacheDir: data.cacheDir ?? undefined,
  statsThreads: data.statsThreads ?? undefined,
  defaultModel: data.defaultModel,
})

const post = (message: ServerMessage): void => port.postMessage(message)
engine.onEvent((event) => post({ kind: 'event', event }))

port.on('message', (message: unknown) => {
  if ((message as { kind?: unknown })?.kind === 'shutdown') {
    void engine.close().finally(() => port.postMessage({ kind: 'shutdown-done' }))
    return
  }
  void dispatchChecked(engine, message as ApiRequest).then((response) => post({ kind: 'response', ...response }))
})
