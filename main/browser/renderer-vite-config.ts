/**
 * The renderer's Vite settings, shared by electron.vite.config.ts (desktop build) and the
 * browser-mode host (which rebuilds out/renderer when it is stale), so both serve one bundle.
 */
import { join } from 'node:path'
import vue from '@vitejs/plugin-vue'
import type { UserConfig } from 'vite'

export function rendererViteConfig(appRoot: string): UserConfig {
  return {
    root: join(appRoot, 'renderer'),
    // Relative asset URLs: the desktop app loads index.html from file://.
    base: './',
    plugins: [vue()],
    build: {
      outDir: join(appRoot, 'out', 'renderer'),
      emptyOutDir: true,
      chunkSizeWarningLimit: 1500,
      rollupOptions: { input: join(appRoot, 'renderer', 'index.html') },
    },
  }
}
