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
 *
 * Robustness: one client, authenticated or not, can only ever lose its own connection. Every
 * socket has an 'error' handler (an EventEmitter 'error' without one is an uncaught exception
 * that ends the process): refused upgrades, accepted WebSockets (a bad frame makes `ws` close
 * that socket with 1002/1007/1009 and then emit 'error'), malformed HTTP and static-file
 * streams. Per connection, messages are capped at MAX_MESSAGE_BYTES, in-flight requests at
 * MAX_IN_FLIGHT_PER_CONNECTION, and unsent output at MAX_BUFFERED_BYTES (a client that stops
 * reading is disconnected rather than growing the host's memory).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { pipeline, type Duplex } from 'node:stream'
import { extname, join, normalize, resolve, sep } from 'node:path'
import { WebSocketServer, type WebSocket } from 'ws'
import type { ApiEvent, ApiWebSocketPath, ServerMessage } from '../../worker/api/contract'
import { dispatchRequest, type ApiBackend } from '../api-dispatcher'

export interface BrowserHostOptions {
  backend: ApiBackend
  /** 0 (default) picks a free port. */
  port?: number
  /** Per-launch secret; a random one by default. */
  token?: string
  /** Built renderer (index.html + assets), or null to serve no UI (tests of the API only). */
  staticDir: string | null
  /** Where host-side failures go (a failed accept, a response that could not be encoded); console.error by default. */
  log?: (line: string) => void
  /** Unsent output per client before it is dropped; MAX_BUFFERED_BYTES by default (tests lower it). */
  maxBufferedBytes?: number
}

export interface BrowserHost {
  /** The URL to open, token included. */
  url: string
  origin: string
  port: number
  token: string
  close(): Promise<void>
}

export const WS_PATH: ApiWebSocketPath = '/api/ws'
const HOST = '127.0.0.1'
/** Largest WebSocket message accepted; a bigger one closes the connection with 1009. */
export const MAX_MESSAGE_BYTES = 1 << 20
/**
 * Requests one connection may have running at once; more are answered with a BadRequest error
 * at once (cancelJob is always let through, so a client at its limit can still stop its jobs).
 * The UI keeps a handful in flight; a runaway loop in a page must not queue unbounded work.
 */
export const MAX_IN_FLIGHT_PER_CONNECTION = 64
/** Output queued for a client that does not read; past it the connection is dropped. */
export const MAX_BUFFERED_BYTES = 64 << 20

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
  const log = options.log ?? ((line: string) => console.error(line))
  const maxBuffered = options.maxBufferedBytes ?? MAX_BUFFERED_BYTES
  let origin = ''

  const server = createServer((req, res) => {
    handleHttp(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `internal error: ${(err as Error).message}`)
      else res.destroy()
    })
  })

  async function handleHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL
    try {
      url = new URL(req.url ?? '/', origin)
    } catch {
      return send(res, 400, 'text/plain; charset=utf-8', 'bad request target')
    }
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

  // Malformed HTTP, oversized headers, or a reset before a request was parsed. Without a
  // listener Node answers 400 itself; with one, that is up to us.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy()
    socket.on('error', () => socket.destroy())
    socket.once('finish', () => socket.destroy())
    socket.end('HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 11\r\n\r\nbad request')
  })

  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES })
  const sockets = new Set<WebSocket>()

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // Node's HTTP server detaches its own 'error' handler from a socket it hands to 'upgrade';
    // without this one, a client that resets a refused upgrade ends the process. It stays
    // attached after `ws` takes the socket over (ws adds its own; both only destroy it).
    socket.on('error', () => socket.destroy())
    let denied: [number, string] | null
    try {
      const url = new URL(req.url ?? '/', origin)
      denied = url.pathname !== WS_PATH ? [404, 'not found'] : checkAccess(req, { origin, token, requireOrigin: true, requireToken: true })
    } catch {
      denied = [400, 'bad request target']
    }
    if (denied) return refuseUpgrade(socket, denied[0], denied[1])
    wss.handleUpgrade(req, socket, head, (ws) => attach(ws))
  })

  function attach(ws: WebSocket): void {
    sockets.add(ws)
    // A protocol violation (bad opcode, unmasked frame, invalid UTF-8, message over the limit…):
    // `ws` has already sent the close frame with the right code and shuts this socket; the
    // 'error' event only reports it, and unhandled it would end the whole process. Terminating
    // here could drop the close frame before it is flushed.
    ws.on('error', () => {})
    // Jobs this connection started: cancelled when it goes away (tab closed, reload).
    const jobs = new Set<string>()
    let inFlight = 0
    ws.on('message', (data, isBinary) => {
      if (isBinary) return sendTo(ws, { kind: 'response', id: -1, ok: false, error: { name: 'BadRequest', message: 'binary messages are not part of the API' } })
      let raw: unknown
      try {
        raw = JSON.parse(data.toString())
      } catch {
        return sendTo(ws, { kind: 'response', id: -1, ok: false, error: { name: 'BadRequest', message: 'message is not JSON' } })
      }
      const rawId = (raw as { id?: unknown })?.id
      const jobId = (raw as { params?: { jobId?: unknown } })?.params?.jobId
      const method = (raw as { method?: unknown })?.method
      if (method !== 'cancelJob' && inFlight >= MAX_IN_FLIGHT_PER_CONNECTION) {
        const message = `too many requests in flight on this connection (the limit is ${MAX_IN_FLIGHT_PER_CONNECTION}); wait for some to finish`
        return sendTo(ws, { kind: 'response', id: typeof rawId === 'number' ? rawId : -1, ok: false, error: { name: 'BadRequest', message } })
      }
      const tracked = typeof jobId === 'string' && method !== 'cancelJob' ? jobId : null
      if (tracked) jobs.add(tracked)
      inFlight++
      dispatchRequest(options.backend, raw)
        .then((response) => sendTo(ws, { kind: 'response', ...response }))
        // dispatchRequest never rejects; this only keeps a future bug from becoming an
        // unhandled rejection, which ends a Node process.
        .catch((err: unknown) => log(`quantscope host: request failed outside the dispatcher: ${(err as Error)?.stack ?? String(err)}`))
        .finally(() => {
          inFlight--
          if (tracked) jobs.delete(tracked)
        })
    })
    ws.on('close', () => {
      sockets.delete(ws)
      for (const jobId of jobs) void options.backend.cancelJob({ jobId }).catch(() => {})
    })
  }

  function sendTo(ws: WebSocket, message: ServerMessage): void {
    if (ws.readyState !== ws.OPEN) return
    // Pongs need no check here: ws itself drops a client with 60 unsent automatic pongs.
    if (ws.bufferedAmount > maxBuffered) {
      log(`quantscope host: dropping a client that has ${ws.bufferedAmount} bytes unread`)
      return void ws.terminate()
    }
    let text: string
    try {
      text = JSON.stringify(message)
    } catch (err) {
      // A result JSON cannot encode (a BigInt, a cycle) is a host bug; the caller still gets
      // an answer for its id instead of waiting forever.
      log(`quantscope host: could not encode a ${message.kind}: ${(err as Error).message}`)
      if (message.kind !== 'response') return
      text = JSON.stringify({ kind: 'response', id: message.id, ok: false, error: { name: 'Error', message: `the result could not be encoded: ${(err as Error).message}` } } satisfies ServerMessage)
    }
    ws.send(text)
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
  // After listen, 'error' means a failed accept (EMFILE…): that one connection is lost, the
  // host goes on.
  server.on('error', (err) => log(`quantscope host: ${err.message}`))
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


/** Answers a refused upgrade on the raw socket and closes it once the answer is out. */
function refuseUpgrade(socket: Duplex, status: number, reason: string): void {
  const text = status === 400 ? 'Bad Request' : status === 401 ? 'Unauthorized' : status === 404 ? 'Not Found' : 'Forbidden'
  socket.once('finish', () => socket.destroy())
  socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(reason)}\r\n\r\n${reason}`)
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
  // pipeline, unlike pipe, handles errors on both ends: a file that fails mid-read (removed,
  // unreadable) or a client that goes away destroys this response only.
  pipeline(createReadStream(file), res, () => {})
}
