/**
 * Minimal argv parsing for the CLI: one command, positionals, `--flag`, `--key value` and
 * `--key=value`. Unknown flags are an error, so a typo never silently changes a result.
 */
export interface ParsedArgs {
  command: string | null
  positionals: string[]
  flags: Map<string, string | true>
}

export class UsageError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UsageError'
  }
}

export function parseArgs(argv: string[], booleanFlags: ReadonlySet<string>, valueFlags: ReadonlySet<string>): ParsedArgs {
  const positionals: string[] = []
  const flags = new Map<string, string | true>()
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--') {
      positionals.push(...argv.slice(i + 1))
      break
    }
    if (!a.startsWith('--')) {
      positionals.push(a)
      continue
    }
    const eq = a.indexOf('=')
    const key = eq >= 0 ? a.slice(2, eq) : a.slice(2)
    if (booleanFlags.has(key)) {
      if (eq >= 0) throw new UsageError(`--${key} takes no value`)
      flags.set(key, true)
    } else if (valueFlags.has(key)) {
      const value = eq >= 0 ? a.slice(eq + 1) : argv[++i]
      if (value === undefined) throw new UsageError(`--${key} needs a value`)
      flags.set(key, value)
    } else {
      throw new UsageError(`unknown option --${key}`)
    }
  }
  const command = positionals.shift() ?? null
  return { command, positionals, flags }
}

export function intFlag(args: ParsedArgs, key: string, fallback: number, min = 1): number {
  const v = args.flags.get(key)
  if (v === undefined) return fallback
  const n = Number(v)
  if (v === true || !Number.isInteger(n) || n < min) throw new UsageError(`--${key} must be an integer ≥ ${min}, got '${String(v)}'`)
  return n
}
