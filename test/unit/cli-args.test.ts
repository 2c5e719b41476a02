/**
 * The command lines of every entry point, all over node:util parseArgs: the shared wrapper
 * (worker/cli/args.ts), the browser host's (main/browser/serve-args.ts), `npm start`'s
 * (scripts/start-args.mjs) and the desktop app's model argument (main/model-argument.ts).
 * The regression: `npm start -- --port 8080` in desktop mode opened a model named "8080".
 */
import { resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseServeArgs } from '../../main/browser/serve-args'
import { modelArgument } from '../../main/model-argument'
import { browserArgs, desktopArgs, parseStartArgs } from '../../scripts/start-args.mjs'
import { intFlag, parseArgs, parseCommandLine, UsageError } from '../../worker/cli/args'

const usage = (f: () => unknown): string => {
  try {
    f()
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError)
    return (err as Error).message
  }
  return 'accepted'
}

describe('the shared parser', () => {
  const cli = (argv: string[]) => parseArgs(argv, new Set(['json', 'kld']), new Set(['ctx', 'prompt', 'seed']))

  it('reads a command, positionals, --flag, --key value and --key=value', () => {
    const a = cli(['eval', 'model', '--ctx', '128', '--json', '--seed=7'])
    expect(a.command).toBe('eval')
    expect(a.positionals).toEqual(['model'])
    expect([...a.flags]).toEqual([
      ['ctx', '128'],
      ['json', true],
      ['seed', '7'],
    ])
    expect(intFlag(a, 'ctx', 256, 2)).toBe(128)
    expect(intFlag(a, 'missing', 256, 2)).toBe(256)
  })

  it('takes a value that starts with a dash for the option before it, as the CLI always did', () => {
    const a = cli(['generate', 'm', '--prompt', '- a list item', '--seed', '-3'])
    expect(a.flags.get('prompt')).toBe('- a list item')
    expect(a.flags.get('seed')).toBe('-3')
    expect(usage(() => intFlag(cli(['eval', '--ctx', '-5']), 'ctx', 256, 2))).toBe("--ctx must be an integer ≥ 2, got '-5'")
  })

  it('everything after -- is positional', () => {
    const a = cli(['inspect', '--', '--json', '-x'])
    expect(a.positionals).toEqual(['--json', '-x'])
    expect(a.flags.size).toBe(0)
  })

  it('refuses unknown options, missing values and values on switches, in one short line', () => {
    expect(usage(() => cli(['inspect', 'm', '--bogus']))).toBe('unknown option --bogus')
    expect(usage(() => cli(['inspect', 'm', '-x']))).toBe('unknown option -x')
    expect(usage(() => cli(['eval', 'm', '--ctx']))).toBe('--ctx needs a value')
    expect(usage(() => cli(['eval', 'm', '--json=yes']))).toBe('--json takes no value')
  })

  it('types the values of an option table', () => {
    const { values, positionals } = parseCommandLine(['--only', 'a,b', '--only=c', '--quick', 'x'], {
      only: { type: 'string', multiple: true },
      quick: { type: 'boolean' },
    })
    expect(values.only).toEqual(['a,b', 'c'])
    expect(values.quick).toBe(true)
    expect(positionals).toEqual(['x'])
  })
})

describe('browser host command line', () => {
  it('reads the model and every option', () => {
    expect(parseServeArgs(['/m', '--port', '8080', '--state-dir', 's', '--cache-dir=c', '--threads', '3', '--exit-with-stdin'])).toEqual({
      model: '/m',
      port: 8080,
      stateDir: resolve('s'),
      cacheDir: resolve('c'),
      threads: 3,
      exitWithStdin: true,
    })
    expect(parseServeArgs([])).toEqual({ model: null, port: 0, stateDir: null, cacheDir: null, threads: undefined, exitWithStdin: false })
  })

  it('refuses what it cannot use', () => {
    expect(usage(() => parseServeArgs(['--port', '70000']))).toBe("--port must be 0..65535, got '70000'")
    expect(usage(() => parseServeArgs(['--port']))).toBe('--port needs a value')
    expect(usage(() => parseServeArgs(['--prot', '8080']))).toBe('unknown option --prot')
    expect(usage(() => parseServeArgs(['a', 'b']))).toBe('unexpected argument b (one model path at most)')
    expect(usage(() => parseServeArgs(['--threads', '0']))).toBe("--threads must be a positive integer, got '0'")
  })
})

describe('npm start', () => {
  it('desktop mode: --port is not passed to Electron, so 8080 is never taken for the model', () => {
    const start = parseStartArgs(['--port', '8080'])
    expect(start).toEqual({ model: null, browser: false, help: false, browserOptions: ['--port', '8080'] })
    const desktop = desktopArgs(start)
    expect(desktop.args).toEqual([])
    expect(desktop.notes).toEqual(['--port applies to browser mode only (npm start -- --browser --port …); ignored'])
    // And the desktop app itself would not take it for a model either, if it got it.
    expect(modelArgument(['--port', '8080'])).toBeNull()
  })

  it('desktop mode keeps the model; browser mode gets the model and its options', () => {
    const start = parseStartArgs(['/models/tiny', '--browser', '--port=8080', '--threads', '2'])
    expect(start.browser).toBe(true)
    expect(desktopArgs(start).args).toEqual(['/models/tiny'])
    expect(browserArgs(start)).toEqual(['/models/tiny', '--port', '8080', '--threads', '2'])
    expect(browserArgs(parseStartArgs([]))).toEqual([])
  })

  it('refuses unknown options and a second model', () => {
    expect(() => parseStartArgs(['--prot', '80'])).toThrow('unknown option --prot')
    expect(() => parseStartArgs(['--port'])).toThrow('--port needs a value')
    expect(() => parseStartArgs(['a', 'b'])).toThrow('unexpected argument b')
  })
})

describe('the desktop app’s model argument', () => {
  it('skips Chromium and Node switches and the app folder', () => {
    expect(modelArgument(['.', '/models/tiny'])).toBe('/models/tiny')
    expect(modelArgument(['--inspect=9229', '--no-sandbox', '.', '/m.gguf'])).toBe('/m.gguf')
    expect(modelArgument(['.'])).toBeNull()
    expect(modelArgument(['--threads', '4', '--state-dir', '/tmp/s', '/m'])).toBe('/m')
  })
})
