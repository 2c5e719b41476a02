// Source-mode worker entry (CLI through tsx, vitest, browser-mode host): registers tsx in
// this worker thread, then loads the real TypeScript entry. Node 20 does not apply the
// parent's `--import tsx` loader hooks to a worker's own entry, hence this shim. Built
// (electron-vite) workers are plain JS and never come through here.
import { register } from 'tsx/esm/api'
import { workerData } from 'node:worker_threads'

register()
await import(workerData.__entry)
