/**
 * The Importance view's bar order and per-method normalisation (renderer/src/charts/importance-bars.ts):
 * sorting by a method puts its largest block first (ties by block, blocks it lacks last), and
 * each series is divided by its largest |value| so every method peaks at ±1 on the shared axis.
 */
import { describe, it, expect } from 'vitest'
import type { LayerImportanceReport } from '../../worker/api/contract'
import { importanceBarsOption, importanceOrder, normalised } from '../../renderer/src/charts/importance-bars'

const report: LayerImportanceReport = {
  layers: [0, 1, 2, 3],
  series: [
    { method: 'lsaq', label: 'LSAQ', unit: '', values: [0.2, 0.8, 0.5, 0.8] },
    { method: 'sensitivity', label: 'sensitivity', unit: '', values: [0.003, null, 0.012, 0.006] },
  ],
  spearman: [],
  k: 10,
  finalNorm: true,
  sensitivity: null,
  textLabel: 'held-out text',
  ctx: 256,
  windows: 2,
  tokens: 512,
  backend: 'wasm',
  seconds: 1,
}

describe('importance bars', () => {
  it('orders by block or by a method, largest first, ties by block, missing values last', () => {
    expect(importanceOrder(report, 'layer')).toEqual([0, 1, 2, 3])
    expect(importanceOrder(report, 'lsaq')).toEqual([1, 3, 2, 0])
    expect(importanceOrder(report, 'sensitivity')).toEqual([2, 3, 0, 1])
    // A method the report lacks keeps block order.
    expect(importanceOrder(report, 'cosine')).toEqual([0, 1, 2, 3])
  })

  it('normalises each method to its largest |value|, nulls kept, all-zero stays 0', () => {
    expect(normalised([0.003, null, 0.012, 0.006])).toEqual([0.25, null, 1, 0.5])
    expect(normalised([-2, 1])).toEqual([-1, 0.5])
    expect(normalised([0, 0])).toEqual([0, 0])
  })

  it('draws one series per method in the chosen order, normalised', () => {
    const option = importanceBarsOption(report, importanceOrder(report, 'sensitivity'))
    expect((option.xAxis as { data: string[] }).data).toEqual(['block 2', 'block 3', 'block 0', 'block 1'])
    const series = option.series as { name: string; data: (number | null)[] }[]
    expect(series.map((s) => s.name)).toEqual(['LSAQ', 'sensitivity'])
    expect(series[0]!.data).toEqual([0.625, 1, 0.25, 1])
    expect(series[1]!.data).toEqual([1, 0.5, 0.25, null])
    expect((option.yAxis as { name: string }).name).toMatch(/normalised/)
  })
})
