/**
 * One misbehaving client must never take the browser-mode host down: bad WebSocket frames close
 * that connection only, refused upgrades that end in a TCP reset and malformed HTTP are
 * absorbed, and the host keeps answering HTTP and its other WebSocket clients.
 *
 * In-process, vitest catches an uncaught exception and keeps the host object alive, so a crash
 * would go unnoticed by a plain "does it still answer" check. These tests therefore also record
 * uncaught exceptions and unhandled rejections and fail on any; the last block runs the real
 * host as a child process, where a crash ends the process.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { mkdtemp, mkdir, rm, symlink, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import type { ServerMessage } from '../../worker/api/contract'
import { MAX_IN_FLIGHT_PER_CONNECTION, startBrowserHost, WS_PATH, type BrowserHost } from '../../main/browser/host'
import { startHostProcess, type HostProcess } from '../helpers/browser-host-process'
import { FakeBackend } from '../helpers/fake-api-backend'
import { encodeFrame, openSocket, RawConnection, upgradeRequest, type FrameSpec } from '../helpers/raw-websocket'

const MIB = 1 << 20
/** Lowered from the default so the test needs only tens of MiB of events. */
const SLOW_CLIENT_LIMIT = 2 * MIB

interface Target {
  port: number
  origin: string
  token: string
}

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

function wsUrl(t: Target): string {
  return `ws://127.0.0.1:${t.port}${WS_PATH}?token=${encodeURIComponent(t.token)}`
}

function openClient(t: Target): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(t), { origin: t.origin })
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

