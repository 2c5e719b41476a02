/**
 * Desktop transport of the API contract: one `ipcMain.handle` channel per method plus one
 * event channel. Calls are accepted only from the app's own window and top frame, their
 * parameters are checked here against the API's schemas (the preload only forwards them),
 * and they are answered with ApiOutcome values.
 */
import { ipcMain, type IpcMainInvokeEvent, type WebContents } from 'electron'
import type { ApiEvent, ApiOutcome } from '../worker/api/contract'
import { callBackend, toApiError, type ApiBackend } from './api-dispatcher'
import { API_METHODS, parseApiParams } from '../worker/api/parse-request'
import { IPC_EVENT_CHANNEL, ipcMethodChannel } from './ipc-channels'

export interface IpcTransport {
  /** Cancels the jobs the renderer started (window closed or reloaded). */
  cancelRunningJobs(): void
  dispose(): void
}

export function registerIpcTransport(
  backend: ApiBackend,
  target: () => WebContents | null,
  isTrustedSender: (event: IpcMainInvokeEvent) => boolean,
): IpcTransport {
  const jobs = new Set<string>()
  for (const method of API_METHODS) {
    ipcMain.handle(ipcMethodChannel(method), async (event, raw: unknown): Promise<ApiOutcome<unknown>> => {
      if (!isTrustedSender(event)) return { ok: false, error: { name: 'Forbidden', message: 'call from an untrusted frame' } }
      let jobId: string | undefined
      try {
        const params = parseApiParams(method, raw)
        jobId = method !== 'cancelJob' && 'jobId' in params ? params.jobId : undefined
        if (jobId !== undefined) jobs.add(jobId)
        return { ok: true, result: await callBackend(backend, method, params) }
      } catch (err) {
        return { ok: false, error: toApiError(err) }
      } finally {
        if (jobId !== undefined) jobs.delete(jobId)
      }
    })
  }
  const unsubscribe = backend.onEvent((event: ApiEvent) => {
    const wc = target()
    if (wc && !wc.isDestroyed()) wc.send(IPC_EVENT_CHANNEL, event)
  })
  return {
    cancelRunningJobs() {
      for (const jobId of jobs) void backend.cancelJob({ jobId }).catch(() => {})
    },
    dispose() {
      unsubscribe()
      for (const method of API_METHODS) ipcMain.removeHandler(ipcMethodChannel(method))
    },
  }
}
