/**
 * Runtime checks of API arguments. Both transports take input from a less trusted side (the
 * renderer, or a WebSocket peer), so every call is checked here against the contract before
 * the engine sees it. Pure functions, no Electron, so the sandboxed preload can bundle them.
 */
import type { ApiMethod, ApiParams, ApiRequest, StatsOptions } from '../worker/api/contract'

export class BadRequestError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'BadRequest'
  }
}

const MAX_STRING = 4096

export const API_METHODS: readonly ApiMethod[] = Object.freeze([
  'openModel',
  'closeModel',
  'listRecent',
  'defaultModelPath',
  'tensorStats',
  'layerGridStats',
  'cancelJob',
])

export function isApiMethod(value: unknown): value is ApiMethod {
  return typeof value === 'string' && (API_METHODS as readonly string[]).includes(value)
}

function asObject(value: unknown, what: string): Record<string, unknown> {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) throw new BadRequestError(`${what} must be an object`)
  return value as Record<string, unknown>
}

function string(obj: Record<string, unknown>, key: string, method: string): string {
  const v = obj[key]
  if (typeof v !== 'string' || v.length === 0) throw new BadRequestError(`${method}: '${key}' must be a non-empty string`)
  if (v.length > MAX_STRING) throw new BadRequestError(`${method}: '${key}' is longer than ${MAX_STRING} characters`)
  if (v.includes('\0')) throw new BadRequestError(`${method}: '${key}' contains a NUL character`)
  return v
}

function statsOptions(value: unknown, method: string): Partial<StatsOptions> | undefined {
  if (value === undefined) return undefined
  const obj = asObject(value, `${method}: 'options'`)
  const out: Partial<StatsOptions> = {}
  const limits: Record<keyof StatsOptions, [number, number]> = { bins: [2, 4096], topK: [0, 1024], heatmapSize: [1, 512] }
  for (const key of Object.keys(obj)) {
    if (!(key in limits)) throw new BadRequestError(`${method}: unknown option '${key}'`)
    const [lo, hi] = limits[key as keyof StatsOptions]
    const v = obj[key]
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
      throw new BadRequestError(`${method}: option '${key}' must be an integer in [${lo}, ${hi}]`)
    }
    out[key as keyof StatsOptions] = v
  }
  return out
}

/** Checks the params of one method and returns a clean copy holding only known keys. */
export function validateParams<M extends ApiMethod>(method: M, params: unknown): ApiParams<M> {
  const obj = asObject(params, `${method}: params`)
  let clean: unknown
  switch (method) {
    case 'openModel':
      clean = { path: string(obj, 'path', method) }
      break
    case 'closeModel':
      clean = { modelId: string(obj, 'modelId', method) }
      break
    case 'listRecent':
    case 'defaultModelPath':
      clean = {}
      break
    case 'tensorStats': {
      const options = statsOptions(obj.options, method)
      clean = {
        modelId: string(obj, 'modelId', method),
        tensor: string(obj, 'tensor', method),
        jobId: string(obj, 'jobId', method),
        ...(options ? { options } : {}),
      }
      break
    }
    case 'layerGridStats':
      clean = { modelId: string(obj, 'modelId', method), jobId: string(obj, 'jobId', method) }
      break
    case 'cancelJob':
      clean = { jobId: string(obj, 'jobId', method) }
      break
    default:
      throw new BadRequestError(`unknown method '${String(method)}'`)
  }
  return clean as ApiParams<M>
}

/** Parses one wire request ({id, method, params}); throws BadRequestError with the reason. */
export function validateRequest(value: unknown): ApiRequest {
  const obj = asObject(value, 'request')
  const id = obj.id
  if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw new BadRequestError("request: 'id' must be a non-negative integer")
  if (!isApiMethod(obj.method)) throw new BadRequestError(`request: unknown method '${String(obj.method)}'`)
  return { id, method: obj.method, params: validateParams(obj.method, obj.params) } as ApiRequest
}