function call(ws: WebSocket, payload: { id: number; method: string; params: unknown }, timeoutMs = 5000): Promise<ServerMessage> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no response to id ${payload.id} within ${timeoutMs} ms`)), timeoutMs)
    const onMessage = (data: WebSocket.RawData): void => {
      const msg = JSON.parse(data.toString()) as ServerMessage
      if (msg.kind === 'response' && msg.id === payload.id) {
        clearTimeout(timer)
        ws.off('message', onMessage)
        resolve(msg)
      }
    }
    ws.on('message', onMessage)
    ws.send(JSON.stringify(payload))
  })
}

let nextId = 1000

/**
 * The host answers HTTP, a fresh WebSocket client, and (if given) a client connected before the
 * attack. `answerOk: false` only asks for a response to the request's id, ok or not (the real
 * engine behind the child process may refuse a call for reasons of its own).
 */
async function expectHealthy(t: Target, bystander?: WebSocket, answerOk = true): Promise<void> {
  const answer = answerOk ? { ok: true } : {}
  const info = await httpGet(`${t.origin}/api/info?token=${encodeURIComponent(t.token)}`)
  expect(info.status).toBe(200)
  expect(JSON.parse(info.body)).toMatchObject({ app: 'quantscope', mode: 'browser' })
  const fresh = await openClient(t)
  try {
    const id = nextId++
    expect(await call(fresh, { id, method: 'listRecent', params: {} })).toMatchObject({ kind: 'response', id, ...answer })
  } finally {
    fresh.close()
  }
  if (bystander) {
    expect(bystander.readyState).toBe(WebSocket.OPEN)
    const id = nextId++
    expect(await call(bystander, { id, method: 'listRecent', params: {} })).toMatchObject({ kind: 'response', id, ...answer })
  }
}

/** An authenticated raw connection, upgrade done. */
async function authenticatedRaw(t: Target): Promise<RawConnection> {
  const conn = await RawConnection.open(t.port)
  const status = await conn.handshake({ port: t.port, path: `${WS_PATH}?token=${encodeURIComponent(t.token)}`, origin: t.origin })
  expect(status).toBe(101)
  return conn
}

function closeFrame(code: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(code)
  return b
}

/** Each frame is invalid by RFC 6455; the code is the one `ws` closes with (§7.4.1). */
const BAD_FRAMES: { name: string; frame: FrameSpec; code: number }[] = [
  { name: 'a text message over the 1 MiB limit', frame: { opcode: 0x1, payload: Buffer.alloc(MIB + 1, 0x61) }, code: 1009 },
  { name: 'invalid UTF-8 in a text frame', frame: { opcode: 0x1, payload: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]) }, code: 1007 },
  { name: 'a reserved opcode (0x3)', frame: { opcode: 0x3, payload: Buffer.from('x') }, code: 1002 },
  { name: 'RSV1 set with no extension negotiated', frame: { opcode: 0x1, rsv1: true, payload: Buffer.from('{}') }, code: 1002 },
  { name: 'an unmasked client frame', frame: { opcode: 0x1, mask: false, payload: Buffer.from('{}') }, code: 1002 },
  { name: 'a close frame with code 999', frame: { opcode: 0x8, payload: closeFrame(999) }, code: 1002 },
  { name: 'a fragmented ping (FIN=0 control frame)', frame: { opcode: 0x9, fin: false, payload: Buffer.from('p') }, code: 1002 },
  { name: 'a declared length of 2^63', frame: { opcode: 0x2, declaredLength: 2n ** 63n }, code: 1009 },
]

describe('browser host: one bad client cannot take it down', () => {
  let dir: string
  let backend: FakeBackend
  let host: BrowserHost
  let target: Target
  let bystander: WebSocket
  const logged: string[] = []
  const uncaught: unknown[] = []
  const record = (err: unknown): void => void uncaught.push(err)

  beforeAll(async () => {
    process.on('uncaughtException', record)
    process.on('unhandledRejection', record)
    dir = await mkdtemp(join(tmpdir(), 'qs-host-robust-'))
    await mkdir(join(dir, 'app'))
    await writeFile(join(dir, 'app', 'index.html'), '<!doctype html><p>quantscope</p>')
    backend = new FakeBackend()
    host = await startBrowserHost({ backend, staticDir: join(dir, 'app'), maxBufferedBytes: SLOW_CLIENT_LIMIT, log: (l) => logged.push(l) })
    target = { port: host.port, origin: host.origin, token: host.token }
    bystander = await openClient(target)
  })

  afterEach(() => {
    // A listener of ours on 'uncaughtException' keeps vitest's own report, so a failure here
    // comes with the stack trace of what escaped.
    const escaped = uncaught.splice(0)
    expect(escaped.map((e) => String((e as Error)?.stack ?? e))).toEqual([])
  })

  afterAll(async () => {
    bystander?.terminate()
    await host?.close()
    await rm(dir, { recursive: true, force: true })
    process.off('uncaughtException', record)
    process.off('unhandledRejection', record)
  })

  it.each(BAD_FRAMES)('$name closes that connection only (close code $code)', async ({ frame, code }) => {
    const conn = await authenticatedRaw(target)
    conn.socket.write(encodeFrame(frame))
    expect(await conn.closeCode()).toBe(code)
    await expectHealthy(target, bystander)
  })

  it('a bad frame right after a valid request still closes only that connection', async () => {
    const conn = await authenticatedRaw(target)
    const request = Buffer.from(JSON.stringify({ id: 1, method: 'listRecent', params: {} }))
    conn.socket.write(Buffer.concat([encodeFrame({ opcode: 0x1, payload: request }), encodeFrame({ opcode: 0x3 })]))
    expect(await conn.closeCode()).toBe(1002)
    await expectHealthy(target, bystander)
  })

  const REFUSALS: { name: string; path: (t: Target) => string; origin: (t: Target) => string | undefined; status: number }[] = [
    { name: 'no token', path: () => WS_PATH, origin: (t) => t.origin, status: 401 },
    { name: 'a wrong path', path: (t) => `/not-the-api?token=${encodeURIComponent(t.token)}`, origin: (t) => t.origin, status: 404 },
    { name: 'a foreign Origin', path: (t) => `${WS_PATH}?token=${encodeURIComponent(t.token)}`, origin: () => 'http://evil.example', status: 403 },
  ]

  it.each(REFUSALS)('a refused upgrade ($name) answered, then reset by the client, leaves the host up', async ({ path, origin, status }) => {
    const conn = await RawConnection.open(target.port)
    expect(await conn.handshake({ port: target.port, path: path(target), origin: origin(target) })).toBe(status)
    conn.socket.resetAndDestroy()
    await conn.closed
    // The reset reaches the host's half-open socket a moment later.
    await new Promise((r) => setTimeout(r, 100))
    await expectHealthy(target, bystander)
  })

  it.each(REFUSALS)('a refused upgrade ($name) reset right after it was written leaves the host up', async ({ path, origin }) => {
    const socket = await openSocket(target.port)
    socket.on('error', () => {})
    socket.write(upgradeRequest({ port: target.port, path: path(target), origin: origin(target) }))
    socket.resetAndDestroy()
    await new Promise((r) => setTimeout(r, 100))
    await expectHealthy(target, bystander)
  })

  it('an upgrade request whose target is not a URL is refused with 400', async () => {
    const conn = await RawConnection.open(target.port)
    expect(await conn.handshake({ port: target.port, path: 'http://[' , origin: target.origin })).toBe(400)
    await expectHealthy(target, bystander)
  })

  it('a plain request whose target is not a URL gets 400', async () => {
    const conn = await RawConnection.open(target.port)
    conn.socket.write(`GET http://[ HTTP/1.1\r\nHost: 127.0.0.1:${target.port}\r\nConnection: close\r\n\r\n`)
    await conn.closed
    expect(conn.received.toString('latin1')).toMatch(/^HTTP\/1\.1 400 [^]*\r\n\r\n([0-9a-f]+\r\n)?bad request target/)
    await expectHealthy(target, bystander)
  })

  it('an authenticated upgrade with a bad WebSocket version is refused by ws, then reset, and the host stays up', async () => {
    const conn = await RawConnection.open(target.port)
    const request = upgradeRequest({ port: target.port, path: `${WS_PATH}?token=${encodeURIComponent(target.token)}`, origin: target.origin })
    conn.socket.write(request.replace('Sec-WebSocket-Version: 13', 'Sec-WebSocket-Version: 99'))
    await conn.waitFor(() => (conn.received.includes('\r\n\r\n') ? true : null), 5000).catch(() => {})
    expect(conn.received.toString('latin1')).toMatch(/^HTTP\/1\.1 (400|426) /)
    conn.socket.resetAndDestroy()
    await new Promise((r) => setTimeout(r, 100))
    await expectHealthy(target, bystander)
  })

  it('malformed HTTP gets 400 and the connection closed', async () => {
    const conn = await RawConnection.open(target.port)
    conn.socket.write('GARBAGE NOT HTTP\r\n\r\n')
    await conn.closed
    expect(conn.received.toString('latin1')).toMatch(/^HTTP\/1\.1 400 /)
    await expectHealthy(target, bystander)
  })

  it.runIf(process.platform === 'linux')('a static file that fails while being read ends that response only', async () => {
    // stat() calls /proc/self/mem a regular file, but reading it at offset 0 fails with EIO.
    await symlink('/proc/self/mem', join(dir, 'app', 'broken.js'))
    await expect(httpGet(`${host.origin}/broken.js`)).rejects.toThrow()
    await expectHealthy(target, bystander)
  })

  it('drops a client that stops reading once its unsent output passes the limit, and serves the others', async () => {
    const slow = await authenticatedRaw(target)
    slow.socket.pause()
    // Events go to every client; the bystander reads them, the paused one does not.
    let bystanderBytes = 0
    const count = (data: WebSocket.RawData): void => void (bystanderBytes += (data as Buffer).length)
    bystander.on('message', count)
    const jobId = 'j'.repeat(64 * 1024)
    let emitted = 0
    const dropped = (): boolean => logged.some((l) => /dropping a client/.test(l))
    try {
      // Kernel socket buffers on loopback absorb a few MiB before the host's own queue grows.
      while (!dropped() && emitted < 64 * MIB) {
        for (let i = 0; i < 16; i++) for (const l of backend.listeners) l({ type: 'job-progress', jobId, done: i, total: 16 })
        emitted += 16 * jobId.length
        await new Promise((r) => setImmediate(r))
      }
      expect(dropped()).toBe(true)
      // A paused socket does not see the hang-up; reading again, it must find the connection gone.
      slow.socket.resume()
      await slow.closeCode(5000)
    } finally {
      bystander.off('message', count)
      slow.socket.destroy()
    }
    // The reading client got (at least) everything sent before the slow one was dropped.
    expect(bystanderBytes).toBeGreaterThan(SLOW_CLIENT_LIMIT)
    await expectHealthy(target, bystander)
  })

  it('drops a client that floods pings without reading its pongs (ws bounds unsent pongs)', async () => {
    const slow = await authenticatedRaw(target)
    slow.socket.pause()
    const ping = encodeFrame({ opcode: 0x9, payload: Buffer.alloc(125, 0x70) })
    const burst = Buffer.concat(Array.from({ length: 256 }, () => ping))
    let sent = 0
    try {
      while (sent < 64 * MIB && !slow.socket.destroyed) {
        // Once the host drops us, our next write fails and the socket closes without a drain.
        if (!slow.socket.write(burst)) {
          await new Promise((r) => {
            slow.socket.once('drain', r)
            slow.socket.once('close', r)
          })
        }
        sent += burst.length
      }
      // Dropped long before 64 MiB of pings: the host stopped answering this one client.
      expect(slow.socket.destroyed).toBe(true)
      expect(sent).toBeLessThan(64 * MIB)
    } finally {
      slow.socket.destroy()
    }
    await expectHealthy(target, bystander)
  })

  it(`limits in-flight requests per connection to ${MAX_IN_FLIGHT_PER_CONNECTION} and frees slots as they finish`, async () => {
    const ws = await openClient(target)
    try {
      const pending: Promise<ServerMessage>[] = []
      for (let i = 0; i < MAX_IN_FLIGHT_PER_CONNECTION; i++) {
        pending.push(call(ws, { id: 5000 + i, method: 'tensorStats', params: { modelId: 'm', tensor: 't', jobId: `flood-${i}` } }))
      }
      const over = await call(ws, { id: 6000, method: 'listRecent', params: {} })
      expect(over).toMatchObject({ kind: 'response', id: 6000, ok: false, error: { name: 'BadRequest' } })
      expect((over as { error: { message: string } }).error.message).toContain(String(MAX_IN_FLIGHT_PER_CONNECTION))
      // Other connections are not affected by this one's full quota.
      await expectHealthy(target, bystander)
      // cancelJob is always let through, so a client at its limit can still stop its jobs.
      const cancelled = await call(ws, { id: 6001, method: 'cancelJob', params: { jobId: 'flood-0' } })
      expect(cancelled).toMatchObject({ ok: true, result: { cancelled: true } })
      expect(await pending[0]).toMatchObject({ id: 5000, ok: false, error: { cancelled: true } })
      expect(await call(ws, { id: 6002, method: 'listRecent', params: {} })).toMatchObject({ ok: true })
      for (let i = 1; i < MAX_IN_FLIGHT_PER_CONNECTION; i++) await call(ws, { id: 7000 + i, method: 'cancelJob', params: { jobId: `flood-${i}` } })
      for (const p of await Promise.all(pending)) expect(p).toMatchObject({ ok: false, error: { cancelled: true } })
    } finally {
      ws.close()
    }
  })
})

