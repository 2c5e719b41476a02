/**
 * The only bridge between the sandboxed renderer and the app: `window.quantscope`, one function
 * per API method (it forwards the call; the main process checks the parameters against the
 * API's schemas), an event subscription, the dropped-file path helper and the native open
 * dialog and the native save dialog (an export's destination). No ipcRenderer, no Node, nothing else is exposed. Kept tiny on purpose: no schema
 * library is bundled here.
 */
import { contextBridge, ipcRenderer, webUtils, type IpcRendererEvent } from 'electron'
import type { ApiEvent, ApiOutcome, QuantscopeBridge } from '../worker/api/contract'
import { API_METHOD_NAMES, type ApiMethodName } from '../worker/api/method-names'
import { IPC_CHOOSE_MODEL_PATH, IPC_CHOOSE_SAVE_PATH, IPC_EVENT_CHANNEL, ipcMethodChannel } from './ipc-channels'

function method(name: ApiMethodName) {
  return (params: unknown): Promise<ApiOutcome<unknown>> => ipcRenderer.invoke(ipcMethodChannel(name), params) as Promise<ApiOutcome<unknown>>
}

const methods = Object.fromEntries(API_METHOD_NAMES.map((name) => [name, method(name)]))

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
  chooseSavePath(defaultPath: string): Promise<string | null> {
    if (typeof defaultPath !== 'string') return Promise.reject(new TypeError('defaultPath must be a string'))
    return ipcRenderer.invoke(IPC_CHOOSE_SAVE_PATH, defaultPath) as Promise<string | null>
  },
} as unknown as QuantscopeBridge

contextBridge.exposeInMainWorld('quantscope', bridge)
