/**
 * Checks what arrives from a less trusted side (the renderer over IPC, a WebSocket peer)
 * against the API's schemas, once, at the transport's edge. What passes is a clean value of
 * the contract's types (unknown keys refused); what fails is an EngineError('BadRequest')
 * naming the method and the key: "evaluate: 'text.path' must be a non-empty string".
 */
import * as v from 'valibot'
import type { ApiMethod, ApiParams, ApiRequest } from './contract'
import { EngineError } from './errors'
import { apiParamSchemas } from './schemas'

/** The method names, in the schema table's order. */
export const API_METHODS = Object.freeze(Object.keys(apiParamSchemas) as ApiMethod[])

export function isApiMethod(value: unknown): value is ApiMethod {
  return typeof value === 'string' && Object.hasOwn(apiParamSchemas, value)
}

/** "'variants[1].id'" for the path of an issue; null at the top level. */
function keyPath(issue: v.BaseIssue<unknown>): string | null {
  if (!issue.path?.length) return null
  let out = ''
  for (const item of issue.path) {
    const key = item.key
    out += typeof key === 'number' ? `[${key}]` : `${out ? '.' : ''}${String(key)}`
  }
  return `'${out}'`
}

/** One readable sentence for the first problem valibot found. */
export function describeIssue(issue: v.BaseIssue<unknown>, topLevel = 'params'): string {
  const where = keyPath(issue) ?? topLevel
  // Object schemas report unknown keys (expected: never), missing keys (expected: '"key"')
  // and non-objects (expected: 'Object') with one message of their own; tell them apart.
  if (issue.kind === 'schema' && (issue.type === 'strict_object' || issue.type === 'object' || issue.type === 'variant')) {
    if (issue.expected === 'never') return `unknown key ${where}`
    if (issue.expected === 'Object') return `${where} must be an object`
    if (issue.input === undefined && issue.expected?.startsWith('"')) return `${where} is missing`
  }
  return `${where} ${issue.message}`
}

export function parseWith<S extends v.GenericSchema>(schema: S, value: unknown, prefix: string): v.InferOutput<S> {
  const result = v.safeParse(schema, value, { abortEarly: true })
  if (result.success) return result.output
  throw new EngineError('BadRequest', `${prefix}: ${describeIssue(result.issues[0])}`)
}

/** Checks the params of one method; returns a clean copy. Absent params mean "no params". */
export function parseApiParams<M extends ApiMethod>(method: M, params: unknown): ApiParams<M> {
  if (!isApiMethod(method)) throw new EngineError('BadRequest', `unknown method '${String(method)}'`)
  const value = params ?? {}
  // valibot takes a list for an object (its keys are indices); a call's params never are one.
  if (typeof value !== 'object' || Array.isArray(value)) throw new EngineError('BadRequest', `${method}: params must be an object`)
  const schema: v.GenericSchema = apiParamSchemas[method]
  return parseWith(schema, value, method) as ApiParams<M>
}

/** Parses one wire request ({id, method, params}). */
export function parseApiRequest(value: unknown): ApiRequest {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new EngineError('BadRequest', 'request must be an object')
  const { id, method, params } = value as Record<string, unknown>
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw new EngineError('BadRequest', "request: 'id' must be a non-negative integer")
  if (!isApiMethod(method)) throw new EngineError('BadRequest', `request: unknown method '${String(method)}'`)
  return { id, method, params: parseApiParams(method, params) } as ApiRequest
}
