/**
 * The acceptance run of issue 11's "at 3.5 bits per weight": per-tensor ΔKLD of every decoder
 * linear of the default model at 4- and 3-bit RTN (g128) and the LSAQ importance of its blocks,
 * both on the calibration text (4 windows, as `plan` measures them), then the optimal and LSAQ
 * plans at 3.5 bpw. Writes the fixture test/unit/allocation-3p5bpw.test.ts checks:
 *   test/fixtures/allocation/rtn43-3.5bpw.json   the ΔKLD table, the importance, both plans' picks
 *
 *   npx tsx scripts/allocation-3p5bpw.ts [--windows 4] [--backend native]
 *
 * ΔKLD figures and the capture are cached (plan/sensitivity.ts), so a second run only re-solves.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { measureAllocatorInputs } from '../worker/api/allocation-sweep'
import { openModel } from '../worker/formats/open-model'
import type { BackendKind } from '../worker/inference/ort-backend'
import { openTokenizer, tokensOf } from '../worker/inference/text-source'
import { allocate, parseOptionSpecs } from '../worker/plan/allocate'
import { parseBudget } from '../worker/plan/budget'
import { DEFAULT_CALIBRATION_TEXT } from '../worker/plan/calibration'

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..')
const MODEL = join(ROOT, 'resources/models/default')
const OUT = join(ROOT, 'test/fixtures/allocation')
export const RTN_43 = 'rtn:bits=4,group=128;rtn:bits=3,group=128'

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback
}

async function main(): Promise<void> {
  const windows = Number(flag('windows', '4'))
  const backend = flag('backend', 'native') as BackendKind
  const ctx = 256
  const model = await openModel(MODEL)
  try {
    const options = parseOptionSpecs(RTN_43)
    const ids = await tokensOf({ file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model))
    const common = { model, options, allTensors: false, ids, ctx, windows, backend, threads: 2 }
    const t0 = performance.now()
    const log = (what: string) => (p: { done: number; total: number }) => process.stderr.write(`${what} ${p.done}/${p.total} ${((performance.now() - t0) / 1000).toFixed(0)} s\n`)
    const { costs } = await measureAllocatorInputs({ ...common, allocator: 'optimal' }, { onSensitivity: log('ΔKLD') })
    const { importance } = await measureAllocatorInputs({ ...common, allocator: 'lsaq' }, { onImportance: log('LSAQ') })
    const budget = parseBudget('3.5bpw')
    const memory = { format: 'native' as const, kv: null }
    const picks: Record<string, Record<string, string>> = {}
    for (const allocator of ['optimal', 'lsaq'] as const) {
      const r = allocate({ model, allocator, budget, options, memory, costs: costs!, importance: importance! })
      picks[allocator] = Object.fromEntries(Object.entries(r.plan.tensors).map(([t, e]) => [t, typeof e === 'string' ? e : `rtn:bits=${String(e.params!.bits)}`]))
      process.stderr.write(`${allocator}: ${r.bytes.planned} planned bytes, ${r.bitsPerWeight.toFixed(4)} bpw, ${JSON.stringify(r.counts)}\n`)
    }
    const table: Record<string, Record<string, number>> = {}
    for (const [t, row] of costs!) table[t] = Object.fromEntries(row)
    await mkdir(OUT, { recursive: true })
    await writeFile(
      join(OUT, 'rtn43-3.5bpw.json'),
      JSON.stringify(
        {
          what: 'per-tensor ΔKLD (nats per predicted token, that tensor alone quantized) and LSAQ block importance of the default model on the calibration text, and the optimal and LSAQ allocators\' picks at 3.5 bpw (native sizes)',
          measuredOn: { model: relative(ROOT, MODEL), text: relative(ROOT, DEFAULT_CALIBRATION_TEXT), ctx, windows, backend, tokens: ids.length },
          options: RTN_43,
          budget: '3.5bpw',
          importance,
          table,
          picks,
        },
        null,
        1,
      ) + '\n',
    )
  } finally {
    await model.close()
  }
}

void main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
