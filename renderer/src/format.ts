/** Number formatting shared by the views. */

export function formatCount(n: number): string {
  const abs = Math.abs(n)
  if (abs >= 1e12) return `${(n / 1e12).toFixed(2)} T`
  if (abs >= 1e9) return `${(n / 1e9).toFixed(2)} B`
  if (abs >= 1e6) return `${(n / 1e6).toFixed(2)} M`
  if (abs >= 1e4) return `${(n / 1e3).toFixed(1)} k`
  return n.toLocaleString('en-US')
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let u = 0
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`
}

/**
 * At most `digits` significant digits, exponent form for very small or large magnitudes.
 * Values that are exactly a float32 (most weights, configs read from GGUF) are written with
 * the fewest digits that give back the same float32, so ε = 1e-5 stored as float32 shows as
 * "1e-5", not as its float64 expansion 0.000009999999747378752.
 */
export function formatNumber(x: number, digits = 4): string {
  if (Number.isNaN(x)) return 'NaN'
  if (!Number.isFinite(x)) return x > 0 ? '∞' : '-∞'
  if (x === 0) return '0'
  const p = Math.min(digits, shortestDigits(x))
  const abs = Math.abs(Number(x.toPrecision(p)))
  if (abs >= 1e5 || abs < 1e-3) return compactExponent(x, p)
  return String(Number(x.toPrecision(p)))
}

/** Fewest significant digits that read back as x (as a float64, or as a float32 when x is one). */
export function shortestDigits(x: number): number {
  const isFloat32 = Math.fround(x) === x
  for (let p = 1; p < 17; p++) {
    const y = Number(x.toPrecision(p))
    if (y === x || (isFloat32 && Math.fround(y) === x)) return p
  }
  return 17
}

/** '1e-5', '-1.59e-3', '1.52e5': no '+', no trailing zeros. */
function compactExponent(x: number, p: number): string {
  const [mantissa, exponent] = x.toExponential(Math.max(0, p - 1)).split('e') as [string, string]
  const m = mantissa.includes('.') ? mantissa.replace(/\.?0+$/, '') : mantissa
  return `${m}e${exponent.replace('+', '')}`
}

/** '1 value', '2 values', '1,024 values'. */
export function plural(n: number, singular: string, pluralForm = `${singular}s`): string {
  return `${n.toLocaleString('en-US')} ${n === 1 ? singular : pluralForm}`
}

export function formatShape(shape: readonly number[]): string {
  return shape.length === 0 ? 'scalar' : shape.join(' × ')
}

export function formatPercent(part: number, whole: number): string {
  if (whole === 0) return '–'
  const p = (100 * part) / whole
  return `${p >= 10 ? p.toFixed(0) : p.toFixed(1)}%`
}

/** '0.8 s', '42 s', '3 min 05 s', '1 h 02 min'. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '–'
  if (seconds < 10) return `${seconds.toFixed(1)} s`
  if (seconds < 60) return `${Math.round(seconds)} s`
  const s = Math.round(seconds)
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`
}

/** '+0.123' / '-0.123', and '0.000' rather than '-0.000'. */
export function formatSigned(v: number, digits: number): string {
  const text = Math.abs(v).toFixed(digits)
  if (Number(text) === 0) return text
  return `${v < 0 ? '−' : '+'}${text}`
}
