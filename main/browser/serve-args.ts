/**
 * Command line of the browser-mode entry (serve.ts):
 * `[MODEL] [--port N] [--state-dir DIR] [--cache-dir DIR] [--threads N] [--exit-with-stdin]`.
 * Apart from serve.ts so it can be tested without starting a host.
 */
import { resolve } from 'node:path'
import { parseCommandLine, UsageError } from '../../worker/cli/args'

export interface ServeArgs {
  model: string | null
  port: number
  /** null: the default state folder. */
  stateDir: string | null
  cacheDir: string | null
  threads: number | undefined
  exitWithStdin: boolean
}

export const SERVE_OPTIONS = {
  port: { type: 'string' },
  'state-dir': { type: 'string' },
  'cache-dir': { type: 'string' },
  threads: { type: 'string' },
  'exit-with-stdin': { type: 'boolean' },
} as const

export function parseServeArgs(argv: readonly string[]): ServeArgs {
  const { values, positionals } = parseCommandLine(argv, SERVE_OPTIONS)
  if (positionals.length > 1) throw new UsageError(`unexpected argument ${positionals[1]} (one model path at most)`)
  const port = values.port === undefined ? 0 : Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be 0..65535, got '${values.port}'`)
  const threads = values.threads === undefined ? undefined : Number(values.threads)
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) throw new UsageError(`--threads must be a positive integer, got '${values.threads}'`)
  return {
    model: positionals[0] ?? null,
    port,
    stateDir: values['state-dir'] === undefined ? null : resolve(values['state-dir']),
    cacheDir: values['cache-dir'] === undefined ? null : resolve(values['cache-dir']),
    threads,
    exitWithStdin: values['exit-with-stdin'] ?? false,
  }
}
