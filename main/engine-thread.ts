/**
 * Runs the engine on its own worker thread (main/engine.worker.ts) and exposes it as an
 * ApiBackend, so the transports use it exactly like an in-process EngineService. If the
 * thread dies, pending calls fail with a readable error and the next call starts a new one
 * (opened models are then gone; the UI reopens them).
 */
import type { Worker } from 'node:worker_threads'
import type { ApiEvent, ApiFunctions, ApiMethod, ApiParams, ApiResult, ServerMessage } from '../worker/api/contract'
import type { ApiBackend } from './api-dispatcher'
import { API_METHOD_NAMES } from '../worker/api/method-names'
import { spawnWorkerThread } from '../worker/jobs/spawn-worker'
import type { EngineThreadData } from './engine.worker'

export interface EngineThread extends ApiBackend {
  close(): Promise<void>
}

export interface EngineThreadOptions extends EngineThreadData {
  /** Called after each successful openModel (e.g. to refresh a Recent menu). */
  onModelOpened?(): void
}

function spawnEngineThread(data: EngineThreadData): Worker {
  // Built: emitted as engine.worker.js beside the main entry (electron.vite.config.ts).
  return spawnWorkerThread(
    { source: () => new URL('./engine.worker.ts', import.meta.url), built: () => new URL('./engine.worker.js', import.meta.url) },
    { ...data },
  )
}

interface Pending {
  method: ApiMethod
  resolve(value: unknown): void
  reject(err: Error): void
}

export function startEngineThread(options: EngineThreadOptions): EngineThread {
  const { onModelOpened, ...data } = options
  const listeners = new Set<(event: ApiEvent) => void>()
  const pending = new Map<number, Pending>()
  let worker: Worker | null = null
  let nextId = 1
  let closing: Promise<void> | null = null

  const failAll = (message: string): void => {
    for (const p of pending.values()) p.reject(Object.assign(new Error(message), { name: 'EngineCrashed' }))
    pending.clear()
  }

  const ensureWorker = (): Worker => {
    if (worker) return worker
    const w = spawnEngineThread(data)
    w.on('message', (msg: ServerMessage | { kind: 'shutdown-done' }) => {
      if (msg.kind === 'event') {
        for (const l of listeners) l(msg.event)
      } else if (msg.kind === 'response') {
        const p = pending.get(msg.id)
        if (!p) return
        pending.delete(msg.id)
        if (msg.ok) {
          p.resolve(msg.result)
          if (p.method === 'openModel') onModelOpened?.()
        } else {
          p.reject(Object.assign(new Error(msg.error.message), msg.error))
        }
      }
    })
    w.on('error', (err) => {
      worker = null
      failAll(`the engine thread failed: ${err.message}`)
    })
    w.on('exit', (code) => {
      if (worker === w) worker = null
      failAll(`the engine thread stopped (exit code ${code})`)
    })
    worker = w
    return w
  }

  const call = <M extends ApiMethod>(method: M, params: ApiParams<M>): Promise<ApiResult<M>> => {
    if (closing) return Promise.reject(new Error('the engine is shutting down'))
    const id = nextId++
    return new Promise<ApiResult<M>>((resolve, reject) => {
      pending.set(id, { method, resolve: resolve as (v: unknown) => void, reject })
      ensureWorker().postMessage({ id, method, params })
    })
  }

  const methods = Object.fromEntries(API_METHOD_NAMES.map((m) => [m, (params: unknown) => call(m, params as never)])) as unknown as ApiFunctions

  return {
    ...methods,
    onEvent(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    close() {
      if (closing) return closing
      const w = worker
      closing = (async () => {
        if (!w) return
        // Let the engine stop its stats workers and close files; terminate if it hangs.
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 3000)
          w.on('message', (m: { kind?: string }) => {
            if (m.kind === 'shutdown-done') {
              clearTimeout(timer)
              resolve()
            }
          })
          w.postMessage({ kind: 'shutdown' })
        })
        await w.terminate()
      })()
      return closing
    },
  }
}
