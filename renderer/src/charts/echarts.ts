/**
 * ECharts, tree-shaken: only the charts and components the views use are registered, and
 * only the canvas renderer.
 */
import { use, init, type ComposeOption, type EChartsType } from 'echarts/core'
import { BarChart, CustomChart, HeatmapChart, type BarSeriesOption, type CustomSeriesOption, type HeatmapSeriesOption } from 'echarts/charts'
import {
  DataZoomComponent,
  GridComponent,
  MarkLineComponent,
  TooltipComponent,
  VisualMapComponent,
  type DataZoomComponentOption,
  type GridComponentOption,
  type MarkLineComponentOption,
  type TooltipComponentOption,
  type VisualMapComponentOption,
} from 'echarts/components'
import { CanvasRenderer } from 'echarts/renderers'

use([BarChart, CustomChart, HeatmapChart, GridComponent, TooltipComponent, VisualMapComponent, DataZoomComponent, MarkLineComponent, CanvasRenderer])

export type ChartOption = ComposeOption<
  | BarSeriesOption
  | CustomSeriesOption
  | HeatmapSeriesOption
  | GridComponentOption
  | TooltipComponentOption
  | VisualMapComponentOption
  | DataZoomComponentOption
  | MarkLineComponentOption
>

export { init, type EChartsType }

/** Perceptually uniform ramp (viridis stops) for magnitude heatmaps. */
export const VIRIDIS = ['#440154', '#414487', '#2a788e', '#22a884', '#7ad151', '#fde725']

export const CHART_FONT = { fontFamily: 'system-ui, -apple-system, "Segoe UI", sans-serif', fontSize: 11, color: '#5b6270' }

/** Colour of t ∈ [0, 1] on a ramp of hex stops (linear in RGB between stops). */
export function rampColour(stops: readonly string[], t: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1)
  const i = Math.min(stops.length - 2, Math.floor(x))
  const f = x - i
  const a = hexRgb(stops[i]!)
  const b = hexRgb(stops[i + 1]!)
  return [0, 1, 2].map((k) => Math.round(a[k]! + (b[k]! - a[k]!) * f)) as [number, number, number]
}

function hexRgb(hex: string): [number, number, number] {
  const n = parseInt(hex.slice(1), 16)
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255]
}

/**
 * A rows × cols grid of values as a canvas image (each cell `scale` pixels square), for
 * ECharts to draw as one picture: 16k heatmap cells as chart items cost the page ~1 s.
 */
export function gridImage(values: ArrayLike<number>, rows: number, cols: number, min: number, max: number, stops: readonly string[]): HTMLCanvasElement {
  const scale = Math.max(1, Math.ceil(512 / Math.max(rows, cols)))
  const canvas = document.createElement('canvas')
  canvas.width = cols * scale
  canvas.height = rows * scale
  const ctx = canvas.getContext('2d')!
  const img = ctx.createImageData(canvas.width, canvas.height)
  const span = max - min
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const [R, G, B] = rampColour(stops, span > 0 ? (values[r * cols + c]! - min) / span : 0.5)
      for (let dy = 0; dy < scale; dy++) {
        let o = ((r * scale + dy) * canvas.width + c * scale) * 4
        for (let dx = 0; dx < scale; dx++, o += 4) {
          img.data[o] = R
          img.data[o + 1] = G
          img.data[o + 2] = B
          img.data[o + 3] = 255
        }
      }
    }
  }
  ctx.putImageData(img, 0, 0)
  return canvas
}
