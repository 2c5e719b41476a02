/**
 * Browser-mode transport: the contract over a WebSocket to the local host. The per-launch
 * token comes in the page URL (?token=…); it is kept in sessionStorage and removed from the
 * address bar so it does not end up in screenshots or copied links. Reconnects after drops.
 */
import type { ApiEvent, ApiMethod, ApiParams, ApiResult, ApiWebSocketPath, ServerMessage } from '../../../worker/api/contract'
import { ApiCallError, type ApiClient, type ConnectionState } from './client'

const TOKEN_KEY = 'quantscope.token'
/** Typed by the contract, so host and UI cannot drift apart. */
const WS_PATH: ApiWebSocketPath = '/api/ws'

export function takeToken(): string | null {
  const url = new URL(window.location.href)
  const fromUrl = url.searchParams.get('token')
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl)
    url.searchParams.delete('token')
    window.history.replaceState(null, '', url.pathname + url.search + url.hash)
    return fromUrl
  }
  return sessionStorage.getItem(TOKEN_KEY)
}

interface Pending {
  resolve(value: unknown): void
  reject(err: Error): void
}

export function createWebSocketClient(token: string | null): ApiClient {
  const pending = new Map<number, Pending>()
  const eventListeners = new Set<(event: ApiEvent) => void>()
  const connectionListeners = new Set<(state: ConnectionState) => void>()
  const queue: string[] = []
  let nextId = 1
  let socket: WebSocket | null = null
  let state: ConnectionState = 'connecting'
  let everOpened = false
  let retryMs = 300

  const setState = (s: ConnectionState): void => {
    state = s
    for (const l of connectionListeners) l(s)
  }

  const connect = (): void => {
    if (!token) {
      setState('unauthorized')
      return
    }
    const proto = window.location.protocol === 'https:' ? 'wss:' : 'ws:'
    const ws = new WebSocket(`${proto}//${window.location.host}${WS_PATH}?token=${encodeURIComponent(token)}`)
    socket = ws
    setState('connecting')
    ws.onopen = () => {
      everOpened = true
      retryMs = 300
      setState('open')
      while (queue.length) ws.send(queue.shift()!)
    }
    ws.onmessage = (e) => {
      const msg = JSON.parse(String(e.data)) as ServerMessage
      if (msg.kind === 'event') {
        for (const l of eventListeners) l(msg.event)
        return
      }
      const p = pending.get(msg.id)
      if (!p) return
      pending.delete(msg.id)
      if (msg.ok) p.resolve(msg.result)
      else p.reject(new ApiCallError(msg.error))
    }
    ws.onclose = () => {
      socket = null
      for (const p of pending.values()) p.reject(new ApiCallError({ name: 'ConnectionLost', message: 'the connection to the Quantscope host was lost' }))
      pending.clear()
      // A refused first connection means a wrong or stale token: retrying cannot help.
      if (!everOpened) {
        queue.length = 0
        setState('unauthorized')
        return
      }
      setState('closed')
      setTimeout(connect, retryMs)
      retryMs = Math.min(retryMs * 2, 5000)
    }
  }
  connect()

  return {
    mode: 'browser',
    call<M extends ApiMethod>(method: M, params: ApiParams<M>): Promise<ApiResult<M>> {
      if (state === 'unauthorized') {
        return Promise.reject(
          new ApiCallError({ name: 'Unauthorized', message: 'this page has no valid access token: open the URL that `npm start` printed' }),
        )
      }
      const id = nextId++
      const text = JSON.stringify({ id, method, params })
      return new Promise<ApiResult<M>>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(text)
        else queue.push(text)
      })
    },
    onEvent(listener) {
      eventListeners.add(listener)
      return () => eventListeners.delete(listener)
    },
    onConnection(listener) {
      connectionListeners.add(listener)
      listener(state)
      return () => connectionListeners.delete(listener)
    },
  }
}
