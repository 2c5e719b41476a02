/**
 * Outlier channels: per-channel absmax values far above the typical channel. The threshold
 * is robust (median + 6 · 1.4826 · MAD), so a handful of huge channels cannot hide
 * themselves by inflating a mean/std threshold.
 */
export function outlierThreshold(values: readonly number[]): number {
  if (values.length === 0) return Infinity
  const sorted = [...values].sort((a, b) => a - b)
  const median = sorted[sorted.length >> 1]!
  const deviations = sorted.map((v) => Math.abs(v - median)).sort((a, b) => a - b)
  const mad = deviations[deviations.length >> 1]!
  if (mad === 0) return median === 0 ? Infinity : 3 * median
  return median + 6 * 1.4826 * mad
}
