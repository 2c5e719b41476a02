// Command line of `npm start` (scripts/start.mjs), apart so it can be tested without Electron:
// `[MODEL] [--browser] [--port N] [--state-dir DIR] [--cache-dir DIR] [--threads N]`.
// The desktop app takes only the model: browser-mode options are not passed to Electron, where
// a value like the 8080 of `--port 8080` would be taken for the model path.
import { parseArgs } from 'node:util'

/** Options of browser mode (main/browser/serve-args.ts), forwarded as given. */
const BROWSER_ONLY = ['port', 'state-dir', 'cache-dir', 'threads']

const OPTIONS = {
  browser: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  ...Object.fromEntries(BROWSER_ONLY.map((name) => [name, { type: 'string' }])),
}

export const START_USAGE = 'usage: npm start [-- MODEL] [--browser] [--port N] [--state-dir DIR] [--cache-dir DIR] [--threads N]'

export class StartUsageError extends Error {}

/** Parses `npm start`'s arguments; throws StartUsageError with one readable line. */
export function parseStartArgs(argv) {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true })
  } catch (err) {
    const option = /'(-[^' ]*)/.exec(err.message)?.[1] ?? '?'
    if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new StartUsageError(`unknown option ${option}`)
    if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      throw new StartUsageError(/does not take/.test(err.message) ? `${option} takes no value` : `${option} needs a value`)
    }
    throw err
  }
  const { values, positionals } = parsed
  if (positionals.length > 1) throw new StartUsageError(`unexpected argument ${positionals[1]} (one model path at most)`)
  const browserOptions = BROWSER_ONLY.filter((name) => values[name] !== undefined).flatMap((name) => [`--${name}`, values[name]])
  return { model: positionals[0] ?? null, browser: values.browser ?? false, help: values.help ?? false, browserOptions }
}

/** Arguments after the app folder for Electron, and notes about options it does not take. */
export function desktopArgs(start) {
  const notes = start.browserOptions.filter((a) => a.startsWith('--')).map((name) => `${name} applies to browser mode only (npm start -- --browser ${name} …); ignored`)
  return { args: start.model ? [start.model] : [], notes }
}

/** Arguments for main/browser/serve.ts. */
export function browserArgs(start) {
  return [...(start.model ? [start.model] : []), ...start.browserOptions]
}
