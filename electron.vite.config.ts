/**
 * electron-vite build of the three sections from the project's top-level folders:
 * - main: main/index.ts, the engine thread (main/engine.worker.ts → engine.worker.js) and every
 *   engine worker (ENGINE_WORKERS) as `<name>.worker.js` beside it, where spawnEngineWorker
 *   looks for them; the WASM kernels are copied next to them;
 * - preload: main/preload.ts as CommonJS (sandboxed preloads cannot be ES modules);
 * - renderer: renderer/index.html with Vue (settings shared with browser mode).
 * Inputs are given with rollupOptions.input per section (build.lib.entry breaks ?modulePath).
 */
import { copyFile, mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { defineConfig } from 'electron-vite'
import type { Plugin } from 'vite'
import { rendererViteConfig } from './main/browser/renderer-vite-config'
import { ENGINE_MODULES, ENGINE_WORKERS } from './worker/jobs/spawn-worker'

// import.meta.url (not import.meta.dirname): electron-vite's config bundler rewrites it per file.
const root = fileURLToPath(new URL('.', import.meta.url))

const workerInputs = Object.fromEntries([
  ...Object.entries(ENGINE_WORKERS).map(([name, entry]) => [`${name}.worker`, join(root, 'worker', `${entry}.ts`)]),
  ...Object.entries(ENGINE_MODULES).map(([name, entry]) => [name, join(root, 'worker', `${entry}.ts`)]),
])

/** Copies worker/kernels/build/*.wasm next to the built workers. */
function copyWasmKernels(): Plugin {
  return {
    name: 'quantscope-copy-wasm-kernels',
    apply: 'build',
    async writeBundle(options) {
      const from = join(root, 'worker', 'kernels', 'build')
      const to = options.dir ?? join(root, 'out', 'main')
      const names = (await readdir(from).catch(() => [] as string[])).filter((n) => n.endsWith('.wasm'))
      if (names.length === 0) return
      await mkdir(to, { recursive: true })
      for (const n of names) await copyFile(join(from, n), join(to, n))
    },
  }
}

const renderer = rendererViteConfig(root)

export default defineConfig({
  main: {
    plugins: [copyWasmKernels()],
    build: {
      outDir: join(root, 'out', 'main'),
      rollupOptions: {
        input: { index: join(root, 'main', 'index.ts'), 'engine.worker': join(root, 'main', 'engine.worker.ts'), ...workerInputs },
        output: {
          format: 'es',
          entryFileNames: '[name].js',
          // Shared chunks stay in the same folder, so import.meta.url-relative worker and
          // WASM paths resolve the same from every chunk.
          chunkFileNames: '[name]-[hash].js',
        },
      },
    },
  },
  preload: {
    build: {
      outDir: join(root, 'out', 'preload'),
      rollupOptions: {
        input: { preload: join(root, 'main', 'preload.ts') },
        output: { format: 'cjs', entryFileNames: '[name].cjs' },
      },
    },
  },
  renderer: {
    root: renderer.root,
    base: renderer.base,
    plugins: renderer.plugins,
    build: {
      outDir: join(root, 'out', 'renderer'),
      minify: true,
      chunkSizeWarningLimit: renderer.build?.chunkSizeWarningLimit,
      rollupOptions: { input: join(root, 'renderer', 'index.html') },
    },
  },
})
