/**
 * Quantization specs as the CLI and plans write them: `METHOD[:key=value,...]`, e.g.
 * `rtn:bits=4,group=128,sym=false`, `nf4:group=64`, `any3:group=128,weighting=weights`,
 * `kmeans:bits=3,per=row,outliers=0.005`. Values are numbers, `true`/`false`, or bare words;
 * the method's own schema then checks them and fills in the defaults.
 */
import * as v from 'valibot'
import { QuantParamError } from './contract'
import { QUANT_METHODS, type AnyQuantMethod } from './registry'

export interface ParsedQuantSpec {
  method: AnyQuantMethod
  /** Validated params with every default filled in. */
  params: Record<string, unknown>
}

const KEY = /^[A-Za-z][A-Za-z0-9_]*$/
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i

function coerce(raw: string): number | boolean | string {
  if (NUMBER.test(raw)) return Number(raw)
  if (raw === 'true') return true
  if (raw === 'false') return false
  return raw
}

/** Keys a method's schema accepts, when it is an object schema (all of ours are). */
function schemaKeys(method: AnyQuantMethod): string[] | null {
  const entries = (method.schema as { entries?: Record<string, unknown> }).entries
  return entries ? Object.keys(entries) : null
}

/** Validates params (an object, e.g. from a plan's JSON) against the method's schema. */
export function parseQuantParams(method: AnyQuantMethod, raw: Record<string, unknown>, spec = method.id): Record<string, unknown> {
  const res = v.safeParse(method.schema, raw)
  if (res.success) return res.output as Record<string, unknown>
  const issue = res.issues[0]
  const key = issue.path?.map((p) => String(p.key)).join('.') ?? ''
  if (issue.type === 'strict_object' && key) {
    const keys = schemaKeys(method)
    throw new QuantParamError(null, `quantization spec '${spec}': unknown key '${key}' for ${method.id}${keys ? ` (keys: ${keys.join(', ')})` : ''}`)
  }
  const got = key && key in raw ? `, got ${JSON.stringify(raw[key])}` : ''
  throw new QuantParamError(null, `quantization spec '${spec}': ${key ? `${key}: ` : ''}${issue.message}${got}`)
}

export function parseQuantSpec(spec: string, methods: ReadonlyMap<string, AnyQuantMethod> = QUANT_METHODS): ParsedQuantSpec {
  const text = spec.trim()
  const colon = text.indexOf(':')
  const id = colon < 0 ? text : text.slice(0, colon)
  const method = methods.get(id)
  if (!method) {
    throw new QuantParamError(null, `quantization spec '${spec}': unknown method '${id}' (methods: ${[...methods.keys()].join(', ')})`)
  }
  const raw: Record<string, unknown> = {}
  if (colon >= 0) {
    const list = text.slice(colon + 1)
    if (list.trim() === '') throw new QuantParamError(null, `quantization spec '${spec}': nothing after ':' (write key=value pairs or leave the ':' out)`)
    for (const part of list.split(',')) {
      const eq = part.indexOf('=')
      const key = (eq < 0 ? part : part.slice(0, eq)).trim()
      const value = eq < 0 ? '' : part.slice(eq + 1).trim()
      if (eq < 0 || !KEY.test(key) || value === '') {
        throw new QuantParamError(null, `quantization spec '${spec}': '${part}' is not key=value`)
      }
      if (Object.prototype.hasOwnProperty.call(raw, key)) throw new QuantParamError(null, `quantization spec '${spec}': key '${key}' given twice`)
      raw[key] = coerce(value)
    }
  }
  return { method, params: parseQuantParams(method, raw, spec) }
}

/** The spec string of (method, params): every param, in the object's order; parses back to the same. */
export function formatQuantSpec(id: string, params: object): string {
  const parts = Object.entries(params).map(([k, val]) => {
    const s = String(val)
    if (!KEY.test(k) || /[,=:\s]/.test(s) || s === '') throw new QuantParamError(null, `param ${k}=${s} cannot be written in a spec`)
    return `${k}=${s}`
  })
  return parts.length ? `${id}:${parts.join(',')}` : id
}
