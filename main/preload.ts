/**
 * The only bridge between the sandboxed renderer and the app: `window.quantscope`, one typed
 * function per API method (each checks its arguments before anything crosses IPC), an event
 * subscription, the dropped-file path helper and the native open dialog. No ipcRenderer, no
 * Node, nothing else is exposed.
 */
import { contextBridge, ipcRenderer, webUtils, type IpcRendererEvent } from 'electron'
import type { ApiEvent, ApiMethod, ApiOutcome, QuantscopeBridge } from '../worker/api/contract'
import { API_METHODS, validateParams } from './api-validation'
import { IPC_CHOOSE_MODEL_PATH, IPC_EVENT_CHANNEL, ipcMethodChannel } from './ipc-channels'

function method(name: ApiMethod) {
  return async (params: unknown): Promise<ApiOutcome<unknown>> => {
    let clean: unknown
    try {
      clean = validateParams(name, params)
    } catch (err) {
      return { ok: false, error: { name: 'BadRequest', message: (err as Error).message } }
    }
    return ipcRenderer.invoke(ipcMethodChannel(name), clean) as Promise<ApiOutcome<unknown>>
  }
}

const methods = Object.fromEntries(API_METHODS.map((name) => [name, method(name)]))

const bridge = {
  ...methods,
  mode: 'electron',
  onEvent(listener: (event: ApiEvent) => void): () => void {
    if (typeof listener !== 'function') throw new TypeError('onEvent needs a function')
    const handler = (_e: IpcRendererEvent, event: ApiEvent): void => listener(event)
    ipcRenderer.on(IPC_EVENT_CHANNEL, handler)
    return () => void ipcRenderer.removeListener(IPC_EVENT_CHANNEL, handler)
  },
  pathForFile(file: File): string {
    if (!(file instanceof File)) return ''
    return webUtils.getPathForFile(file)
  },
  chooseModelPath(kind: 'file' | 'folder'): Promise<string | null> {
    if (kind !== 'file' && kind !== 'folder') return Promise.reject(new TypeError("kind must be 'file' or 'folder'"))
    return ipcRenderer.invoke(IPC_CHOOSE_MODEL_PATH, kind) as Promise<string | null>
  },
} as unknown as QuantscopeBridge

contextBridge.exposeInMainWorld('quantscope', bridge)
