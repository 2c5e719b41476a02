/**
 * Browser-mode entry: `node --import tsx main/browser/serve.ts [MODEL] [--port N]
 * [--state-dir DIR] [--cache-dir DIR] [--threads N]`. Starts the engine and the host, prints
 * the URL with its token, and shuts both down on SIGINT/SIGTERM or when stdin closes (so a
 * parent that dies never leaves the port taken).
 */
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { resolveDefaultModel } from '../default-model'
import { startEngineThread } from '../engine-thread'
import { defaultStateDir } from '../recent-models'
import { defaultCacheDir } from '../../worker/io/private-dir'
import { startBrowserHost } from './host'
import { ensureRendererBuilt } from './renderer-build'

interface ServeArgs {
  model: string | null
  port: number
  stateDir: string
  cacheDir: string | null
  threads: number | undefined
  exitWithStdin: boolean
}

function parseArgs(argv: string[]): ServeArgs {
  const args: ServeArgs = { model: null, port: 0, stateDir: defaultStateDir(), cacheDir: null, threads: undefined, exitWithStdin: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    const value = (): string => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      return v
    }
    if (a === '--port') args.port = Number(value())
    else if (a === '--state-dir') args.stateDir = resolve(value())
    else if (a === '--cache-dir') args.cacheDir = resolve(value())
    else if (a === '--threads') args.threads = Number(value())
    else if (a === '--exit-with-stdin') args.exitWithStdin = true
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`)
    else if (args.model === null) args.model = a
    else throw new Error(`unexpected argument ${a} (one model path at most)`)
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) throw new Error('--port must be 0..65535')
  return args
}

async function main(): Promise<void> {
  const appRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)))
  const args = parseArgs(process.argv.slice(2))
  const defaultModel = await resolveDefaultModel(appRoot, args.model)
  if (defaultModel.message) console.log(`Note: ${defaultModel.message}`)

  const staticDir = await ensureRendererBuilt(appRoot, (line) => console.log(line))
  // The engine runs on its own thread; this one only serves HTTP and the WebSocket.
  const engine = startEngineThread({
    statsThreads: args.threads ?? null,
    // One cache root for every cache (worker/io/private-dir.ts); made private (0700) on first use.
    cacheDir: args.cacheDir ?? join(defaultCacheDir(), 'stats'),
    recentFile: join(args.stateDir, 'recent-models.json'),
    defaultModel,
  })
  const host = await startBrowserHost({ backend: engine, port: args.port, staticDir })

  console.log(`Quantscope (browser mode) is running. Open this URL in a browser:\n\n  ${host.url}\n`)
  if (defaultModel.path) console.log(`Start-up model: ${defaultModel.path}`)
  // One machine-readable line for scripts and tests.
  console.log(`QUANTSCOPE_URL=${host.url}`)

  let closing = false
  const shutdown = async (code: number): Promise<void> => {
    if (closing) return
    closing = true
    await host.close().catch(() => {})
    await engine.close().catch(() => {})
    process.exit(code)
  }
  process.on('SIGINT', () => void shutdown(0))
  process.on('SIGTERM', () => void shutdown(0))
  if (args.exitWithStdin) {
    process.stdin.on('end', () => void shutdown(0))
    process.stdin.on('close', () => void shutdown(0))
    process.stdin.resume()
  }
}

main().catch((err: unknown) => {
  console.error(`quantscope: ${(err as Error).message}`)
  process.exit(1)
})
