/**
 * Browser mode: the same API contract as the desktop app, over a WebSocket from a Node host.
 *
 * Threat model: any web page the user visits can try to reach a localhost port, and a DNS
 * rebinding attack can make a foreign page look same-host. So the host
 *  - binds 127.0.0.1 only;
 *  - accepts only Host: 127.0.0.1:<port> (defeats DNS rebinding);
 *  - requires the per-launch random token (in the URL it prints) on the WebSocket upgrade and
 *    on every HTTP route that returns data; static renderer files are public code, not data;
 *  - accepts a WebSocket only when Origin equals its own origin (a foreign page cannot send
 *    requests even if it guessed the token);
 *  - sends Referrer-Policy: no-referrer so the token never leaks through a Referer header.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import { extname, join, normalize, resolve, sep } from 'node:path'
import { WebSocketServer, type WebSocket } from 'ws'
import type { ApiEvent, ServerMessage } from '../../worker/api/contract'
import { dispatchRequest, type ApiBackend } from '../api-dispatcher'

export interface BrowserHostOptions {
  backend: ApiBackend
  /** 0 (default) picks a free port. */
  port?: number
  /** Per-launch secret; a random one by default. */
  token?: string
  /** Built renderer (index.html + assets), or null to serve no UI (tests of the API only). */
  staticDir: string | null
}

export interface BrowserHost {
  /** The URL to open, token included. */
  url: string
  origin: string
  port: number
  token: string
  close(): Promise<void>
}

export const WS_PATH = '/api/ws'
const HOST = '127.0.0.1'
const MAX_MESSAGE_BYTES = 1 << 20

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.wasm': 'application/wasm',
}

const SECURITY_HEADERS: Record<string, string> = {
  'Referrer-Policy': 'no-referrer',
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
}

export function tokenMatches(expected: string, given: string | null | undefined): boolean {
  if (typeof given !== 'string') return false
  const a = Buffer.from(expected)
  const b = Buffer.from(given)
  return a.length === b.length && timingSafeEqual(a, b)
}

/** Checks one request's Host, Origin and token. Returns null when allowed, else [status, reason]. */
export function checkAccess(
  req: Pick<IncomingMessage, 'headers' | 'url'>,
  expected: { origin: string; token: string; requireOrigin: boolean; requireToken: boolean },
): [number, string] | null {
  const own = new URL(expected.origin)
  if (req.headers.host !== own.host) return [403, 'wrong Host header']
  if (expected.requireOrigin && req.headers.origin !== expected.origin) return [403, 'foreign or missing Origin']
  if (expected.requireToken) {
    const url = new URL(req.url ?? '/', expected.origin)
    const fromQuery = url.searchParams.get('token')
    const auth = req.headers.authorization
    const fromHeader = auth?.startsWith('Bearer ') ? auth.slice(7) : null
    if (!tokenMatches(expected.token, fromQuery ?? fromHeader)) return [401, 'missing or wrong token']
  }
  return null
}

