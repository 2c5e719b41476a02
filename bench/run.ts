// Benchmark runner: `npm run bench [-- --quick] [-- --only <section>]`.
// Every bench/sections/*.ts exporting `section: BenchSection` is a section; they run in name
// order and their rows are printed as one table, each figure beside the reference it should
// be read against (measured in the same run, on the same machine).
import { readdir } from 'node:fs/promises'
import { cpus, totalmem } from 'node:os'
import { parseCommandLine, UsageError } from '../worker/cli/args'
import type { BenchRow, BenchSection } from './bench-types'

interface Args {
  quick: boolean
  only: string[]
}

function parseArgs(argv: string[]): Args {
  const { values, positionals } = parseCommandLine(argv, {
    quick: { type: 'boolean' },
    only: { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  })
  if (values.help) {
    console.log('usage: npm run bench -- [--quick] [--only <section>[,<section>…]]')
    process.exit(0)
  }
  if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]} (try --help)`)
  const only = (values.only ?? []).flatMap((v) => v.split(',')).filter(Boolean)
  if (values.only && only.length === 0) throw new UsageError('--only needs a section name')
  return { quick: values.quick ?? false, only }
}

async function loadSections(): Promise<BenchSection[]> {
  const dir = new URL('./sections/', import.meta.url)
  const files = (await readdir(dir)).filter((f) => /\.(ts|js|mjs)$/.test(f) && !f.endsWith('.d.ts')).sort()
  const sections: BenchSection[] = []
  for (const f of files) {
    const mod = (await import(new URL(f, dir).href)) as { section?: BenchSection }
    if (!mod.section) throw new Error(`bench/sections/${f} does not export \`section\``)
    sections.push(mod.section)
  }
  return sections
}

function fmt(value: number, unit: string): string {
  const digits = Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2
  return `${value.toFixed(digits)} ${unit}`
}

function printTable(rows: { section: string; row: BenchRow }[]): void {
  const header = ['section', 'measurement', 'value', 'reference (same run)', 'ref value', 'value/ref', 'target', '']
  const lines = rows.map(({ section, row }) => [
    section,
    row.name + (row.note ? ` (${row.note})` : ''),
    fmt(row.value, row.unit),
    row.reference?.name ?? '',
    row.reference ? fmt(row.reference.value, row.reference.unit) : '',
    row.reference && row.reference.unit === row.unit && row.reference.value ? `${(row.value / row.reference.value).toFixed(2)}×` : '',
    row.target ?? '',
    row.ok === undefined ? '' : row.ok ? 'ok' : 'MISSED',
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  const right = new Set([2, 4, 5])
  const render = (cells: string[]) => cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ').trimEnd()
  console.log(render(header))
  console.log(widths.map((w) => '-'.repeat(w)).join('-|-'))
  for (const l of lines) console.log(render(l))
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2))
  const all = await loadSections()
  const unknown = args.only.filter((n) => !all.some((s) => s.name === n))
  if (unknown.length) throw new Error(`no bench section ${unknown.join(', ')}; have ${all.map((s) => s.name).join(', ')}`)
  const chosen = args.only.length ? all.filter((s) => args.only.includes(s.name)) : all
  const log = (m: string) => process.stderr.write(`  ${m}\n`)
  const rows: { section: string; row: BenchRow }[] = []
  for (const s of chosen) {
    process.stderr.write(`[${s.name}] ${s.description}\n`)
    for (const row of await s.run({ quick: args.quick, log })) rows.push({ section: s.name, row })
  }
  console.log(
    `\nQuantscope bench${args.quick ? ' (--quick)' : ''}: node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ` +
      `${(totalmem() / 2 ** 30).toFixed(0)} GiB\n`,
  )
  printTable(rows)
}

main().catch((err) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err)
  process.exit(1)
})
