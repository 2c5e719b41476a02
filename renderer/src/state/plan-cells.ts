/**
 * Pure rules of the plan editor's cells: what bit width a plan entry stands for, how a cell
 * changes when its bits are cycled, and how params are written and compared. No Vue, no API
 * calls: the methods' descriptions (listQuantMethods) come in as arguments.
 */
import type { Plan, PlanEntry, QuantMethodInfo } from '../../../worker/api/contract'

export type QuantParams = Record<string, number | boolean | string>
export type MethodEntry = Exclude<PlanEntry, 'keep'>

/** The widths a click cycles through; 16 means "keep as stored". */
export const BIT_CYCLE = [16, 8, 4, 3, 2] as const
export type CellBits = (typeof BIT_CYCLE)[number]

/** Group sizes the menu offers besides the method's default (0 = one group per row). */
export const GROUP_CHOICES = [0, 32, 64, 128, 256] as const

export function methodMap(methods: readonly QuantMethodInfo[]): Map<string, QuantMethodInfo> {
  return new Map(methods.map((m) => [m.id, m]))
}

/** The method's params at their defaults; a required choice (an enum without default, e.g. ggml's type) takes its first option. */
export function defaultParams(info: QuantMethodInfo): QuantParams {
  const out: QuantParams = {}
  for (const p of info.params) {
    if (p.default !== null) out[p.key] = p.default
    else if (p.type === 'enum' && p.options?.length) out[p.key] = p.options[0]!
  }
  return out
}

/** Bits a block-type name stands for: llama.cpp's 'Q4_K' → 4, 'Q8_0' → 8; null for other words. */
export function typeBits(type: unknown): number | null {
  const m = typeof type === 'string' ? /^I?Q(\d)(_|$)/i.exec(type) : null
  return m ? Number(m[1]) : null
}

/** Nominal bits of an entry: its `bits` param, its block type's width (ggml Q4_K → 4), else the method's fixed width (any3 → 3, nf4 → 4). */
export function entryBits(entry: PlanEntry | undefined, methods: ReadonlyMap<string, QuantMethodInfo>): number {
  if (!entry || entry === 'keep') return 16
  const b = entry.params?.bits
  if (typeof b === 'number') return b
  return typeBits(entry.params?.type) ?? methods.get(entry.method)?.bits ?? 16
}

/** A block type of the method at `bits` bits, of the same kind as `current` where there is one (Q4_K → Q3_K, Q4_0 → Q8_0). */
function typeAtBits(info: QuantMethodInfo, bits: number, current: unknown): string | null {
  const options = (info.params.find((p) => p.key === 'type')?.options ?? []).filter((o): o is string => typeBits(o) === bits)
  if (options.length === 0) return null
  const suffix = typeof current === 'string' ? current.replace(/^I?Q\d/i, '') : ''
  return options.find((o) => o.replace(/^I?Q\d/i, '') === suffix) ?? options[0]!
}

function bitsRange(info: QuantMethodInfo | undefined): [number, number] | null {
  const p = info?.params.find((x) => x.key === 'bits')
  return p && (p.type === 'integer' || p.type === 'number') ? [p.min ?? 1, p.max ?? 16] : null
}

/** Only the params the method knows, the rest at its defaults: a group carried from RTN to NF4 stays, RTN's `sym` does not. */
function paramsFor(info: QuantMethodInfo, from: QuantParams): QuantParams {
  const out = defaultParams(info)
  for (const p of info.params) if (p.key in from && p.key !== 'bits') out[p.key] = from[p.key]!
  return out
}

/**
 * The entry at `bits` bits, staying with its method where the method can: a `bits` param in
 * range is set; the anyN family moves to any{bits}; otherwise (NF4 at 3 bits, say) the cell
 * falls back to RTN with the same group. 16 bits is 'keep'.
 */