export async function startBrowserHost(options: BrowserHostOptions): Promise<BrowserHost> {
  const token = options.token ?? randomBytes(24).toString('base64url')
  const staticDir = options.staticDir ? resolve(options.staticDir) : null
  let origin = ''

  const server = createServer((req, res) => {
    handleHttp(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `internal error: ${(err as Error).message}`)
      else res.destroy()
    })
  })

  async function handleHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', origin)
    const isApi = url.pathname === '/api' || url.pathname.startsWith('/api/')
    const denied = checkAccess(req, { origin, token, requireOrigin: false, requireToken: isApi })
    if (denied) return send(res, denied[0], 'text/plain; charset=utf-8', denied[1])
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed')
    if (url.pathname === '/api/info') {
      return send(res, 200, 'application/json; charset=utf-8', JSON.stringify({ app: 'quantscope', mode: 'browser', ws: WS_PATH }))
    }
    if (isApi) return send(res, 404, 'text/plain; charset=utf-8', 'no such API route (the API is on the WebSocket)')
    if (!staticDir) return send(res, 404, 'text/plain; charset=utf-8', 'this host serves no UI')
    await serveStatic(staticDir, url.pathname, req, res)
  }

  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES })
  const sockets = new Set<WebSocket>()

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? '/', origin)
    const denied =
      url.pathname !== WS_PATH ? ([404, 'not found'] as [number, string]) : checkAccess(req, { origin, token, requireOrigin: true, requireToken: true })
    if (denied) {
      socket.end(`HTTP/1.1 ${denied[0]} ${denied[0] === 401 ? 'Unauthorized' : denied[0] === 404 ? 'Not Found' : 'Forbidden'}\r\n` +
        `Content-Type: text/plain\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(denied[1])}\r\n\r\n${denied[1]}`)
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => attach(ws))
  })

  function attach(ws: WebSocket): void {
    sockets.add(ws)
    // Jobs this connection started: cancelled when it goes away (tab closed, reload).
    const jobs = new Set<string>()
    ws.on('message', (data, isBinary) => {
      if (isBinary) return sendTo(ws, { kind: 'response', id: -1, ok: false, error: { name: 'BadRequest', message: 'binary messages are not part of the API' } })
      let raw: unknown
      try {
        raw = JSON.parse(data.toString())
      } catch {
        return sendTo(ws, { kind: 'response', id: -1, ok: false, error: { name: 'BadRequest', message: 'message is not JSON' } })
      }
      const jobId = (raw as { params?: { jobId?: unknown } })?.params?.jobId
      const method = (raw as { method?: unknown })?.method
      const tracked = typeof jobId === 'string' && method !== 'cancelJob' ? jobId : null
      if (tracked) jobs.add(tracked)
      void dispatchRequest(options.backend, raw).then((response) => {
        if (tracked) jobs.delete(tracked)
        sendTo(ws, { kind: 'response', ...response })
      })
    })
    ws.on('close', () => {
      sockets.delete(ws)
      for (const jobId of jobs) void options.backend.cancelJob({ jobId }).catch(() => {})
    })
  }

  const unsubscribe = options.backend.onEvent((event: ApiEvent) => {
    for (const ws of sockets) sendTo(ws, { kind: 'event', event })
  })

  await new Promise<void>((resolvePromise, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, HOST, () => {
      server.off('error', reject)
      resolvePromise()
    })
  })
  const port = (server.address() as AddressInfo).port
  origin = `http://${HOST}:${port}`

  return {
    url: `${origin}/?token=${encodeURIComponent(token)}`,
    origin,
    port,
    token,
    async close() {
      unsubscribe()
      for (const ws of sockets) ws.terminate()
      wss.close()
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
    },
  }
}

function sendTo(ws: WebSocket, message: ServerMessage): void {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(message))
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': type, 'Cache-Control': 'no-store' })
  res.end(body)
}

async function serveStatic(root: string, pathname: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let rel: string
  try {
    rel = decodeURIComponent(pathname)
  } catch {
    return send(res, 400, 'text/plain; charset=utf-8', 'bad path')
  }
  if (rel.includes('\0')) return send(res, 400, 'text/plain; charset=utf-8', 'bad path')
  if (rel === '/' || rel === '') rel = '/index.html'
  const file = normalize(join(root, rel))
  if (file !== root && !file.startsWith(root + sep)) return send(res, 403, 'text/plain; charset=utf-8', 'outside the app folder')
  const info = await stat(file).catch(() => null)
  if (!info?.isFile()) return send(res, 404, 'text/plain; charset=utf-8', 'not found')
  const isIndex = file.endsWith('index.html')
  res.writeHead(200, {
    ...SECURITY_HEADERS,
    'Content-Type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream',
    'Content-Length': info.size,
    // Hashed asset names never change content; index.html must always be fresh.
    'Cache-Control': isIndex ? 'no-store' : 'public, max-age=31536000, immutable',
  })
  if (req.method === 'HEAD') return void res.end()
  createReadStream(file).pipe(res)
}
