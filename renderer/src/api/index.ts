/** Picks the transport: the desktop preload when present, else the browser-mode WebSocket. */
import type { ApiClient } from './client'
import { createElectronClient } from './electron-client'
import { createWebSocketClient, takeToken } from './websocket-client'

export function createApiClient(): ApiClient {
  if (window.quantscope && window.quantscope.mode === 'electron') return createElectronClient(window.quantscope)
  return createWebSocketClient(takeToken())
}

export * from './client'
