/**
 * Chart options of the activation and KV views. Line charts and the legend are registered
 * here (echarts `use` is global and idempotent), so the shared charts/echarts.ts stays as it is.
 */
import { use } from 'echarts/core'
import { LineChart } from 'echarts/charts'
import { LegendComponent } from 'echarts/components'
import type { Histogram, KvViewResult } from '../../../../worker/api/contract'
import { CHART_FONT, VIRIDIS, gridImage, type ChartOption } from '../../charts/echarts'
import { formatBytes } from '../../format'
import { KV_SCHEMES, type KvPoint } from '../../state/actkv'

use([LineChart, LegendComponent])

const SCHEME_COLOURS = ['#9aa3b2', '#3b7dd8', '#e08a2c', '#2a9d5c']
const BITS_COLOURS: Record<number, string> = { 16: '#5b6270', 8: '#3b7dd8', 4: '#2a9d5c', 3: '#e08a2c', 2: '#c0392b' }

/** Bin centres of a histogram. */
function centres(h: Histogram): number[] {
  const w = (h.hi - h.lo) / h.counts.length
  return h.counts.map((_, i) => h.lo + (i + 0.5) * w)
}

/**
 * A histogram (inliers, and outliers stacked on top when given) on a value axis with vertical
 * marker lines: the k-means centroids or the INT grid, in the quantizer's normalised units.
 */
export function histogramOption(inliers: Histogram, outliers: Histogram | null, markers: readonly number[], markerName: string, xName: string): ChartOption {
  const xs = centres(inliers)
  const lo = Math.min(inliers.lo, ...markers)
  const hi = Math.max(inliers.hi, ...markers)
  const pad = (hi - lo) * 0.02 || 0.05
  return {
    textStyle: CHART_FONT,
    animation: false,
    grid: { left: 56, right: 12, top: 26, bottom: 36 },
    legend: { top: 0, right: 8, itemWidth: 12, itemHeight: 8, textStyle: CHART_FONT },
    tooltip: { trigger: 'axis', axisPointer: { type: 'shadow' }, valueFormatter: (v: unknown) => String(v) },
    xAxis: { type: 'value', min: lo - pad, max: hi + pad, name: xName, nameLocation: 'middle', nameGap: 22, axisLabel: { formatter: (v: number) => String(Number(v.toFixed(3))) } },
    yAxis: { type: 'log', name: 'values', nameGap: 8, min: 1, axisLabel: { formatter: (v: number) => (v >= 1000 ? `${v / 1000}k` : String(v)) } },
    series: [
      {
        name: 'quantized values',
        type: 'bar',
        stack: 'h',
        barWidth: '100%',
        itemStyle: { color: '#7aa6e0' },
        data: xs.map((x, i) => [x, inliers.counts[i]! || null]),
        markLine: {
          silent: true,
          symbol: 'none',
          label: { show: false },
          lineStyle: { color: '#c0392b', width: 1, type: 'solid' },
          data: markers.map((m) => ({ xAxis: m, name: markerName })),
        },
      },
      ...(outliers
        ? [
            {
              name: 'top-k outliers (kept fp)',
              type: 'bar' as const,
              stack: 'h',
              barWidth: '100%',
              itemStyle: { color: '#f0a04b' },
              data: xs.map((x, i) => [x, outliers.counts[i]! || null]),
            },
          ]
        : []),
    ],
  } as ChartOption
}

