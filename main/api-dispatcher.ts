/**
 * Turns one request into one response envelope, whatever the transport. Errors never cross
 * as exceptions (Electron would flatten them to a string): they become ApiError values that
 * keep the ModelFormatError's file, tensor and problem.
 *
 * Parameters are checked once, where they enter from a less trusted side: `dispatchRequest`
 * (WebSocket messages) and the IPC transport parse them; `dispatchChecked` serves the engine
 * thread, whose requests come from those transports already checked.
 */
import type { ApiError, ApiEvent, ApiFunctions, ApiMethod, ApiParams, ApiRequest, ApiResponse } from '../worker/api/contract'
import { parseApiRequest } from '../worker/api/parse-request'

/** What a transport needs from the engine: the method table plus an event stream. */
export interface ApiBackend extends ApiFunctions {
  onEvent(listener: (event: ApiEvent) => void): () => void
}

export function toApiError(err: unknown): ApiError {
  if (err && typeof err === 'object') {
    const e = err as { name?: unknown; message?: unknown; file?: unknown; tensor?: unknown; problem?: unknown }
    const name = typeof e.name === 'string' ? e.name : 'Error'
    const message = typeof e.message === 'string' ? e.message : String(err)
    if (name === 'AbortError' || name === 'Cancelled') return { name: 'Cancelled', message: 'cancelled', cancelled: true }
    const out: ApiError = { name, message }
    if (typeof e.file === 'string') out.file = e.file
    if (typeof e.tensor === 'string' || e.tensor === null) out.tensor = e.tensor as string | null
    if (typeof e.problem === 'string') out.problem = e.problem
    return out
  }
  return { name: 'Error', message: String(err) }
}

/** Calls one method with parameters that have passed their schema. */
export function callBackend<M extends ApiMethod>(backend: ApiFunctions, method: M, params: ApiParams<M>): Promise<unknown> {
  const fn = backend[method] as (p: ApiParams<M>) => Promise<unknown>
  return fn.call(backend, params)
}

/** Handles one checked request; never throws. */
export async function dispatchChecked(backend: ApiFunctions, request: ApiRequest): Promise<ApiResponse> {
  try {
    return { id: request.id, ok: true, result: await callBackend(backend, request.method, request.params) }
  } catch (err) {
    return { id: request.id, ok: false, error: toApiError(err) }
  }
}

/** Handles one raw wire message ({id, method, params}) from an untrusted peer; never throws. */
export async function dispatchRequest(backend: ApiFunctions, raw: unknown): Promise<ApiResponse> {
  let request: ApiRequest
  try {
    request = parseApiRequest(raw)
  } catch (err) {
    const id = typeof (raw as { id?: unknown })?.id === 'number' ? (raw as { id: number }).id : -1
    return { id, ok: false, error: toApiError(err) }
  }
  return dispatchChecked(backend, request)
}
