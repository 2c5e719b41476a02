// Builds the AssemblyScript kernels: every worker/kernels/assembly/*.ts becomes
// worker/kernels/build/<name>.wasm (shared helpers, if any, go in subfolders of assembly/).
// Runs on `npm install` (postinstall) and `npm run build:wasm`. A kernel is rebuilt only when
// its output is older than any AssemblyScript source or this script; `--force` rebuilds all.
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const srcDir = join(root, 'worker/kernels/assembly')
const outDir = join(root, 'worker/kernels/build')
const force = process.argv.includes('--force')
// In a postinstall a missing compiler must not fail `npm install`: the engine falls back to
// its TypeScript kernels. Run directly, it is an error.
const lenient = process.env.npm_lifecycle_event === 'postinstall'

function fail(message) {
  console.error(`build-wasm: ${message}`)
  process.exit(lenient ? 0 : 1)
}

function listSources(dir) {
  const out = []
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...listSources(p))
    else if (e.name.endsWith('.ts')) out.push(p)
  }
  return out
}

if (!existsSync(srcDir)) fail(`no kernel sources in ${relative(root, srcDir)}`)
const sources = listSources(srcDir)
const newestSource = Math.max(statSync(fileURLToPath(import.meta.url)).mtimeMs, ...sources.map((s) => statSync(s).mtimeMs))
const entries = readdirSync(srcDir).filter((n) => n.endsWith('.ts'))
const stale = entries.filter((name) => {
  const out = join(outDir, name.replace(/\.ts$/, '.wasm'))
  return force || !existsSync(out) || statSync(out).mtimeMs < newestSource
})

if (stale.length === 0) {
  console.log(`build-wasm: ${entries.length} kernel(s) up to date`)
  process.exit(0)
}

let asc
try {
  asc = (await import('assemblyscript/asc')).default
} catch (err) {
  fail(
    `the AssemblyScript compiler is not installed (${err.message.split('\n')[0]}). ` +
      'Install dev dependencies (`npm install`) and run `npm run build:wasm`; until then the TypeScript kernels are used.',
  )
}

mkdirSync(outDir, { recursive: true })
for (const name of stale) {
  const src = join(srcDir, name)
  const out = join(outDir, name.replace(/\.ts$/, '.wasm'))
  // Write under a temporary name: a concurrent reader never sees a half-written module.
  const tmp = `${out}.${process.pid}.tmp`
  const t0 = performance.now()
  const { error, stderr } = await asc.main([relative(root, src), '-O3', '--enable', 'simd', '--runtime', 'stub', '--noAssert', '-o', relative(root, tmp)], {
    stdout: process.stdout,
    stderr: process.stderr,
  })
  if (error) {
    rmSync(tmp, { force: true })
    fail(`compiling ${relative(root, src)} failed: ${error.message}\n${stderr.toString()}`)
  }
  renameSync(tmp, out)
  console.log(`build-wasm: ${relative(root, out)} (${statSync(out).size} bytes, ${Math.round(performance.now() - t0)} ms)`)
}
