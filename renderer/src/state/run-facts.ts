/**
 * What the runs table and the KV chart read off kept runs: setting texts, which run is the
 * full-precision base, comparable protocols, ΔPPL and the perplexity-vs-KV-bits curve. Pure
 * (types only), so unit tests import it without the UI's transport.
 */
import type { EvalRun, EvalTextRef } from '../../../worker/api/contract'

/** 'k-means A4 · 4 outl./side · absmax' / 'int A8' / 'full precision'. */
export function actText(run: Pick<EvalRun, 'act'>): string {
  const a = run.act
  if (!a) return 'full precision'
  const k = a.outliers ? ` · ${a.outliers} outl./side` : ''
  return a.kind === 'int' ? `int A${a.bits}${k}` : `k-means A${a.bits}${k}${a.norm === 'none' ? ' · raw' : ''}`
}

/** The KV scheme's name: naive, past-only, smoothed, past-only + smoothed. */
export function kvScheme(kv: { smooth: boolean; pastOnly: boolean }): string {
  if (kv.pastOnly && kv.smooth) return 'past-only + smoothed'
  return kv.pastOnly ? 'past-only' : kv.smooth ? 'smoothed' : 'naive'
}

/** 'KV3 past-only' / 'KV4 g32 naive' / 'full precision'. */
export function kvText(run: Pick<EvalRun, 'kv'>): string {
  const k = run.kv
  if (!k) return 'full precision'
  return `KV${k.bits}${k.group ? ` g${k.group}` : ''} ${kvScheme(k)}`
}

/** Warnings the engine attached to a run (e.g. ctx longer than max_position_embeddings); none on older runs. */
export function runWarnings(run: EvalRun): string[] {
  const w = (run as EvalRun & { warnings?: unknown }).warnings
  return Array.isArray(w) ? w.filter((x): x is string => typeof x === 'string') : []
}

/** The model as stored, run in full precision (no activation or KV quantization): what ΔPPL is measured against. */
export function isBaseRun(run: EvalRun): boolean {
  return run.variant.kind === 'listed' && run.variant.id === 'base' && !run.act && !run.kv
}

/** Same text, ctx and windows: the runs' perplexities are comparable. */
export function sameProtocol(a: EvalRun, b: EvalRun): boolean {
  const text = (t: EvalTextRef): string => (t.kind === 'heldout' ? 'heldout' : `file:${t.path}`)
  return text(a.text) === text(b.text) && a.ctx === b.ctx && a.windows === b.windows
}

/**
 * ppl(run) − ppl(base) on the same windows: measured in the run itself when it had KLD on,
 * otherwise against the newest base run of the same protocol; null when there is none.
 */
export function deltaPpl(run: EvalRun, runs: readonly EvalRun[]): number | null {
  if (run.kld) return run.kld.deltaPpl
  if (isBaseRun(run)) return null
  const base = runs.find((r) => isBaseRun(r) && sameProtocol(r, run))
  return base ? run.ppl - base.ppl : null
}

export interface KvPoint {
  bits: number
  scheme: string
  ppl: number
  runId: string
}

export const KV_SCHEMES = ['naive', 'past-only', 'smoothed', 'past-only + smoothed'] as const

/**
 * The KV runs comparable with each other: no activation quant, no groups, the same variant,
 * text, ctx and windows as the newest KV run (the newest run of each bits × scheme); and the
 * full-precision run of that protocol when there is one.
 */
export function kvCurve(runs: readonly EvalRun[]): { points: KvPoint[]; protocol: string | null; fullPpl: number | null } {
  const kvRuns = runs.filter((r) => r.kv && !r.act && !r.kv.group)
  const ref = kvRuns[0]
  if (!ref) return { points: [], protocol: null, fullPpl: null }
  const key = (r: EvalRun): string => `${r.variantLabel}|${r.variant.kind}|${r.text.kind === 'heldout' ? 'heldout' : r.text.path}|${r.ctx}|${r.windows}`
  const same = kvRuns.filter((r) => key(r) === key(ref))
  const seen = new Set<string>()
  const points: KvPoint[] = []
  for (const r of same) {
    const scheme = kvScheme(r.kv!)
    const id = `${r.kv!.bits}|${scheme}`
    if (seen.has(id)) continue
    seen.add(id)
    points.push({ bits: r.kv!.bits, scheme, ppl: r.ppl, runId: r.id })
  }
  const full = runs.find((r) => !r.kv && !r.act && key(r) === key(ref) && (isBaseRun(r) || r.variantLabel === ref.variantLabel))
  return { points, protocol: `${ref.variantLabel} · ${ref.textLabel} · ${ref.ctx} × ${ref.windows}`, fullPpl: full?.ppl ?? null }
}
