/**
 * Colours of the layer grid's HTML cells, with the rules the charts use (scales.ts): a
 * diverging map symmetric about 0 for signed values, viridis for magnitudes, one colour for
 * constant data; and a text colour that stays readable on whichever background comes out.
 */
import { rampColour, VIRIDIS } from './echarts'
import { DIVERGING } from './scales'

export interface ColourScale {
  min: number
  max: number
  diverging: boolean
  constant: boolean
}

/** Background and text colour of a value on the scale. */
export function cellColour(value: number, scale: ColourScale): { background: string; text: string } {
  const stops = scale.diverging ? DIVERGING : VIRIDIS
  const t = scale.constant ? (scale.diverging ? 0.5 : 0.35) : (value - scale.min) / (scale.max - scale.min)
  const [r, g, b] = rampColour(stops, t)
  // Relative luminance (sRGB, approximate gamma): dark text on light cells, white on dark ones.
  const lum = 0.2126 * (r / 255) ** 2.2 + 0.7152 * (g / 255) ** 2.2 + 0.0722 * (b / 255) ** 2.2
  return { background: `rgb(${r}, ${g}, ${b})`, text: lum > 0.3 ? '#1d2433' : '#ffffff' }
}

/** CSS gradient of the scale's ramp, bottom (min) to top (max), for the legend. */
export function rampGradient(scale: ColourScale): string {
  const stops = scale.diverging ? DIVERGING : VIRIDIS
  return `linear-gradient(to top, ${stops.join(', ')})`
}
