/**
 * IPC channel names shared by the preload and the main process. Kept apart from both so the
 * sandboxed preload bundle pulls in no main-process code.
 */
import type { ApiMethod } from '../worker/api/contract'

export const IPC_EVENT_CHANNEL = 'quantscope:event'
export const IPC_CHOOSE_MODEL_PATH = 'quantscope:chooseModelPath'
export const IPC_CHOOSE_SAVE_PATH = 'quantscope:chooseSavePath'

export function ipcMethodChannel(method: ApiMethod): string {
  return `quantscope:api:${method}`
}