/** One channel × token map (channels down, tokens across) as one image. */
export function heatmapOption(values: number[][], title: string): ChartOption {
  const rows = values.length
  const cols = values[0]?.length ?? 0
  const flat = new Float32Array(rows * cols)
  let min = Infinity
  let max = -Infinity
  values.forEach((row, r) =>
    row.forEach((v, c) => {
      flat[r * cols + c] = v
      if (v < min) min = v
      if (v > max) max = v
    }),
  )
  const image = gridImage(flat, rows, cols, min, max, VIRIDIS)
  return {
    textStyle: CHART_FONT,
    animation: false,
    grid: { left: 44, right: 70, top: 8, bottom: 30 },
    xAxis: { type: 'value', min: 0, max: cols, name: 'token', nameLocation: 'middle', nameGap: 18 },
    yAxis: { type: 'value', min: 0, max: rows, inverse: true, name: 'channel', nameLocation: 'middle', nameGap: 30 },
    visualMap: { type: 'continuous', min, max, calculable: false, inRange: { color: VIRIDIS }, right: 0, top: 'middle', itemHeight: 110, itemWidth: 10, text: [max.toFixed(2), min.toFixed(2)], textStyle: CHART_FONT },
    series: [
      {
        type: 'custom',
        name: title,
        silent: true,
        data: [[0, 0]],
        renderItem: ((_: unknown, api: { coord(p: number[]): number[] }) => {
          const a = api.coord([0, 0])
          const b = api.coord([cols, rows])
          return { type: 'image', style: { image, x: Math.min(a[0]!, b[0]!), y: Math.min(a[1]!, b[1]!), width: Math.abs(b[0]! - a[0]!), height: Math.abs(b[1]! - a[1]!) } }
        }) as never,
      },
    ],
  } as ChartOption
}

/** Perplexity against KV bits, one line per scheme, the full-precision run as a dashed line. */
export function kvPplOption(points: readonly KvPoint[], fullPpl: number | null): ChartOption {
  const bits = [...new Set(points.map((p) => p.bits))].sort((a, b) => a - b)
  return {
    textStyle: CHART_FONT,
    animation: false,
    grid: { left: 56, right: 16, top: 30, bottom: 36 },
    legend: { top: 0, textStyle: CHART_FONT, itemWidth: 14, itemHeight: 8 },
    tooltip: { trigger: 'axis', valueFormatter: (v: unknown) => (typeof v === 'number' ? v.toFixed(3) : String(v)) },
    xAxis: { type: 'category', data: bits.map((b) => `${b}-bit`), name: 'KV bits', nameLocation: 'middle', nameGap: 22 },
    yAxis: { type: 'log', name: 'perplexity', scale: true, axisLabel: { formatter: (v: number) => String(Number(v.toPrecision(3))) } },
    series: KV_SCHEMES.map((scheme, i) => ({
      name: scheme,
      type: 'line' as const,
      symbolSize: 7,
      connectNulls: true,
      itemStyle: { color: SCHEME_COLOURS[i] },
      data: bits.map((b) => points.find((p) => p.bits === b && p.scheme === scheme)?.ppl ?? null),
      ...(i === 0 && fullPpl !== null
        ? { markLine: { silent: true, symbol: 'none', label: { formatter: `full precision ${fullPpl.toFixed(2)}`, position: 'insideEndTop' }, lineStyle: { type: 'dashed', color: '#5b6270' }, data: [{ yAxis: fullPpl }] } }
        : {}),
    })),
  } as ChartOption
}

/** KV-cache bytes against context length per bit width (memory-model.ts kvCacheBytes). */
export function kvMemoryOption(memory: KvViewResult['memory']): ChartOption {
  return {
    textStyle: CHART_FONT,
    animation: false,
    grid: { left: 70, right: 16, top: 30, bottom: 36 },
    legend: { top: 0, textStyle: CHART_FONT, itemWidth: 14, itemHeight: 8 },
    tooltip: { trigger: 'axis', valueFormatter: (v: unknown) => (typeof v === 'number' ? formatBytes(v) : String(v)) },
    xAxis: { type: 'category', data: memory.contexts.map((c) => (c >= 1024 ? `${c / 1024}k` : String(c))), name: 'context (tokens)', nameLocation: 'middle', nameGap: 22 },
    yAxis: { type: 'log', name: 'KV cache', axisLabel: { formatter: (v: number) => formatBytes(v) } },
    series: memory.bits.map((b, i) => ({
      name: b === 16 ? 'fp16' : `${b}-bit`,
      type: 'line' as const,
      symbolSize: 5,
      itemStyle: { color: BITS_COLOURS[b] ?? '#888' },
      data: memory.bytes[i]!,
    })),
  } as ChartOption
}
