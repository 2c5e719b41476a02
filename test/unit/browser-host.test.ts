import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import type { ApiEvent, ServerMessage } from '../../worker/api/contract'
import { checkAccess, startBrowserHost, tokenMatches, WS_PATH, type BrowserHost } from '../../main/browser/host'
import { FakeBackend } from '../helpers/fake-api-backend'

function httpGet(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** Opens a WebSocket; resolves with it when open, or with the HTTP status that refused it. */
function connect(url: string, origin: string | undefined): Promise<{ ws: WebSocket } | { status: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, origin === undefined ? {} : { origin })
    ws.once('open', () => resolve({ ws }))
    ws.once('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0 })
      ws.terminate()
    })
    ws.once('error', (err) => reject(err))
  })
}

/** Sends one request and collects messages until its response arrives. */
function call(ws: WebSocket, payload: unknown, id: number): Promise<{ response: ServerMessage; events: ApiEvent[] }> {
  return new Promise((resolve) => {
    const events: ApiEvent[] = []
    const onMessage = (data: WebSocket.RawData): void => {
      const msg = JSON.parse(data.toString()) as ServerMessage
      if (msg.kind === 'event') events.push(msg.event)
      else if (msg.id === id) {
        ws.off('message', onMessage)
        resolve({ response: msg, events })
      }
    }
    ws.on('message', onMessage)
    ws.send(typeof payload === 'string' ? payload : JSON.stringify(payload))
  })
}

