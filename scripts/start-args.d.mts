// Types of start-args.mjs for the tests that import it.
export interface StartArgs {
  model: string | null
  browser: boolean
  help: boolean
  /** Browser-mode options as given, e.g. ['--port', '8080']. */
  browserOptions: string[]
}
export const START_USAGE: string
export class StartUsageError extends Error {}
export function parseStartArgs(argv: readonly string[]): StartArgs
export function desktopArgs(start: StartArgs): { args: string[]; notes: string[] }
export function browserArgs(start: StartArgs): string[]
