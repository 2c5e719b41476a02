/** Human-readable numbers for CLI output (stderr progress, text tables). */

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${i === 0 ? v : v.toFixed(2)} ${units[i]}`
}

export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B (${n})`
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M (${n})`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k (${n})`
  return String(n)
}

let lastProgressAt = 0

/** Throttled progress on stderr (never stdout, which may carry --json output). */
export function progressLine(label: string, done: number, total: number): void {
  const now = Date.now()
  if (done < total && now - lastProgressAt < 250) return
  lastProgressAt = now
  const pct = total > 0 ? ((100 * done) / total).toFixed(0) : '100'
  if (process.stderr.isTTY) process.stderr.write(`\r${label}: ${done}/${total} (${pct}%)${done >= total ? '\n' : ''}`)
  else if (done >= total) process.stderr.write(`${label}: ${done}/${total} done\n`)
}
