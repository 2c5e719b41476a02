/**
 * A WebSocket client built by hand over `node:net`, for sending frames that no well-behaved
 * library would send (bad opcodes, unmasked frames, absurd lengths) and for raw upgrade
 * requests that end in a TCP reset.
 */
import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'

export interface FrameSpec {
  opcode: number
  payload?: Buffer
  fin?: boolean
  rsv1?: boolean
  /** Clients must mask; false sends the payload in clear. */
  mask?: boolean
  /** Declared payload length when it should differ from the payload actually sent. */
  declaredLength?: bigint
}

/** Encodes one frame as RFC 6455 §5.2 lays it out. */
export function encodeFrame(spec: FrameSpec): Buffer {
  const payload = spec.payload ?? Buffer.alloc(0)
  const length = spec.declaredLength ?? BigInt(payload.length)
  const mask = spec.mask ?? true
  const first = ((spec.fin ?? true) ? 0x80 : 0) | (spec.rsv1 ? 0x40 : 0) | (spec.opcode & 0x0f)
  let header: Buffer
  if (length < 126n) {
    header = Buffer.from([first, Number(length)])
  } else if (length < 65536n) {
    header = Buffer.alloc(4)
    header[0] = first
    header[1] = 126
    header.writeUInt16BE(Number(length), 2)
  } else {
    header = Buffer.alloc(10)
    header[0] = first
    header[1] = 127
    header.writeBigUInt64BE(length, 2)
  }
  if (!mask) return Buffer.concat([header, payload])
  header[1]! |= 0x80
  const key = randomBytes(4)
  const masked = Buffer.alloc(payload.length)
  for (let i = 0; i < payload.length; i++) masked[i] = payload[i]! ^ key[i & 3]!
  return Buffer.concat([header, key, masked])
}

export interface UpgradeTarget {
  port: number
  path: string
  /** Omitted: no Origin header. */
  origin?: string
  host?: string
}

export function upgradeRequest(target: UpgradeTarget): string {
  const lines = [
    `GET ${target.path} HTTP/1.1`,
    `Host: ${target.host ?? `127.0.0.1:${target.port}`}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
    'Sec-WebSocket-Version: 13',
  ]
  if (target.origin !== undefined) lines.push(`Origin: ${target.origin}`)
  return lines.join('\r\n') + '\r\n\r\n'
}

/** Connects and resolves once the socket is open. */
export function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.off('error', reject)
      resolve(socket)
    })
    socket.once('error', reject)
  })
}

/** A raw connection that records every byte the server sends and when it hangs up. */
export class RawConnection {
  received = Buffer.alloc(0)
  /** Errors on our side (EPIPE after the server closed) are expected, not failures. */
  readonly errors: Error[] = []
  readonly closed: Promise<void>

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => (this.received = Buffer.concat([this.received, chunk])))
    socket.on('error', (err) => this.errors.push(err))
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
  }

  static async open(port: number): Promise<RawConnection> {
    return new RawConnection(await openSocket(port))
  }

  /** Sends an upgrade request and waits for the status line and headers. */
  async handshake(target: UpgradeTarget, timeoutMs = 5000): Promise<number> {
    this.socket.write(upgradeRequest(target))
    const headerEnd = await this.waitFor(() => {
      const i = this.received.indexOf('\r\n\r\n')
      return i < 0 ? null : i
    }, timeoutMs)
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(this.received.subarray(0, headerEnd).toString('latin1'))?.[1] ?? 0)
    this.received = this.received.subarray(headerEnd + 4)
    return status
  }

  /** Resolves with the first non-null value of `probe`, re-checked whenever data arrives. */
  waitFor<T>(probe: () => T | null, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const value = probe()
        if (value === null) return
        cleanup()
        resolve(value)
      }
      const onClose = (): void => {
        cleanup()
        reject(new Error(`connection closed; received ${this.received.length} bytes: ${this.received.toString('latin1').slice(0, 200)}`))
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`timed out after ${timeoutMs} ms; received ${this.received.toString('latin1').slice(0, 200)}`))
      }, timeoutMs)
      const cleanup = (): void => {
        clearTimeout(timer)
        this.socket.off('data', check)
        this.socket.off('close', onClose)
      }
      this.socket.on('data', check)
      this.socket.on('close', onClose)
      check()
    })
  }

  /**
   * Waits until the server hangs up and returns the status code of the close frame it sent
   * (null when it closed without one).
   */
  async closeCode(timeoutMs = 5000): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`server did not close the connection within ${timeoutMs} ms`)), timeoutMs)
    })
    await Promise.race([this.closed, timeout]).finally(() => clearTimeout(timer))
    for (const frame of decodeServerFrames(this.received)) {
      if (frame.opcode === 0x8) return frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : null
    }
    return null
  }
}

/** Splits unmasked server frames; a trailing partial frame is ignored. */
export function decodeServerFrames(data: Buffer): { opcode: number; payload: Buffer }[] {
  const frames: { opcode: number; payload: Buffer }[] = []
  let at = 0
  while (at + 2 <= data.length) {
    const opcode = data[at]! & 0x0f
    let length = data[at + 1]! & 0x7f
    let start = at + 2
    if (length === 126) {
      if (start + 2 > data.length) break
      length = data.readUInt16BE(start)
      start += 2
    } else if (length === 127) {
      if (start + 8 > data.length) break
      length = Number(data.readBigUInt64BE(start))
      start += 8
    }
    if (start + length > data.length) break
    frames.push({ opcode, payload: data.subarray(start, start + length) })
    at = start + length
  }
  return frames
}
