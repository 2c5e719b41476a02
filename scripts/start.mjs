#!/usr/bin/env node
// `npm start [-- MODEL] [--browser] [--port N] [--state-dir DIR] [--cache-dir DIR] [--threads N]`
//
// Starts the desktop app when the Electron binary is available, otherwise browser mode (a
// local host serving the same UI; it prints the URL to open). With no MODEL the app opens
// the embedded default model under resources/models/default/.
import { spawn, spawnSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { browserArgs, desktopArgs, parseStartArgs, START_USAGE, StartUsageError } from './start-args.mjs'

const appRoot = join(dirname(fileURLToPath(import.meta.url)), '..')
let start
try {
  start = parseStartArgs(process.argv.slice(2))
} catch (err) {
  if (!(err instanceof StartUsageError)) throw err
  console.error(`error: ${err.message}\n${START_USAGE}`)
  process.exit(2)
}
if (start.help) {
  console.log(START_USAGE)
  process.exit(0)
}
const forceBrowser = start.browser || process.env.QUANTSCOPE_BROWSER === '1'

/**
 * Path of the Electron binary, or null. `require('electron')` tries to download a missing
 * binary and throws when it cannot; probing in a child keeps that noise (and any slow
 * download) out of this process.
 */
function electronBinary() {
  const probe = spawnSync(process.execPath, ['-e', "process.stdout.write(require('electron'))"], {
    cwd: appRoot,
    encoding: 'utf8',
    timeout: 60_000,
  })
  return probe.status === 0 && probe.stdout ? probe.stdout : null
}

function run(command, commandArgs) {
  const child = spawn(command, commandArgs, { cwd: appRoot, stdio: 'inherit' })
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)))
}

const electron = forceBrowser ? null : electronBinary()
if (electron) {
  console.log('Building the desktop app (electron-vite build)…')
  const build = spawnSync(process.execPath, [join(appRoot, 'node_modules', 'electron-vite', 'bin', 'electron-vite.js'), 'build'], {
    cwd: appRoot,
    stdio: 'inherit',
  })
  if (build.status !== 0) process.exit(build.status ?? 1)
  const desktop = desktopArgs(start)
  for (const note of desktop.notes) console.log(`Note: ${note}`)
  run(electron, [appRoot, ...desktop.args])
} else {
  if (!forceBrowser) console.log('Electron binary not available here: starting browser mode instead.')
  run(process.execPath, ['--import', 'tsx', join(appRoot, 'main', 'browser', 'serve.ts'), ...browserArgs(start)])
}
