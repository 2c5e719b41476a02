/**
 * The Importance view's grouped bars: one category per block, one series per method. Each
 * method has its own unit (1 − Jaccard, 1 − cos, ΔKLD in nats), so each is divided by its
 * largest |value| over the blocks: every series then peaks at 1 and the bars share one axis,
 * which says so. The order is by block or by one method, largest first.
 */
import type { ImportanceMethodId, LayerImportanceReport } from '../../../worker/api/contract'
import { CHART_FONT, type ChartOption } from './echarts'
import { formatNumber } from '../format'

export const METHOD_COLOURS: Record<ImportanceMethodId, string> = { lsaq: '#3b6fd8', cosine: '#e08a2c', sensitivity: '#2a9d6f', local: '#9b4dca' }

/** Fixed plot margins (pixels), so a click's column follows from its x alone (tests rely on them). */
export const IMPORTANCE_GRID = { left: 52, right: 16, top: 34, bottom: 44 }

/** Block indices in display order: by block, or by `sortBy`'s importance descending (blocks it lacks last, by index). */
export function importanceOrder(report: LayerImportanceReport, sortBy: 'layer' | ImportanceMethodId): number[] {
  const idx = report.layers.map((_, i) => i)
  const s = sortBy === 'layer' ? null : report.series.find((x) => x.method === sortBy)
  if (!s) return idx
  return idx.sort((a, b) => {
    const va = s.values[a] ?? null
    const vb = s.values[b] ?? null
    if (va === null || vb === null) return va === null && vb === null ? a - b : va === null ? 1 : -1
    return vb - va || a - b
  })
}

/** Each value over the series' largest |value| (null stays null; an all-zero series stays 0). */
export function normalised(values: readonly (number | null)[]): (number | null)[] {
  let max = 0
  for (const v of values) if (v !== null) max = Math.max(max, Math.abs(v))
  return values.map((v) => (v === null ? null : max > 0 ? v / max : 0))
}

export function importanceBarsOption(report: LayerImportanceReport, order: readonly number[]): ChartOption {
  const categories = order.map((i) => `block ${report.layers[i]}`)
  return {
    animation: false,
    textStyle: CHART_FONT,
    grid: { ...IMPORTANCE_GRID },
    tooltip: {
      trigger: 'axis',
      axisPointer: { type: 'shadow' },
      formatter: (items: unknown) => {
        const list = items as { dataIndex: number }[]
        const i = order[list[0]?.dataIndex ?? 0]!
        const lines = report.series.map((s) => {
          const v = s.values[i] ?? null
          return `<span style="color:${METHOD_COLOURS[s.method]}">●</span> ${s.label}: ${v === null ? '—' : formatNumber(v, 4)} <span style="opacity:.7">(${s.unit})</span>`
        })
        return [`block ${report.layers[i]} · click to select it in the layer grid`, ...lines].join('<br>')
      },
    },
    xAxis: { type: 'category', data: categories, axisLabel: { ...CHART_FONT, interval: 0, rotate: categories.length > 16 ? 90 : 0 } },
    yAxis: {
      type: 'value',
      name: 'importance ÷ its method’s largest (each method normalised to 1)',
      nameLocation: 'end',
      nameTextStyle: { ...CHART_FONT, align: 'left' },
      axisLabel: CHART_FONT,
    },
    series: report.series.map((s) => {
      const norm = normalised(s.values)
      return {
        type: 'bar' as const,
        name: s.label,
        data: order.map((i) => norm[i] ?? null),
        itemStyle: { color: METHOD_COLOURS[s.method] },
        emphasis: { focus: 'none' as const },
      }
    }),
  }
}
