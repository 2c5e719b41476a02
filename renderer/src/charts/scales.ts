/**
 * Pure helpers behind the charts: round tick steps, log-count bar geometry, min/max envelopes
 * of long per-channel series, and colour ranges that are honest about sign and constancy.
 * No ECharts or DOM here, so they are unit-tested directly (test/unit/renderer-scales.test.ts).
 */

/** A "nice" step (1, 2, 2.5 or 5 × 10^k) giving at most about `maxTicks` intervals over `span`. */
export function niceStep(span: number, maxTicks = 6): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1
  const raw = span / Math.max(1, maxTicks)
  const pow = 10 ** Math.floor(Math.log10(raw))
  for (const m of [1, 2, 2.5, 5, 10]) if (m * pow >= raw) return m * pow
  return 10 * pow
}

/**
 * Round ticks inside [lo, hi]: multiples of a nice step, so 0 is a tick whenever the range
 * spans it. Values are cleaned of float noise (0.30000000000000004 → 0.3).
 */
export function niceTicks(lo: number, hi: number, maxTicks = 6): { step: number; ticks: number[] } {
  if (!(hi > lo)) return { step: 1, ticks: Number.isFinite(lo) ? [lo] : [] }
  const step = niceStep(hi - lo, maxTicks)
  const decimals = Math.max(0, -Math.floor(Math.log10(step)) + 1)
  const ticks: number[] = []
  for (let k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k++) ticks.push(Number((k * step).toFixed(decimals)) || 0)
  return { step, ticks }
}

/** The baseline of log-count bars: half a count, so a bin holding one value still gets a bar. */
export const LOG_COUNT_FLOOR = 0.5

/**
 * One bar per non-empty histogram bin, [x0, x1, y0, y1] in chart units. With `log`, y is
 * log10(count) and bars rise from log10(0.5), so every non-empty bin (count 1 included)
 * has a visible bar whose top reads as its true count on a log axis; empty bins get none.
 */
export function histogramBars(lo: number, hi: number, counts: readonly number[], log: boolean): { bin: number; rect: [number, number, number, number] }[] {
  const width = (hi - lo) / Math.max(1, counts.length)
  const base = log ? Math.log10(LOG_COUNT_FLOOR) : 0
  const out: { bin: number; rect: [number, number, number, number] }[] = []
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i]!
    if (c <= 0) continue
    // A constant tensor has lo === hi: its single bin is drawn over a unit-wide band around it.
    const x0 = width > 0 ? lo + i * width : lo - 0.5
    const x1 = width > 0 ? lo + (i + 1) * width : lo + 0.5
    out.push({ bin: i, rect: [x0, x1, base, log ? Math.log10(c) : c] })
  }
  return out
}

/** Bucket i of a downsampled series: channels [start, end), their min and max. */
export interface EnvelopeBucket {
  start: number
  end: number
  min: number
  max: number
}

/**
 * Splits a long per-channel series into at most `maxBuckets` buckets of consecutive channels
 * with each bucket's min and max, so a 151936-channel series draws as ~2k bars and no peak
 * (outlier channel) is lost: the max envelope keeps it. Short series keep one bucket per channel.
 */
export function envelope(values: ArrayLike<number>, maxBuckets = 2048): EnvelopeBucket[] {
  const n = values.length
  const buckets = Math.min(n, Math.max(1, maxBuckets))
  const out: EnvelopeBucket[] = []
  for (let b = 0; b < buckets; b++) {
    const start = Math.floor((b * n) / buckets)
    const end = Math.floor(((b + 1) * n) / buckets)
    let min = Infinity
    let max = -Infinity
    for (let i = start; i < end; i++) {
      const v = values[i]!
      if (v < min) min = v
      if (v > max) max = v
    }
    out.push({ start, end, min, max })
  }
  return out
}

/** Diverging blue–white–red ramp for signed values, white at 0. */
export const DIVERGING = ['#2166ac', '#67a9cf', '#d1e5f0', '#f7f7f7', '#fddbc7', '#ef8a62', '#b2182b']

/**
 * The colour range of a statistic: a diverging map symmetric about 0 when values take both
 * signs (or are signed by nature), a sequential one otherwise; `constant` when every value is
 * the same (a legend would otherwise invent a 0–1 range the data do not have).
 */
export function colourRange(values: readonly number[], signed: boolean): { min: number; max: number; diverging: boolean; constant: boolean } {
  let min = Infinity
  let max = -Infinity
  for (const v of values) {
    if (!Number.isFinite(v)) continue
    if (v < min) min = v
    if (v > max) max = v
  }
  if (min === Infinity) return { min: 0, max: 0, diverging: false, constant: true }
  if (min === max) return { min, max, diverging: false, constant: true }
  if (signed || (min < 0 && max > 0)) {
    const m = Math.max(Math.abs(min), Math.abs(max))
    return { min: -m, max: m, diverging: true, constant: false }
  }
  return { min, max, diverging: false, constant: false }
}
