/**
 * Turns one checked request into one response envelope, whatever the transport. Errors never
 * cross as exceptions (Electron would flatten them to a string): they become ApiError values
 * that keep the ModelFormatError's file, tensor and problem.
 */
import type { ApiError, ApiEvent, ApiFunctions, ApiMethod, ApiParams, ApiResponse } from '../worker/api/contract'
import { validateParams, validateRequest } from './api-validation'

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

export async function callBackend<M extends ApiMethod>(backend: ApiFunctions, method: M, rawParams: unknown): Promise<unknown> {
  const params = validateParams(method, rawParams)
  const fn = backend[method] as (p: ApiParams<M>) => Promise<unknown>
  return fn.call(backend, params)
}

/** Handles one raw wire message ({id, method, params}); never throws. */
export async function dispatchRequest(backend: ApiFunctions, raw: unknown): Promise<ApiResponse> {
  const id = typeof (raw as { id?: unknown })?.id === 'number' ? (raw as { id: number }).id : -1
  try {
    const request = validateRequest(raw)
    const result = await callBackend(backend, request.method, request.params)
    return { id: request.id, ok: true, result }
  } catch (err) {
    return { id, ok: false, error: toApiError(err) }
  }
}
