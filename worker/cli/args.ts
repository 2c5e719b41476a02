/**
 * Command-line parsing for every entry point (CLI, browser host, bench), over Node's
 * `util.parseArgs`: `--flag`, `--key value`, `--key=value`, `--` ends the options. Unknown
 * options are an error, so a typo never silently changes a result; Node's errors are turned
 * into one short UsageError line ("unknown option --ctxx", "--ctx needs a value").
 */
import { parseArgs as nodeParseArgs, type ParseArgsConfig } from 'node:util'

export class UsageError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UsageError'
  }
}

export type OptionSpecs = NonNullable<ParseArgsConfig['options']>

/** What `parseCommandLine` returns for a given option table: typed values and positionals. */
export type CommandLine<O extends OptionSpecs> = ReturnType<typeof nodeParseArgs<{ options: O; allowPositionals: true; strict: true }>>

/**
 * Parses argv against an option table. A value that starts with '-' is still taken as the
 * value of the option before it (`--prompt "-x"`, `--seed -3`), as users expect and as the
 * CLI always did; Node alone would call that ambiguous.
 */
export function parseCommandLine<O extends OptionSpecs>(argv: readonly string[], options: O): CommandLine<O> {
  const args: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--') {
      args.push(...argv.slice(i))
      break
    }
    const key = a.startsWith('--') && !a.includes('=') ? a.slice(2) : null
    const next = argv[i + 1]
    if (key !== null && options[key]?.type === 'string' && next !== undefined && next.startsWith('-') && next !== '--') {
      args.push(`${a}=${next}`)
      i++
    } else {
      args.push(a)
    }
  }
  try {
    return nodeParseArgs({ args, options, allowPositionals: true, strict: true })
  } catch (err) {
    throw usageErrorOf(err)
  }
}

function usageErrorOf(err: unknown): Error {
  const e = err as { code?: string; message?: string }
  const option = /'(-[^' ]*)/.exec(e.message ?? '')?.[1] ?? '?'
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return new UsageError(`unknown option ${option}`)
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return new UsageError(/does not take/.test(e.message ?? '') ? `${option} takes no value` : `${option} needs a value`)
    default:
      return err as Error
  }
}

/** The CLI's parsed command line: the command, its positionals and its options by name. */
export interface ParsedArgs {
  command: string | null
  positionals: string[]
  flags: Map<string, string | true>
}

/** The CLI's form: the first positional is the command; flags by name for the subcommands. */
export function parseArgs(argv: string[], booleanFlags: ReadonlySet<string>, valueFlags: ReadonlySet<string>): ParsedArgs {
  const options: OptionSpecs = {}
  for (const key of booleanFlags) options[key] = { type: 'boolean' }
  for (const key of valueFlags) options[key] = { type: 'string' }
  const { values, positionals } = parseCommandLine(argv, options)
  const flags = new Map<string, string | true>()
  for (const [key, value] of Object.entries(values)) {
    if (value === true || typeof value === 'string') flags.set(key, value)
  }
  const rest = [...positionals]
  const command = rest.shift() ?? null
  return { command, positionals: rest, flags }
}

export function intFlag(args: ParsedArgs, key: string, fallback: number, min = 1): number {
  const v = args.flags.get(key)
  if (v === undefined) return fallback
  const n = Number(v)
  if (v === true || !Number.isInteger(n) || n < min) throw new UsageError(`--${key} must be an integer ≥ ${min}, got '${String(v)}'`)
  return n
}
