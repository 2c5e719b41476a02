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
import { parseServeArgs } from './serve-args'

async function main(): Promise<void> {
  const appRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)))
  const args = parseServeArgs(process.argv.slice(2))
  const stateDir = args.stateDir ?? defaultStateDir()
  const defaultModel = await resolveDefaultModel(appRoot, args.model)
  if (defaultModel.message) console.log(`Note: ${defaultModel.message}`)

  const staticDir = await ensureRendererBuilt(appRoot, (line) => console.log(line))
  // The engine runs on its own thread; this one only serves HTTP and the WebSocket.
  const engine = startEngineThread({
    statsThreads: args.threads ?? null,
    // One cache root for every cache (worker/io/private-dir.ts); made private (0700) on first use.
    cacheDir: args.cacheDir ?? join(defaultCacheDir(), 'stats'),
    recentFile: join(stateDir, 'recent-models.json'),
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
