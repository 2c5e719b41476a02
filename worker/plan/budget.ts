/**
 * A memory budget as users write it: a byte count (`12000000`), a size with a unit (`12MB`,
 * `1.5 GiB`; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024, units case-insensitive)
 * or average bits per weight (`3.5bpw`). One parser for the CLI, the API and the UI.
 *
 * What each kind bounds (allocate.ts): a size bounds the whole model in the chosen layout —
 * planned tensors, kept tensors (embeddings, lm_head, norms) and the KV-cache reserve; bits per
 * weight bound the planned tensors alone (8 · their bytes / their parameters), as ExLlama and
 * llama.cpp quote bpw.
 */
export type Budget = { kind: 'bytes'; bytes: number; text: string } | { kind: 'bpw'; bitsPerWeight: number; text: string }

export class BudgetError extends Error {
  constructor(
    readonly text: string,
    readonly problem: string,
  ) {
    super(`budget '${text}': ${problem}`)
    this.name = 'BudgetError'
  }
}

const UNITS: Readonly<Record<string, number>> = Object.freeze({
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
})

const FORM = /^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([a-z]*)$/i

export function parseBudget(text: string): Budget {
  const t = text.trim()
  const m = FORM.exec(t)
  if (!m) throw new BudgetError(text, 'write a byte count (12000000), a size (12MB, 1.5GiB) or bits per weight (3.5bpw)')
  const value = Number(m[1])
  const unit = m[2]!.toLowerCase()
  if (unit === 'bpw') {
    if (!(value > 0 && value <= 32)) throw new BudgetError(text, `bits per weight must be above 0 and at most 32, got ${value}`)
    return { kind: 'bpw', bitsPerWeight: value, text: t }
  }
  const scale = unit === '' ? 1 : UNITS[unit]
  if (scale === undefined) throw new BudgetError(text, `unknown unit '${m[2]}' (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB or bpw)`)
  const bytes = Math.floor(value * scale)
  if (unit === '' && !Number.isInteger(value)) throw new BudgetError(text, 'a byte count must be a whole number (or give a unit: 12.5MB)')
  if (!(bytes >= 1) || !Number.isSafeInteger(bytes)) throw new BudgetError(text, `must be between 1 byte and ${Number.MAX_SAFE_INTEGER} bytes, got ${value}${unit ? ` ${m[2]}` : ''}`)
  return { kind: 'bytes', bytes, text: t }
}

/** A size for messages: bytes and MB, or bits per weight. */
export function describeBytes(bytes: number): string {
  return `${bytes} bytes (${(bytes / 1e6).toFixed(3)} MB)`
}
