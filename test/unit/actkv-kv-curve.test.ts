/**
 * The perplexity-vs-KV-bits chart's data (renderer/src/state/actkv.ts kvCurve) and the runs
 * table's setting texts: only KV runs without activation quant or groups, of the newest KV run's
 * variant/text/ctx/windows, the newest run per bits × scheme, and that protocol's
 * full-precision run as the reference line.
 */
import { describe, it, expect } from 'vitest'
import type { EvalRun } from '../../worker/api/contract'
import { actText, isBaseRun, kvCurve, kvText } from '../../renderer/src/state/run-facts'

let n = 0
function run(over: Partial<EvalRun>): EvalRun {
  return {
    id: `r${++n}`, modelPath: '/m', createdAt: n, variant: { kind: 'listed', id: 'base' }, variantLabel: 'base', text: { kind: 'heldout' }, textLabel: 'held-out text',
    ctx: 256, maxWindows: 4, windows: 4, tokens: 1024, textTokens: 99999, backend: 'wasm', threads: 2, ppl: 40, nll: 3.7, kld: null, seconds: 1, tokensPerSecond: 1000,
    ...over,
  }
}
const kv = (bits: number, pastOnly: boolean, smooth: boolean, group: number | null = null) => ({ bits, group, pastOnly, smooth })

describe('kvCurve', () => {
  it('keeps comparable KV runs, the newest per bits × scheme, and the full-precision reference', () => {
    // newest first, as the runs table holds them
    const runs = [
      run({ ppl: 51, kv: kv(3, true, true) }),
      run({ ppl: 99, kv: kv(3, true, true) }), // older duplicate: left out
      run({ ppl: 60, kv: kv(3, false, false) }),
      run({ ppl: 45, kv: kv(4, true, false) }),
      run({ ppl: 70, kv: kv(2, true, false), act: { kind: 'kmeans', bits: 4, outliers: 4, norm: 'absmax-non-outlier' } }), // activation quant: out
      run({ ppl: 80, kv: kv(2, false, false, 16) }), // groups: out
      run({ ppl: 90, kv: kv(2, false, false), ctx: 128 }), // other protocol: out
      run({ ppl: 41 }), // the full-precision base of the same protocol
      run({ ppl: 30, ctx: 128 }),
    ]
    const c = kvCurve(runs)
    expect(c.points.map((p) => [p.bits, p.scheme, p.ppl])).toEqual([
      [3, 'past-only + smoothed', 51],
      [3, 'naive', 60],
      [4, 'past-only', 45],
    ])
    expect(c.fullPpl).toBe(41)
    expect(c.protocol).toBe('base · held-out text · 256 × 4')
  })

  it('is empty without KV runs', () => {
    expect(kvCurve([run({}), run({ act: { kind: 'int', bits: 8, outliers: 0 }, kv: kv(4, false, false) })])).toEqual({ points: [], protocol: null, fullPpl: null })
  })

  it('runs table texts and the ΔPPL base', () => {
    const q = run({ act: { kind: 'kmeans', bits: 4, outliers: 4, norm: 'absmax-non-outlier', calibrationTokens: 8192 }, kv: kv(3, true, false) })
    expect(actText(q)).toBe('k-means A4 · 4 outl./side')
    expect(kvText(q)).toBe('KV3 past-only')
    expect(kvText(run({ kv: kv(2, true, true, 32) }))).toBe('KV2 g32 past-only + smoothed')
    expect(actText(run({ act: { kind: 'int', bits: 8, outliers: 0 } }))).toBe('int A8')
    expect(actText(run({}))).toBe('full precision')
    expect(isBaseRun(q)).toBe(false)
    expect(isBaseRun(run({}))).toBe(true)
  })
})
