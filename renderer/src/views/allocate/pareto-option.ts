/**
 * The Pareto chart's ECharts option: perplexity against size, one series per allocator (a line
 * through its budgets), the uniform plans and llama.cpp's presets as separate markers. The
 * scatter/line charts and the legend are registered here, beside the only chart that uses them.
 */
import { use } from 'echarts/core'
import { LineChart, ScatterChart } from 'echarts/charts'
import { LegendComponent } from 'echarts/components'
import type { ParetoPoint } from '../../../../worker/api/contract'
import { CHART_FONT } from '../../charts/echarts'

use([LineChart, ScatterChart, LegendComponent])

const COLOURS: Record<string, string> = { lsaq: '#8e44ad', greedy: '#16a085', optimal: '#2c62c9', uniform: '#7f8c8d', preset: '#d35400' }
const NAMES: Record<string, string> = { lsaq: 'LSAQ', greedy: 'greedy', optimal: 'optimal', uniform: 'uniform', preset: 'llama.cpp presets' }

export interface ParetoSeries {
  kind: ParetoPoint['kind']
  points: ParetoPoint[]
}

/** Points grouped by kind, each group by size (the order the series draw them). */
export function paretoSeries(points: readonly ParetoPoint[]): ParetoSeries[] {
  const order: ParetoPoint['kind'][] = ['optimal', 'greedy', 'lsaq', 'uniform', 'preset']
  return order.map((kind) => ({ kind, points: points.filter((p) => p.kind === kind).sort((a, b) => a.bytes - b.bytes) })).filter((s) => s.points.length > 0)
}

export function paretoOption(series: readonly ParetoSeries[], loaded: string | null): Record<string, unknown> {
  return {
    animation: false,
    textStyle: CHART_FONT,
    grid: { left: 56, right: 16, top: 30, bottom: 40 },
    legend: { top: 0, textStyle: CHART_FONT },
    tooltip: {
      trigger: 'item',
      formatter: (p: { data: { point: ParetoPoint } }) => {
        const x = p.data.point
        return `${x.label}<br/>${(x.bytes / 1e6).toFixed(3)} MB · ${x.bpw.toFixed(3)} bpw<br/>ppl ${x.ppl.toFixed(4)}<br/><i>click: load into the grid</i>`
      },
    },
    xAxis: { type: 'value', name: 'MB', nameLocation: 'middle', nameGap: 24, scale: true, axisLabel: { formatter: (v: number) => v.toFixed(2) } },
    yAxis: { type: 'value', name: 'perplexity', scale: true },
    series: series.map((s) => ({
      name: NAMES[s.kind],
      type: s.kind === 'uniform' || s.kind === 'preset' ? 'scatter' : 'line',
      symbol: s.kind === 'preset' ? 'diamond' : s.kind === 'uniform' ? 'rect' : 'circle',
      symbolSize: 10,
      color: COLOURS[s.kind],
      data: s.points.map((p) => ({
        value: [p.bytes / 1e6, p.ppl],
        point: p,
        ...(p.label === loaded ? { itemStyle: { borderColor: '#000', borderWidth: 2 }, symbolSize: 14 } : {}),
      })),
    })),
  }
}