export function withBits(entry: MethodEntry, bits: number, methods: ReadonlyMap<string, QuantMethodInfo>): PlanEntry {
  if (bits >= 16) return 'keep'
  const info = methods.get(entry.method)
  const params = { ...(entry.params ?? {}) }
  const range = bitsRange(info)
  if (info && range && bits >= range[0] && bits <= range[1]) return { method: info.id, params: { ...params, bits } }
  if (info && !range) {
    const type = typeAtBits(info, bits, params.type)
    if (type) return { method: info.id, params: { ...params, type } }
    if (info.bits === bits && typeBits(params.type) === null) return { method: info.id, params }
  }
  const family = /^any\d$/.exec(entry.method) ? methods.get(`any${bits}`) : undefined
  if (family) {
    const next = paramsFor(family, params)
    // The NF4-table initialisation exists for 16 levels only.
    if (next.init === 'nf4' && bits !== 4) next.init = defaultParams(family).init ?? 'kmeans++'
    return { method: family.id, params: next }
  }
  const rtn = methods.get('rtn')
  if (!rtn) return 'keep'
  return { method: 'rtn', params: { ...paramsFor(rtn, params), bits } }
}

/** The next width after `bits` in 16 → 8 → 4 → 3 → 2 → 16; a width outside the cycle (5, 6) goes to the next one below it. */
export function nextBits(bits: number): CellBits {
  const i = BIT_CYCLE.findIndex((b) => b === bits)
  if (i >= 0) return BIT_CYCLE[(i + 1) % BIT_CYCLE.length]!
  return BIT_CYCLE.find((b) => b < bits) ?? 16
}

/** Params that differ from the method's defaults, for short labels ("rtn g64 sym"). */
export function shortLabel(entry: PlanEntry | undefined, methods: ReadonlyMap<string, QuantMethodInfo>): string {
  if (!entry || entry === 'keep') return 'keep'
  const params = entry.params ?? {}
  const parts = [entry.method]
  if (typeof params.group === 'number') parts.push(params.group === 0 ? 'row' : `g${params.group}`)
  const info = methods.get(entry.method)
  if (info) {
    for (const p of info.params) {
      if (p.key === 'bits' || p.key === 'group' || !(p.key in params) || params[p.key] === p.default) continue
      const v = params[p.key]
      // A block type names itself ('Q4_K'); other params say which they are.
      parts.push(typeof v === 'boolean' ? (v ? p.key : `no ${p.key}`) : p.key === 'type' ? String(v) : `${p.key}=${v}`)
    }
  }
  return parts.join(' ')
}

/** METHOD:key=value,… with keys sorted: one text per distinct setting (cache keys, tooltips). */
export function entrySpec(entry: MethodEntry): string {
  const params = entry.params ?? {}
  const keys = Object.keys(params).sort()
  return keys.length ? `${entry.method}:${keys.map((k) => `${k}=${String(params[k])}`).join(',')}` : entry.method
}

/** A plan of the open model from the editor's entries ('keep' entries are left out: unnamed tensors are kept). */
export function buildPlan(modelName: string, fingerprint: string, entries: Readonly<Record<string, MethodEntry>>, description?: string): Plan {
  const tensors: Record<string, PlanEntry> = {}
  for (const name of Object.keys(entries).sort()) tensors[name] = { method: entries[name]!.method, params: { ...(entries[name]!.params ?? {}) } }
  return { format: 'quantscope-plan', version: 1, model: { name: modelName, fingerprint }, ...(description ? { description } : {}), tensors }
}

/**
 * Reads plan JSON the user imports, far enough to give a clear message; the engine checks it
 * whole (schema, tensors, params) when it is sized or saved.
 */
export function parsePlanFile(text: string, fileName: string): Plan {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new Error(`${fileName}: not valid JSON (${(err as Error).message})`)
  }
  const p = value as Partial<Plan> | null
  if (!p || typeof p !== 'object' || p.format !== 'quantscope-plan') throw new Error(`${fileName}: not a Quantscope plan (its "format" is not "quantscope-plan")`)
  if (p.version !== 1) throw new Error(`${fileName}: plan version ${String(p.version)} is not supported (this build reads version 1)`)
  if (!p.model || typeof p.model.fingerprint !== 'string') throw new Error(`${fileName}: the plan has no model fingerprint`)
  if (!p.tensors || typeof p.tensors !== 'object') throw new Error(`${fileName}: the plan has no "tensors" object`)
  return p as Plan
}
