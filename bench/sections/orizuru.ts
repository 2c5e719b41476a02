import { seededRandom } from '../../worker/inference/sampler'
import { topKOutliers } from '../../worker/quant/activations/orizuru'
import { orizuruWasmAvailable, topKOutliersWasm } from '../../worker/quant/activations/orizuru-wasm'
import type { BenchReference, BenchRow, BenchSection } from '../bench-types'

/**
 * KLLM's Orizuru top-k outlier detector (worker/quant/activations/) over activation-like rows
 * (Student-t(3) values with a few ×20 outlier channels, hidden size 4096), in values/s, each
 * next to a full per-row sort of the same rows measured in this run (a native typed-array sort
 * of a copy: values only, no indices, so the reference is if anything flattered).
 */
const COLS = 4096

export const section: BenchSection = {
  name: 'orizuru',
  description: 'Orizuru top-k outlier detector (values/s) vs a full per-row sort',
  async run(ctx) {
    const rows = ctx.quick ? 128 : 1024
    const x = activations(rows, COLS, 1)
    const values = rows * COLS
    const perSecond = (ms: number) => values / (ms / 1000)
    ctx.log(`full sort of ${rows} rows × ${COLS} …`)
    const sortMs = best(ctx.quick ? 2 : 3, () => {
      const row = new Float32Array(COLS)
      for (let r = 0; r < rows; r++) {
        row.set(x.subarray(r * COLS, (r + 1) * COLS))
        row.sort()
      }
    })
    const ref: BenchReference = { name: 'Float32Array.sort per row', value: perSecond(sortMs) / 1e6, unit: 'M values/s' }
    const out: BenchRow[] = []
    for (const k of [4, 32]) {
      ctx.log(`TS detector, k = ${k} …`)
      out.push({ name: `Orizuru k=${k}/side, TS`, value: perSecond(best(3, () => topKOutliers(x, rows, COLS, k))) / 1e6, unit: 'M values/s', reference: ref })
      if (orizuruWasmAvailable()) {
        ctx.log(`WASM SIMD detector, k = ${k} …`)
        out.push({ name: `Orizuru k=${k}/side, WASM SIMD`, value: perSecond(best(3, () => topKOutliersWasm(x, rows, COLS, k))) / 1e6, unit: 'M values/s', reference: ref })
      } else out.at(-1)!.note = 'orizuru.wasm missing: run npm run build:wasm'
    }
    return out
  },
}

function best(times: number, f: () => void): number {
  let ms = Infinity
  for (let i = 0; i < times; i++) {
    const t0 = performance.now()
    f()
    ms = Math.min(ms, performance.now() - t0)
  }
  return ms
}

function activations(rows: number, cols: number, seed: number): Float32Array {
  const rand = seededRandom(seed)
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand())
  const out = new Float32Array(rows * cols)
  for (let i = 0; i < out.length; i++) {
    const chi2 = gauss() ** 2 + gauss() ** 2 + gauss() ** 2
    const channelScale = (i % cols) % 509 === 3 ? 20 : 1
    out[i] = (gauss() / Math.sqrt(chi2 / 3)) * channelScale
  }
  return out
}
