/** The renderer's number formatting and chart scales: pure functions, checked on the values the issue saw. */
import { describe, it, expect } from 'vitest'
import { formatNumber, plural, shortestDigits } from '../../renderer/src/format'
import { colourRange, envelope, histogramBars, niceTicks } from '../../renderer/src/charts/scales'

describe('formatNumber', () => {
  it('writes a float32 with the fewest digits that give it back', () => {
    const eps = Math.fround(1e-5) // 0.000009999999747378752 as a float64
    expect(String(eps)).toBe('0.000009999999747378752')
    expect(formatNumber(eps)).toBe('1e-5')
    expect(formatNumber(Math.fround(0.1))).toBe('0.1')
    expect(formatNumber(Math.fround(1e-6))).toBe('1e-6')
    expect(shortestDigits(Math.fround(0.3))).toBe(1)
    // A float64 that is not a float32 keeps its own digits (up to the limit).
    expect(formatNumber(0.1 + 0.2)).toBe('0.3')
    expect(formatNumber(1 / 3)).toBe('0.3333')
  })

  it('is short enough for a stat card: compact exponents, no truncation needed', () => {
    expect(formatNumber(-0.00015934)).toBe('-1.593e-4')
    expect(formatNumber(-0.00015934, 3)).toBe('-1.59e-4')
    expect(formatNumber(-0.0015934)).toBe('-0.001593')
    expect(formatNumber(151936)).toBe('1.519e5')
    expect(formatNumber(2.5e-7)).toBe('2.5e-7')
    expect(formatNumber(0.0932)).toBe('0.0932')
    expect(formatNumber(-0)).toBe('0')
    expect(formatNumber(Infinity)).toBe('∞')
    expect(formatNumber(NaN)).toBe('NaN')
  })

  it('pluralises', () => {
    expect(plural(1, 'value')).toBe('1 value')
    expect(plural(0, 'value')).toBe('0 values')
    expect(plural(1024, 'value')).toBe('1,024 values')
    expect(plural(2, 'channel')).toBe('2 channels')
  })
})

describe('niceTicks', () => {
  it('gives round ticks including 0 when the range spans it', () => {
    const { step, ticks } = niceTicks(-0.0826, 0.0932)
    expect(step).toBe(0.05)
    expect(ticks).toEqual([-0.05, 0, 0.05])
    expect(niceTicks(-3.7, 12.2).ticks).toContain(0)
    for (const [lo, hi] of [[-0.0826, 0.0932], [-1e-4, 3e-4], [0.5, 2.5], [-1234, 98765]] as const) {
      const t = niceTicks(lo, hi)
      // Every tick is an integer multiple of a 1/2/2.5/5 × 10^k step, inside the range.
      const mantissa = t.step / 10 ** Math.floor(Math.log10(t.step))
      expect([1, 2, 2.5, 5]).toContain(Number(mantissa.toFixed(6)))
      for (const x of t.ticks) {
        expect(x).toBeGreaterThanOrEqual(lo)
        expect(x).toBeLessThanOrEqual(hi)
        expect(Math.abs(x / t.step - Math.round(x / t.step))).toBeLessThan(1e-9)
      }
      if (lo < 0 && hi > 0) expect(t.ticks).toContain(0)
      expect(t.ticks.length).toBeGreaterThanOrEqual(2)
    }
  })
})

describe('histogramBars', () => {
  it('gives every non-empty bin a bar on a log axis, including bins holding one value', () => {
    const counts = [1, 0, 5, 1000, 0, 1]
    const bars = histogramBars(-1, 1, counts, true)
    expect(bars.map((b) => b.bin)).toEqual([0, 2, 3, 5])
    for (const { rect } of bars) expect(rect[3] - rect[2]).toBeGreaterThan(0.25) // at least log10(1/0.5)
    // The top of each bar is its true count on a log10 axis.
    expect(bars.map((b) => 10 ** b.rect[3])).toEqual([1, 5, 1000, 1].map((c) => expect.closeTo(c, 9)))
    expect(bars[0]!.rect.slice(0, 2)).toEqual([-1, -1 + 2 / 6])
    expect(histogramBars(-1, 1, counts, false).map((b) => b.rect[3])).toEqual([1, 5, 1000, 1])
  })
})

describe('envelope', () => {
  it('keeps every peak of a long series in at most maxBuckets buckets', () => {
    const n = 151936
    const v = Float64Array.from({ length: n }, (_, i) => 1 + ((i * 7919) % 13) / 100)
    v[100_003] = 50
    const e = envelope(v, 2048)
    expect(e.length).toBe(2048)
    expect(e[0]!.start).toBe(0)
    expect(e.at(-1)!.end).toBe(n)
    const peak = e.find((b) => b.start <= 100_003 && 100_003 < b.end)!
    expect(peak.max).toBe(50)
    expect(Math.max(...e.map((b) => b.max))).toBe(50)
    expect(Math.min(...e.map((b) => b.min))).toBe(1)
    expect(envelope([3, 1, 2], 2048).map((b) => [b.start, b.min])).toEqual([[0, 3], [1, 1], [2, 2]])
  })
})

describe('colourRange', () => {
  it('is diverging and centred at 0 for signed values, constant for constant data', () => {
    expect(colourRange([-0.2, 0.05, 0.1], true)).toEqual({ min: -0.2, max: 0.2, diverging: true, constant: false })
    expect(colourRange([0.01, 0.03], true)).toEqual({ min: -0.03, max: 0.03, diverging: true, constant: false })
    expect(colourRange([1, 3], false)).toEqual({ min: 1, max: 3, diverging: false, constant: false })
    expect(colourRange([0, 0, 0], false)).toMatchObject({ min: 0, max: 0, constant: true })
  })
})
