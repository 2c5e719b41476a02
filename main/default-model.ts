/**
 * Which model the app opens at start-up: a path given on the command line wins; otherwise
 * the embedded default model under resources/models/default/. When neither exists the UI
 * starts empty and shows the reason.
 */
import { readdir, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { DefaultModelInfo } from '../worker/api/contract'
import { formatByFileName } from '../worker/formats/registry'

export const EMBEDDED_MODEL_DIR = join('resources', 'models', 'default')

export async function resolveDefaultModel(appRoot: string, argumentPath: string | null): Promise<DefaultModelInfo> {
  if (argumentPath) {
    const abs = resolve(argumentPath)
    const exists = await stat(abs).then(() => true, () => false)
    // A missing path is still returned, so opening it shows the reader's readable error.
    return { path: abs, source: 'argument', message: exists ? null : `The model given on the command line does not exist: ${abs}` }
  }
  const embedded = join(appRoot, EMBEDDED_MODEL_DIR)
  const names = await readdir(embedded).catch(() => [] as string[])
  if (names.some((n) => formatByFileName(n) !== null)) {
    return { path: embedded, source: 'embedded', message: null }
  }
  return {
    path: null,
    source: 'none',
    message:
      `The embedded default model (${EMBEDDED_MODEL_DIR}/) is not available yet. ` +
      'Open a model by path, or start with `npm start -- /path/to/model`.',
  }
}
