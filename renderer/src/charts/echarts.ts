/**
 * ECharts, tree-shaken: only the charts and components the views use are registered, and
 * only the canvas renderer.
 */
import { use, init, type ComposeOption, type EChartsType } from 'echarts/core'
import { BarChart, HeatmapChart, type BarSeriesOption, type HeatmapSeriesOption } from 'echarts/charts'
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

use([BarChart, HeatmapChart, GridComponent, TooltipComponent, VisualMapComponent, DataZoomComponent, MarkLineComponent, CanvasRenderer])

export type ChartOption = ComposeOption<
  | BarSeriesOption
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