describe('browser host: a result JSON cannot encode', () => {
  it('is answered as an error for its id, and the connection stays usable', async () => {
    // A backend bug (a BigInt in a result) used to throw inside a promise callback: an
    // unhandled rejection, which ends a Node process.
    class BigIntBackend extends FakeBackend {
      override async listRecent(): Promise<never> {
        return [{ path: '/m', name: 'm', format: 'gguf', openedAt: 1n }] as never
      }
    }
    const logged: string[] = []
    const host = await startBrowserHost({ backend: new BigIntBackend(), staticDir: null, log: (l) => logged.push(l) })
    const t: Target = { port: host.port, origin: host.origin, token: host.token }
    const ws = await openClient(t)
    try {
      const answer = await call(ws, { id: 1, method: 'listRecent', params: {} })
      expect(answer).toMatchObject({ kind: 'response', id: 1, ok: false, error: { name: 'Error' } })
      expect((answer as { error: { message: string } }).error.message).toMatch(/could not be encoded.*BigInt/)
      expect(logged.some((l) => /could not encode a response/.test(l))).toBe(true)
      expect(await call(ws, { id: 2, method: 'defaultModelPath', params: {} })).toMatchObject({ id: 2, ok: true, result: { path: null } })
    } finally {
      ws.close()
      await host.close()
    }
  })
})

