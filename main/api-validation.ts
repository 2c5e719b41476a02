/**
 * Runtime checks of API arguments. Both transports take input from a less trusted side (the
 * renderer, or a WebSocket peer), so every call is checked here against the contract before
 * the engine sees it. Pure functions, no Electron, so the sandboxed preload can bundle them.
 */
import type {
  ApiMethod,
  ApiParams,
  ApiRequest,
  EvalTextRef,
  InferenceBackendId,
  SamplingSettings,
  StatsOptions,
  VariantRef,
} from '../worker/api/contract'

export class BadRequestError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'BadRequest'
  }
}

const MAX_STRING = 4096
/** Prompts may be longer than paths and ids. */
const MAX_PROMPT = 32_768
/** Limits of the evaluation settings (far beyond what the UI offers, well short of absurd). */
const MAX_CTX = 32_768
const MAX_WINDOWS = 1_000_000
const MAX_NEW_TOKENS = 4096
const MAX_VARIANTS = 4

export const API_METHODS: readonly ApiMethod[] = Object.freeze([
  'openModel',
  'closeModel',
  'listRecent',
  'defaultModelPath',
  'tensorStats',
  'layerGridStats',
  'cancelJob',
  'evaluate',
  'generate',
  'listBackends',
  'listRuns',
  'listVariants',
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

function integer(obj: Record<string, unknown>, key: string, method: string, lo: number, hi: number): number {
  const v = obj[key]
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw new BadRequestError(`${method}: '${key}' must be an integer in [${lo}, ${hi}]`)
  }
  return v
}

function finite(obj: Record<string, unknown>, key: string, method: string, ok: (v: number) => boolean, what: string): number {
  const v = obj[key]
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new BadRequestError(`${method}: '${key}' must be ${what}`)
  return v
}

function backend(value: unknown, method: string): InferenceBackendId {
  if (value !== 'wasm' && value !== 'native') throw new BadRequestError(`${method}: 'backend' must be 'wasm' or 'native'`)
  return value
}

function textRef(value: unknown, method: string): EvalTextRef {
  const obj = asObject(value, `${method}: 'text'`)
  if (obj.kind === 'heldout') return { kind: 'heldout' }
  if (obj.kind === 'file') return { kind: 'file', path: string(obj, 'path', `${method}: text`) }
  throw new BadRequestError(`${method}: 'text.kind' must be 'heldout' or 'file'`)
}

function variantRef(value: unknown, what: string): VariantRef {
  const obj = asObject(value, what)
  if (obj.kind === 'listed') return { kind: 'listed', id: string(obj, 'id', what) }
  if (obj.kind === 'model') return { kind: 'model', path: string(obj, 'path', what) }
  throw new BadRequestError(`${what}: 'kind' must be 'listed' or 'model'`)
}

function sampling(value: unknown, method: string): SamplingSettings {
  const obj = asObject(value, `${method}: 'sampling'`)
  const what = `${method}: sampling`
  if (obj.kind === 'greedy') return { kind: 'greedy' }
  if (obj.kind !== 'sample') throw new BadRequestError(`${what}: 'kind' must be 'greedy' or 'sample'`)
  return {
    kind: 'sample',
    temperature: finite(obj, 'temperature', what, (v) => v > 0 && v <= 100, 'a number in (0, 100]'),
    topP: finite(obj, 'topP', what, (v) => v > 0 && v <= 1, 'a number in (0, 1]'),
    seed: integer(obj, 'seed', what, 0, 2 ** 32 - 1),
  }
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
    case 'evaluate': {
      if (obj.kld !== undefined && typeof obj.kld !== 'boolean') throw new BadRequestError(`${method}: 'kld' must be a boolean`)
      clean = {
        jobId: string(obj, 'jobId', method),
        modelId: string(obj, 'modelId', method),
        text: textRef(obj.text, method),
        ctx: integer(obj, 'ctx', method, 2, MAX_CTX),
        ...(obj.maxWindows !== undefined ? { maxWindows: integer(obj, 'maxWindows', method, 1, MAX_WINDOWS) } : {}),
        backend: backend(obj.backend, method),
        ...(obj.kld !== undefined ? { kld: obj.kld } : {}),
        ...(obj.variant !== undefined ? { variant: variantRef(obj.variant, `${method}: variant`) } : {}),
      }
      break
    }
    case 'generate': {
      const prompt = obj.prompt
      if (typeof prompt !== 'string' || prompt.length === 0) throw new BadRequestError(`${method}: 'prompt' must be a non-empty string`)
      if (prompt.length > MAX_PROMPT) throw new BadRequestError(`${method}: 'prompt' is longer than ${MAX_PROMPT} characters`)
      const variants = obj.variants
      if (!Array.isArray(variants) || variants.length < 1 || variants.length > MAX_VARIANTS) {
        throw new BadRequestError(`${method}: 'variants' must be a list of 1 to ${MAX_VARIANTS} variants`)
      }
      clean = {
        jobId: string(obj, 'jobId', method),
        modelId: string(obj, 'modelId', method),
        prompt,
        maxTokens: integer(obj, 'maxTokens', method, 1, MAX_NEW_TOKENS),
        sampling: sampling(obj.sampling, method),
        variants: variants.map((v, i) => variantRef(v, `${method}: variants[${i}]`)),
        ...(obj.backend !== undefined ? { backend: backend(obj.backend, method) } : {}),
      }
      break
    }
    case 'listBackends':
      clean = {}
      break
    case 'listRuns':
    case 'listVariants':
      clean = { modelId: string(obj, 'modelId', method) }
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
