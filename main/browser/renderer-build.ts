/**
 * Browser mode serves the same renderer bundle as the desktop app (out/renderer). When it is
 * missing or older than any renderer source, it is rebuilt with Vite first, so `npm start`
 * and the end-to-end test always show the current UI. The build goes to a temporary folder
 * and is swapped in, so a host that is serving the old bundle never sees half a build.
 */
import { readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { rendererViteConfig } from './renderer-vite-config'

/** Sources the renderer bundle depends on besides renderer/ itself (type-only imports). */
const EXTRA_INPUTS = ['worker/api/contract.ts', 'worker/stats/stats-types.ts', 'worker/formats/contract.ts']

async function newestMtime(path: string): Promise<number> {
  const info = await stat(path).catch(() => null)
  if (!info) return 0
  if (!info.isDirectory()) return info.mtimeMs
  let newest = info.mtimeMs
  for (const name of await readdir(path)) newest = Math.max(newest, await newestMtime(join(path, name)))
  return newest
}

export async function rendererIsStale(appRoot: string): Promise<boolean> {
  const built = await stat(join(appRoot, 'out', 'renderer', 'index.html')).catch(() => null)
  if (!built) return true
  let newest = await newestMtime(join(appRoot, 'renderer'))
  for (const f of EXTRA_INPUTS) newest = Math.max(newest, await newestMtime(join(appRoot, f)))
  newest = Math.max(newest, await newestMtime(join(appRoot, 'main', 'browser', 'renderer-vite-config.ts')))
  return newest > built.mtimeMs
}

/** Returns out/renderer, building it first when missing or stale. */
export async function ensureRendererBuilt(appRoot: string, log: (line: string) => void = () => {}): Promise<string> {
  const outDir = join(appRoot, 'out', 'renderer')
  if (!(await rendererIsStale(appRoot))) return outDir
  log('Building the renderer (out/renderer is missing or older than its sources)…')
  const started = Date.now()
  const { build } = await import('vite')
  const tmp = join(appRoot, 'out', `renderer.tmp-${process.pid}`)
  const config = rendererViteConfig(appRoot)
  await build({
    ...config,
    configFile: false,
    logLevel: 'warn',
    build: { ...config.build, outDir: tmp, emptyOutDir: true },
  })
  await rm(outDir, { recursive: true, force: true })
  await rename(tmp, outDir)
  log(`Renderer built in ${((Date.now() - started) / 1000).toFixed(1)} s.`)
  return outDir
}