describe('browser host as a child process survives bad clients', () => {
  let dir: string
  let proc: HostProcess

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-host-proc-'))
    proc = await startHostProcess(['--state-dir', join(dir, 'state'), '--cache-dir', join(dir, 'cache')])
  }, 180_000)

  afterAll(async () => {
    await proc?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps running and answering after bad frames, a reset refused upgrade and malformed HTTP', async () => {
    const t: Target = { port: proc.port, origin: proc.origin, token: proc.token }
    const bystander = await openClient(t)
    try {
      await expectHealthy(t, bystander, false)
      for (const { frame, code } of BAD_FRAMES) {
        const conn = await authenticatedRaw(t)
        conn.socket.write(encodeFrame(frame))
        expect(await conn.closeCode()).toBe(code)
      }
      const refused = await RawConnection.open(t.port)
      expect(await refused.handshake({ port: t.port, path: WS_PATH, origin: t.origin })).toBe(401)
      refused.socket.resetAndDestroy()
      const resetEarly = await openSocket(t.port)
      resetEarly.on('error', () => {})
      resetEarly.write(upgradeRequest({ port: t.port, path: WS_PATH, origin: 'http://evil.example' }))
      resetEarly.resetAndDestroy()
      const garbage = await RawConnection.open(t.port)
      garbage.socket.write('GARBAGE NOT HTTP\r\n\r\n')
      await garbage.closed
      await new Promise((r) => setTimeout(r, 200))
      await expectHealthy(t, bystander, false)
      expect(proc.output()).not.toMatch(/Error|uncaught/i)
    } catch (err) {
      // A crashed host shows up as ECONNREFUSED; its own output says why.
      throw new Error(`${(err as Error).message}\nhost output:\n${proc.output()}`, { cause: err })
    } finally {
      bystander.terminate()
    }
  })
})
