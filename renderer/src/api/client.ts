/**
 * The renderer's view of the API: one `call` per contract method and an event stream, over
 * whichever transport this page runs on (Electron preload or browser-mode WebSocket).
 */
import type { ApiError, ApiEvent, ApiMethod, ApiParams, ApiResult, JobMethod, JobProgressDetail } from '../../../worker/api/contract'

export interface ApiClient {
  readonly mode: 'electron' | 'browser'
  call<M extends ApiMethod>(method: M, params: ApiParams<M>): Promise<ApiResult<M>>
  onEvent(listener: (event: ApiEvent) => void): () => void
  /** Desktop only: a dropped file's path. */
  pathForFile?(file: File): string
  /** Desktop only: native open dialog. */
  chooseModelPath?(kind: 'file' | 'folder'): Promise<string | null>
  /** Desktop only: native save dialog (an export's destination). */
  chooseSavePath?(defaultPath: string): Promise<string | null>
  /** Browser mode: connection state changes. */
  onConnection?(listener: (state: ConnectionState) => void): () => void
}

export type ConnectionState = 'connecting' | 'open' | 'closed' | 'unauthorized'

/** A failed call; `apiError` keeps the engine's name, file, tensor and problem. */
export class ApiCallError extends Error {
  constructor(readonly apiError: ApiError) {
    super(apiError.message)
    this.name = apiError.name
  }
  get cancelled(): boolean {
    return this.apiError.cancelled === true
  }
}

export function asApiError(err: unknown): ApiError {
  if (err instanceof ApiCallError) return err.apiError
  if (err instanceof Error) return { name: err.name, message: err.message }
  return { name: 'Error', message: String(err) }
}

export interface Job<T> {
  jobId: string
  promise: Promise<T>
  cancel(): void
}

let jobCounter = 0

/** Starts a job method with a fresh jobId; `onProgress` gets its progress events (inference jobs add a detail). */
export function startJob<M extends JobMethod>(
  client: ApiClient,
  method: M,
  params: Omit<ApiParams<M>, 'jobId'>,
  onProgress: (done: number, total: number, detail?: JobProgressDetail) => void,
): Job<ApiResult<M>> {
  const jobId = `${method}-${Date.now().toString(36)}-${++jobCounter}`
  const off = client.onEvent((event) => {
    if (event.type === 'job-progress' && event.jobId === jobId) onProgress(event.done, event.total, event.detail)
  })
  const promise = client.call(method, { ...params, jobId } as ApiParams<M>).finally(off)
  return {
    jobId,
    promise,
    cancel: () => void client.call('cancelJob', { jobId }).catch(() => {}),
  }
}
