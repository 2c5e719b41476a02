import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import type { BenchSection } from '../bench-types'
import { ensureSyntheticModel } from '../synthetic-model'

const run = promisify(execFile)
const probe = fileURLToPath(new URL('../open-probe.ts', import.meta.url))

interface ProbeResult {
  openMs: number
  warmOpenMs: number
  rssGrowthMB: number
  headerMs: number
  headerMB: number
  tensors: number
}

/** Opening the synthetic HF folder in a fresh process: time and resident memory it costs. */
export const section: BenchSection = {
  name: 'open-model',
  description: 'openModel() on the synthetic llama folder, in a fresh process',
  async run(ctx) {
    const model = await ensureSyntheticModel(ctx.quick, ctx.log)
    // Same loader flags as this process (tsx), plus gc() so RSS is measured after collection.
    const { stdout } = await run(process.execPath, [...process.execArgv, '--expose-gc', probe, model.dir], { maxBuffer: 1 << 20 })
    const r = JSON.parse(stdout.trim().split('\n').at(-1)!) as ProbeResult
    const header = { name: `read+parse the ${r.headerMB.toFixed(2)} MB JSON header`, value: r.headerMs, unit: 'ms' }
    return [
      { name: `open model (${r.tensors} tensors), first call`, value: r.openMs, unit: 'ms', reference: header, target: '<= 100 ms', ok: r.openMs <= 100 },
      { name: 'open model, second call (warm JIT)', value: r.warmOpenMs, unit: 'ms', reference: header },
      {
        name: 'RSS growth while open',
        value: r.rssGrowthMB,
        unit: 'MB',
        reference: { name: 'JSON header size', value: r.headerMB, unit: 'MB' },
        target: '<= 50 MB',
        ok: r.rssGrowthMB <= 50,
      },
    ]
  },
}
