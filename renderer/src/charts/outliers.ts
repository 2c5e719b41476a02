/**
 * Outlier channels: per-channel absmax values far above the typical channel. The threshold
 * is robust (median + 6 · 1.4826 · MAD), so a handful of huge channels cannot hide
 * themselves by inflating a mean/std threshold. Typed-array sorts: a 151936-channel
 * embedding must not stall the page.
 */
export function outlierThreshold(values: ArrayLike<number>): number {
  if (values.length === 0) return Infinity
  const sorted = Float64Array.from(values).sort()
  const median = sorted[sorted.length >> 1]!
  const deviations = sorted.map((v) => Math.abs(v - median)).sort()
  const mad = deviations[deviations.length >> 1]!
  if (mad === 0) return median === 0 ? Infinity : 3 * median
  return median + 6 * 1.4826 * mad
}
