/**
 * The quantizer library as menus and forms see it: each method's id, label, default bits and
 * calibration need, and its parameters read from the method's own valibot schema (the keys of
 * its strict object; for each the default, the type, integer-ness, min/max and the allowed
 * words). Reading the schemas instead of keeping a second table means a parameter added to a
 * method shows up in the UI with its real limits, and can never disagree with what the
 * method accepts.
 */
import * as v from 'valibot'
import type { CalibrationNeed } from '../quant/contract'
import { QUANT_METHODS, type AnyQuantMethod } from '../quant/registry'

export interface QuantParamDescription {
  key: string
  type: 'integer' | 'number' | 'boolean' | 'enum' | 'string'
  default: number | boolean | string | null
  min?: number
  max?: number
  options?: (string | number)[]
}

export interface QuantMethodDescription {
  id: string
  label: string
  bits: number
  needs: CalibrationNeed
  params: QuantParamDescription[]
}

/** The schema shapes valibot builds (only the fields read here). */
interface SchemaNode {
  type: string
  kind?: string
  wrapped?: SchemaNode
  default?: unknown
  options?: unknown[]
  pipe?: SchemaNode[]
  requirement?: unknown
  entries?: Record<string, SchemaNode>
}

export function describeParam(key: string, schema: SchemaNode): QuantParamDescription {
  let node = schema
  let fallback: unknown = null
  if (node.type === 'optional' || node.type === 'exact_optional' || node.type === 'nullish') {
    fallback = typeof node.default === 'function' ? (node.default as () => unknown)() : (node.default ?? null)
    node = node.wrapped!
  }
  const out: QuantParamDescription = { key, type: 'string', default: (fallback as QuantParamDescription['default']) ?? null }
  switch (node.type) {
    case 'boolean':
      out.type = 'boolean'
      break
    case 'picklist':
      out.type = 'enum'
      out.options = [...(node.options as (string | number)[])]
      break
    case 'number': {
      out.type = 'number'
      for (const action of node.pipe?.slice(1) ?? []) {
        if (action.type === 'integer') out.type = 'integer'
        else if ((action.type === 'min_value' || action.type === 'gt_value') && typeof action.requirement === 'number') out.min = action.requirement
        else if ((action.type === 'max_value' || action.type === 'lt_value') && typeof action.requirement === 'number') out.max = action.requirement
      }
      break
    }
    default:
      out.type = 'string'
  }
  return out
}

export function describeMethod(method: AnyQuantMethod): QuantMethodDescription {
  const entries = (method.schema as unknown as SchemaNode).entries
  if (!entries) throw new Error(`quant method ${method.id}: its params schema is not an object schema`)
  const params = Object.entries(entries).map(([key, schema]) => describeParam(key, schema))
  // Bits and needs of the defaults; a required param (no default, e.g. ggml's type) takes its
  // first option or its minimum, so menus still get a representative figure.
  const sample = Object.fromEntries(params.map((p) => [p.key, p.default ?? p.options?.[0] ?? p.min ?? 0]))
  const parsed = v.safeParse(method.schema, sample)
  const defaults = parsed.success ? parsed.output : null
  return {
    id: method.id,
    label: method.label,
    bits: defaults ? method.bits(defaults) : 0,
    needs: defaults ? method.needs(defaults) : 'none',
    params,
  }
}

/** Every method of the registry, in registry order. */
export function describeQuantMethods(): QuantMethodDescription[] {
  return [...QUANT_METHODS.values()].map(describeMethod)
}
