/**
 * Starts the browser-mode host as a child process (the way `npm start` does) and stops it.
 * The host is told to exit when its stdin closes, so even a crashed test run leaves no
 * orphan holding a port.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { resolve } from 'node:path'

export interface HostProcess {
  url: string
  origin: string
  token: string
  port: number
  output(): string
  stop(): Promise<void>
}

const APP_ROOT = resolve(import.meta.dirname, '..', '..')

export async function startHostProcess(args: string[], timeoutMs = 150_000): Promise<HostProcess> {
  const child: ChildProcessWithoutNullStreams = spawn(
    process.execPath,
    ['--import', 'tsx', resolve(APP_ROOT, 'main', 'browser', 'serve.ts'), '--port', '0', '--exit-with-stdin', ...args],
    { cwd: APP_ROOT, stdio: 'pipe', env: { ...process.env, FORCE_COLOR: '0' } },
  )
  let output = ''
  child.stdout.on('data', (c: Buffer) => (output += c.toString()))
  child.stderr.on('data', (c: Buffer) => (output += c.toString()))

  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise<void>((r) => child.once('exit', () => r()))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  }

  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`host did not start within ${timeoutMs} ms:\n${output}`)), timeoutMs)
    const check = (): void => {
      const m = /QUANTSCOPE_URL=(\S+)/.exec(output)
      if (m) {
        clearTimeout(timer)
        resolveUrl(m[1]!)
      }
    }
    child.stdout.on('data', check)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`host exited with ${code} before it was ready:\n${output}`))
    })
  }).catch(async (err: unknown) => {
    await stop()
    throw err
  })

  const parsed = new URL(url)
  return {
    url,
    origin: parsed.origin,
    token: parsed.searchParams.get('token') ?? '',
    port: Number(parsed.port),
    output: () => output,
    stop,
  }
}