describe('browser host access checks', () => {
  let dir: string
  let backend: FakeBackend
  let host: BrowserHost

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-host-'))
    await mkdir(join(dir, 'app'))
    await writeFile(join(dir, 'app', 'index.html'), '<!doctype html><p>quantscope</p>')
    await writeFile(join(dir, 'secret.txt'), 'TOP SECRET')
    backend = new FakeBackend()
    host = await startBrowserHost({ backend, staticDir: join(dir, 'app') })
  })

  afterAll(async () => {
    await host?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('binds 127.0.0.1 with a long random token in the URL', () => {
    expect(host.origin).toBe(`http://127.0.0.1:${host.port}`)
    expect(host.token.length).toBeGreaterThanOrEqual(32)
    expect(host.url).toBe(`${host.origin}/?token=${encodeURIComponent(host.token)}`)
  })

  it('serves the renderer without a token, with no-referrer so the token cannot leak', async () => {
    const res = await httpGet(`${host.origin}/`)
    expect(res.status).toBe(200)
    expect(res.body).toContain('quantscope')
    expect(res.headers['referrer-policy']).toBe('no-referrer')
  })

  it('refuses paths that escape the app folder', async () => {
    // An encoded slash survives URL normalisation and decodes to '/../secret.txt'.
    const res = await httpGet(`${host.origin}/..%2fsecret.txt`)
    expect(res.status).toBe(403)
    expect(res.body).not.toContain('TOP SECRET')
    // Dot segments are resolved by the URL parser before the file lookup: not found inside.
    const dots = await httpGet(`${host.origin}/%2e%2e/secret.txt`)
    expect(dots.status).toBe(404)
  })

  it('requires the token on HTTP API routes', async () => {
    expect((await httpGet(`${host.origin}/api/info`)).status).toBe(401)
    expect((await httpGet(`${host.origin}/api/info?token=wrong`)).status).toBe(401)
    expect((await httpGet(`${host.origin}/api/info`, { Authorization: `Bearer ${host.token}` })).status).toBe(200)
    const ok = await httpGet(`${host.origin}/api/info?token=${encodeURIComponent(host.token)}`)
    expect(ok.status).toBe(200)
    expect(JSON.parse(ok.body)).toMatchObject({ app: 'quantscope', mode: 'browser' })
  })

  it('rejects a foreign Host header (DNS rebinding)', async () => {
    const res = await httpGet(`${host.origin}/api/info?token=${encodeURIComponent(host.token)}`, { Host: `evil.example:${host.port}` })
    expect(res.status).toBe(403)
  })

  it('rejects a WebSocket without the token or with a wrong one', async () => {
    const ws = `ws://127.0.0.1:${host.port}${WS_PATH}`
    expect(await connect(ws, host.origin)).toEqual({ status: 401 })
    expect(await connect(`${ws}?token=${'x'.repeat(host.token.length)}`, host.origin)).toEqual({ status: 401 })
  })

  it('rejects a WebSocket from a foreign or missing Origin even with the token', async () => {
    const url = `ws://127.0.0.1:${host.port}${WS_PATH}?token=${encodeURIComponent(host.token)}`
    expect(await connect(url, 'http://evil.example')).toEqual({ status: 403 })
    expect(await connect(url, `http://localhost:${host.port}`)).toEqual({ status: 403 })
    expect(await connect(url, undefined)).toEqual({ status: 403 })
  })

  it('answers calls on an authorised WebSocket and reports bad requests as errors', async () => {
    const r = await connect(`ws://127.0.0.1:${host.port}${WS_PATH}?token=${encodeURIComponent(host.token)}`, host.origin)
    if (!('ws' in r)) throw new Error(`refused with ${r.status}`)
    const ws = r.ws
    try {
      const recent = await call(ws, { id: 1, method: 'listRecent', params: {} }, 1)
      expect(recent.response).toMatchObject({ kind: 'response', id: 1, ok: true, result: [{ path: '/models/a' }] })

      const unknown = await call(ws, { id: 2, method: 'rmRf', params: {} }, 2)
      expect(unknown.response).toMatchObject({ ok: false, error: { name: 'BadRequest' } })

      const badParams = await call(ws, { id: 3, method: 'openModel', params: { path: 42 } }, 3)
      expect(badParams.response).toMatchObject({ ok: false, error: { name: 'BadRequest' } })

      const notJson = await call(ws, '{nope', -1)
      expect(notJson.response).toMatchObject({ ok: false, error: { name: 'BadRequest', message: 'message is not JSON' } })

      // A ModelFormatError keeps its file and problem across the wire.
      const bad = await call(ws, { id: 4, method: 'openModel', params: { path: '/x/bad.gguf' } }, 4)
      expect(bad.response).toMatchObject({ ok: false, error: { name: 'ModelFormatError', file: '/x/bad.gguf', problem: 'not a model' } })
    } finally {
      ws.close()
    }
  })

  it('streams job progress, cancels on request, and cancels jobs of a closed connection', async () => {
    const url = `ws://127.0.0.1:${host.port}${WS_PATH}?token=${encodeURIComponent(host.token)}`
    const r = await connect(url, host.origin)
    if (!('ws' in r)) throw new Error(`refused with ${r.status}`)
    const ws = r.ws
    const job = call(ws, { id: 10, method: 'tensorStats', params: { modelId: 'm1', tensor: 't', jobId: 'job-a' } }, 10)
    await new Promise((res) => setTimeout(res, 50))
    await call(ws, { id: 11, method: 'cancelJob', params: { jobId: 'job-a' } }, 11)
    const done = await job
    expect(done.events).toContainEqual({ type: 'job-progress', jobId: 'job-a', done: 1, total: 4 })
    expect(done.response).toMatchObject({ ok: false, error: { cancelled: true } })

    void call(ws, { id: 12, method: 'tensorStats', params: { modelId: 'm1', tensor: 't', jobId: 'job-b' } }, 12)
    await new Promise((res) => setTimeout(res, 50))
    ws.close()
    for (let i = 0; i < 50 && !backend.cancelled.includes('job-b'); i++) await new Promise((res) => setTimeout(res, 20))
    expect(backend.cancelled).toContain('job-b')
  })
})

describe('access helpers', () => {
  const expected = { origin: 'http://127.0.0.1:5000', token: 'abc123', requireOrigin: true, requireToken: true }
  const req = (headers: Record<string, string>, url = '/api/ws?token=abc123') => ({ headers, url })

  it('compares tokens exactly', () => {
    expect(tokenMatches('abc', 'abc')).toBe(true)
    expect(tokenMatches('abc', 'abd')).toBe(false)
    expect(tokenMatches('abc', 'abcd')).toBe(false)
    expect(tokenMatches('abc', null)).toBe(false)
  })

  it('checks host, origin and token in that order', () => {
    expect(checkAccess(req({ host: '127.0.0.1:5000', origin: 'http://127.0.0.1:5000' }), expected)).toBeNull()
    expect(checkAccess(req({ host: 'localhost:5000', origin: 'http://127.0.0.1:5000' }), expected)?.[0]).toBe(403)
    expect(checkAccess(req({ host: '127.0.0.1:5000', origin: 'null' }), expected)?.[0]).toBe(403)
    expect(checkAccess(req({ host: '127.0.0.1:5000', origin: 'http://127.0.0.1:5000' }, '/api/ws?token=abc12'), expected)?.[0]).toBe(401)
  })
})
