/**
 * The model path among the desktop app's own arguments (`electron APP PATH`, or the packaged
 * `app PATH`), apart from index.ts so it can be tested without Electron. Chromium and Node
 * switches may sit among them (`--inspect=9229`, `--no-sandbox`), so unknown options are
 * skipped rather than refused; browser-mode options that take a value are parsed as such, so
 * the 8080 of a stray `--port 8080` is never taken for the model.
 */
import { parseArgs } from 'node:util'

const VALUE_OPTIONS = ['port', 'state-dir', 'cache-dir', 'threads'] as const

export function modelArgument(args: readonly string[]): string | null {
  const { positionals } = parseArgs({
    args: [...args],
    options: Object.fromEntries(VALUE_OPTIONS.map((name) => [name, { type: 'string' as const }])),
    allowPositionals: true,
    strict: false,
  })
  return positionals.find((a) => a !== '.') ?? null
}
