#!/usr/bin/env node
// Every method of the PyTorch quant reference (test/fixtures/reference/quant-reference.json)
// through the CLI on the whole held-out text of the default model: perplexity, KL divergence
// and top-1 agreement against the unquantized model, exact size — next to the reference's
// perplexity. Prints the README's methods table (markdown) and writes the raw JSON lines to
// test-artifacts/quant-methods.jsonl.
//
//   node scripts/quant-methods-table.mjs [--backend native|wasm] [--only KEY,KEY]
import { spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, appendFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { values } = parseArgs({ options: { backend: { type: 'string', default: 'native' }, only: { type: 'string' } } })
const fixture = JSON.parse(readFileSync(join(root, 'test/fixtures/reference/quant-reference.json'), 'utf8'))
const only = values.only ? new Set(values.only.split(',')) : null
const out = join(root, 'test-artifacts', 'quant-methods.jsonl')
mkdirSync(dirname(out), { recursive: true })
writeFileSync(out, '')

function evalSpec(spec) {
  const args = ['--import', 'tsx', join(root, 'worker/cli/main.ts'), 'eval', join(root, 'resources/models/default'), '--text', join(root, 'resources/eval/heldout.txt'), '--backend', values.backend, '--kld', '--json']
  if (spec) args.push('--quant', spec)
  const t0 = Date.now()
  const r = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', maxBuffer: 1 << 26 })
  if (r.status !== 0) throw new Error(`eval ${spec ?? '(base)'} failed: ${r.stderr.trim().split('\n').pop()}`)
  return { ...JSON.parse(r.stdout), wall: (Date.now() - t0) / 1000 }
}

const inspect = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'worker/cli/main.ts'), 'inspect', join(root, 'resources/models/default'), '--json'], { cwd: root, encoding: 'utf8', maxBuffer: 1 << 26 })
const storedBytes = JSON.parse(inspect.stdout).bytes
const rows = []
const base = evalSpec(null)
appendFileSync(out, JSON.stringify({ key: 'base', ...base }) + '\n')
process.stderr.write(`base ppl ${base.ppl.toFixed(4)}\n`)
for (const [key, ref] of Object.entries(fixture.methods)) {
  if (only && !only.has(key)) continue
  const r = evalSpec(ref.spec)
  appendFileSync(out, JSON.stringify({ key, spec: ref.spec, ...r }) + '\n')
  rows.push({ key, ref, r })
  process.stderr.write(`${key}: ppl ${r.ppl.toFixed(4)} (reference ${ref.ppl.toFixed(4)}) in ${r.wall.toFixed(0)} s\n`)
}

const mib = (b) => (b / 2 ** 20).toFixed(2)
console.log(`| method (spec) | bits/weight | model MiB | ppl | reference ppl | Δ vs reference | KLD mean | top-1 |`)
console.log(`| --- | --- | --- | --- | --- | --- | --- | --- |`)
console.log(`| unquantized (bf16) | 16 | ${mib(storedBytes)} | ${base.ppl.toFixed(3)} | ${fixture.fp32.ppl.toFixed(3)} | ${(100 * (base.ppl / fixture.fp32.ppl - 1)).toFixed(2)}% | ${base.kld.mean.toFixed(4)} | ${(100 * base.kld.top1).toFixed(1)}% |`)
for (const { ref, r } of rows) {
  const seeds = ref.pplSeeds ? ` (seeds ${ref.pplSeeds.min.toFixed(2)}–${ref.pplSeeds.max.toFixed(2)})` : ''
  console.log(
    `| \`${ref.spec}\` | ${r.bitsPerWeight.toFixed(3)} | ${mib(r.bytes)} | ${r.ppl.toFixed(3)} | ${ref.ppl.toFixed(3)}${seeds} | ${(100 * (r.ppl / ref.ppl - 1)).toFixed(2)}% | ${r.kld.mean.toFixed(4)} | ${(100 * r.kld.top1).toFixed(1)}% |`,
  )
}
