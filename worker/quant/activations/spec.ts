/**
 * Activation quantization specs, written like the weight specs of ../spec.ts:
 * `int:bits=4,outliers=4` (per-token asymmetric INT, the uniform baseline) and
 * `kmeans:bits=4,outliers=4,norm=absmax-non-outlier` (KLLM's per-layer k-means codebook).
 * `outliers` is k of the Orizuru detector: the k largest *and* the k smallest entries of every
 * token vector stay in full precision (2k values per token). Values are numbers, true/false or
 * bare words; each kind's valibot schema checks them and fills in the defaults.
 */
import * as v from 'valibot'
import { QuantParamError } from '../contract'
import { bitsSchema, seedSchema } from '../common'
import { KMEANS_INITS, type KMeansInit } from '../kmeans-1d'

/** How a token's values are scaled before they are coded against the layer's codebook. */
export const ACT_NORMALISATIONS = ['absmax-non-outlier', 'none'] as const
export type ActNormalisation = (typeof ACT_NORMALISATIONS)[number]

const outliersSchema = () =>
  v.optional(
    v.pipe(
      v.number('outliers must be a number'),
      v.integer('outliers must be a whole number of values per side (k of the top-k detector), e.g. 4'),
      v.minValue(0, 'outliers must be ≥ 0'),
      v.maxValue(4096, 'outliers must be at most 4096 per side'),
    ),
    0,
  )

export const intActSchema = v.strictObject({
  bits: bitsSchema(2, 16, 8),
  outliers: outliersSchema(),
})
export type IntActParams = v.InferOutput<typeof intActSchema>

// 'nf4' init needs exactly 16 clusters; the generic inits work for every bit width.
const ACT_INITS = KMEANS_INITS.filter((i) => i !== 'nf4') as Exclude<KMeansInit, 'nf4'>[]

export const kmeansActSchema = v.strictObject({
  bits: bitsSchema(1, 8, 4),
  outliers: outliersSchema(),
  norm: v.optional(v.picklist(ACT_NORMALISATIONS, `norm must be one of ${ACT_NORMALISATIONS.join(', ')}`), 'absmax-non-outlier'),
  init: v.optional(v.picklist(ACT_INITS, `init must be one of ${ACT_INITS.join(', ')}`), 'kmeans++'),
  seed: seedSchema(),
  maxIter: v.optional(v.pipe(v.number(), v.integer('maxIter must be an integer ≥ 1'), v.minValue(1, 'maxIter must be an integer ≥ 1')), 300),
  tol: v.optional(v.pipe(v.number('tol must be a number'), v.minValue(0, 'tol must be ≥ 0')), 1e-4),
})
export type KMeansActParams = v.InferOutput<typeof kmeansActSchema>

export type ActivationSpec = { kind: 'int'; params: IntActParams } | { kind: 'kmeans'; params: KMeansActParams }

const SCHEMAS = { int: intActSchema, kmeans: kmeansActSchema } as const
type ActKind = keyof typeof SCHEMAS

const KEY = /^[A-Za-z][A-Za-z0-9_]*$/
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i

function coerce(raw: string): number | boolean | string {
  if (NUMBER.test(raw)) return Number(raw)
  if (raw === 'true') return true
  if (raw === 'false') return false
  return raw
}

/** Validates params (e.g. from a plan's JSON) of one kind; throws QuantParamError naming the spec and key. */
export function parseActivationParams(kind: string, raw: Record<string, unknown>, spec: string = kind): ActivationSpec {
  if (!Object.prototype.hasOwnProperty.call(SCHEMAS, kind)) {
    throw new QuantParamError(null, `activation spec '${spec}': unknown kind '${kind}' (kinds: ${Object.keys(SCHEMAS).join(', ')})`)
  }
  const schema = SCHEMAS[kind as ActKind]
  const res = v.safeParse(schema, raw)
  if (res.success) return { kind, params: res.output } as ActivationSpec
  const issue = res.issues[0]
  const key = issue.path?.map((p) => String(p.key)).join('.') ?? ''
  if (issue.type === 'strict_object' && key) {
    throw new QuantParamError(null, `activation spec '${spec}': unknown key '${key}' for ${kind} (keys: ${Object.keys(schema.entries).join(', ')})`)
  }
  const got = key && key in raw ? `, got ${JSON.stringify(raw[key])}` : ''
  throw new QuantParamError(null, `activation spec '${spec}': ${key ? `${key}: ` : ''}${issue.message}${got}`)
}

export function parseActivationSpec(spec: string): ActivationSpec {
  const text = spec.trim()
  const colon = text.indexOf(':')
  const kind = colon < 0 ? text : text.slice(0, colon)
  const raw: Record<string, unknown> = {}
  if (colon >= 0) {
    const list = text.slice(colon + 1)
    if (list.trim() === '') throw new QuantParamError(null, `activation spec '${spec}': nothing after ':' (write key=value pairs or leave the ':' out)`)
    for (const part of list.split(',')) {
      const eq = part.indexOf('=')
      const key = (eq < 0 ? part : part.slice(0, eq)).trim()
      const value = eq < 0 ? '' : part.slice(eq + 1).trim()
      if (eq < 0 || !KEY.test(key) || value === '') throw new QuantParamError(null, `activation spec '${spec}': '${part}' is not key=value`)
      if (Object.prototype.hasOwnProperty.call(raw, key)) throw new QuantParamError(null, `activation spec '${spec}': key '${key}' given twice`)
      raw[key] = coerce(value)
    }
  }
  return parseActivationParams(kind, raw, spec)
}

/** Every param in the object's order; parses back to the same spec. */
export function formatActivationSpec(spec: ActivationSpec): string {
  const parts = Object.entries(spec.params).map(([k, val]) => `${k}=${String(val)}`)
  return `${spec.kind}:${parts.join(',')}`
}

/** Nominal bits per (non-outlier) activation value, for WxAy labels. */
export function activationBits(spec: ActivationSpec): number {
  return spec.params.bits
}
