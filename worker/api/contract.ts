/**
 * The one API contract between the Quantscope UI and the engine. Both transports carry it
 * unchanged: Electron IPC (preload `window.quantscope`, main/ipc-transport.ts) and the
 * browser-mode WebSocket (main/browser/host.ts). Pure types only, so the renderer can import
 * it without pulling in any Node code.
 *
 * Every method is a request with one response. Long methods (statistics) are jobs: the caller
 * picks a `jobId`, receives `job-progress` events for it while it runs, and may call
 * `cancelJob`; the response then fails with `cancelled: true`.
 */
import type { ModelConfig, ModelFormatId } from '../formats/contract'
import type { StatsOptions, TensorStats } from '../stats/stats-types'

export type { ModelConfig, ModelFormatId, StatsOptions, TensorStats }

/** Linear roles of a transformer block, in the order the layer grid shows them. */
export type LinearRole = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down'

/** Scalar statistics the layer grid can colour cells by. */
export type GridStatistic = 'absmax' | 'kurtosis' | 'std' | 'mean' | 'zeros'

/** One tensor as the UI lists it: where it sits in the model and what it costs. */
export interface TensorInfo {
  name: string
  dtype: string
  shape: number[]
  params: number
  bytes: number
  /** File name relative to the model's folder. */
  file: string
  /** Transformer block index, or null for embeddings, head, final norm, unassigned. */
  layer: number | null
  /** 'q' … 'down' for linears, the norm name for norms, null when unknown. */
  role: string | null
  /** Group in the model tree. */
  group: 'block' | 'embeddings' | 'lm_head' | 'final_norm' | 'unassigned'
  /** False when this build cannot decode the stored type (stats unavailable). */
  decodable: boolean
}

export interface BlockInfo {
  index: number
  linears: Partial<Record<LinearRole, string>>
  norms: Record<string, string>
  others: string[]
}

export interface DtypeShare {
  dtype: string
  tensors: number
  params: number
  bytes: number
}

export interface ModelFileInfo {
  /** Absolute path. */
  path: string
  /** Name relative to the model root. */
  name: string
  bytes: number
  /** Tensors stored in this file (0 for config/tokenizer files). */
  tensors: number
}

export interface ModelSummary {
  /** Handle for later calls; valid until the model is closed or the engine restarts. */
  modelId: string
  /** Path the user opened (file or folder). */
  path: string
  /** Display name: folder or file name. */
  name: string
  format: ModelFormatId
  architecture: string | null
  config: ModelConfig | null
  params: number
  bytes: number
  bytesByDtype: DtypeShare[]
  files: ModelFileInfo[]
  tensors: TensorInfo[]
  /** Roles present in this model, in grid order (a subset of q k v o gate up down). */
  linearRoles: LinearRole[]
  blocks: BlockInfo[]
  embeddings: string | null
  lmHead: string | null
  tiedEmbeddings: boolean
  finalNorm: string | null
  unassigned: string[]
  tokenizerPath: string | null
  /** A few format metadata entries, stringified and shortened for display. */
  metadata: { key: string; value: string }[]
}

export interface RecentModel {
  path: string
  name: string
  format: ModelFormatId | null
  /** Milliseconds since the epoch. */
  openedAt: number
}

export interface DefaultModelInfo {
  /** Model to open at start-up, or null when there is none. */
  path: string | null
  /** 'argument': given on the command line; 'embedded': resources/models/default. */
  source: 'argument' | 'embedded' | 'none'
  /** Why there is no model (shown in the UI), or null. */
  message: string | null
}

/** The scalar part of TensorStats (what the grid and tables show). */
export type TensorScalarStats = Pick<
  TensorStats,
  'rows' | 'cols' | 'count' | 'min' | 'max' | 'mean' | 'std' | 'absmax' | 'kurtosis' | 'nan' | 'inf' | 'zeros'
>

export interface LayerGridCell {
  block: number
  role: LinearRole
  tensor: string
  stats: TensorScalarStats
}

export interface LayerGridStats {
  modelId: string
  roles: LinearRole[]
  blocks: number[]
  cells: LayerGridCell[]
  /** Linears that could not be analysed (undecodable type), with the reason. */
  skipped: { tensor: string; reason: string }[]
}

/** Method table: params and result of every call. */
export interface ApiMethods {
  openModel: { params: { path: string }; result: ModelSummary }
  closeModel: { params: { modelId: string }; result: { closed: boolean } }
  listRecent: { params: Record<string, never>; result: RecentModel[] }
  defaultModelPath: { params: Record<string, never>; result: DefaultModelInfo }
  tensorStats: {
    params: { modelId: string; tensor: string; options?: Partial<StatsOptions>; jobId: string }
    result: TensorStats
  }
  layerGridStats: { params: { modelId: string; jobId: string }; result: LayerGridStats }
  cancelJob: { params: { jobId: string }; result: { cancelled: boolean } }
}

export type ApiMethod = keyof ApiMethods
export type ApiParams<M extends ApiMethod> = ApiMethods[M]['params']
export type ApiResult<M extends ApiMethod> = ApiMethods[M]['result']

/** Methods that run as jobs (take a jobId, emit progress, can be cancelled). */
export type JobMethod = 'tensorStats' | 'layerGridStats'

/** A request on the wire: a discriminated union on `method`. */
export type ApiRequest = { [M in ApiMethod]: { id: number; method: M; params: ApiParams<M> } }[ApiMethod]

export interface ApiError {
  /** 'ModelFormatError', 'NotFound', 'BadRequest', 'Cancelled', 'Error' … */
  name: string
  message: string
  /** For ModelFormatError: the file, tensor and problem as the reader reported them. */
  file?: string
  tensor?: string | null
  problem?: string
  cancelled?: boolean
}

export type ApiResponse =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: ApiError }

/** Events the engine pushes to the UI. */
export type ApiEvent =
  | { type: 'job-progress'; jobId: string; done: number; total: number }
  | { type: 'job-finished'; jobId: string; outcome: 'done' | 'failed' | 'cancelled' }
  /** Desktop only: File → Open Model, a recent model or a second launch asked to open a path. */
  | { type: 'open-model-request'; path: string }

/** Messages from engine to UI on the WebSocket. */
export type ServerMessage = ({ kind: 'response' } & ApiResponse) | { kind: 'event'; event: ApiEvent }

/** Per-method functions, as the engine implements them. */
export type ApiFunctions = { [M in ApiMethod]: (params: ApiParams<M>) => Promise<ApiResult<M>> }

/** A result or an error, as values: Errors lose their fields when they cross contextBridge. */
export type ApiOutcome<T> = { ok: true; result: T } | { ok: false; error: ApiError }

/**
 * `window.quantscope` in the desktop app (main/preload.ts): one function per method, each
 * resolving to an ApiOutcome (the renderer's transport unwraps it), plus the shell helpers.
 */
export type QuantscopeBridge = { [M in ApiMethod]: (params: ApiParams<M>) => Promise<ApiOutcome<ApiResult<M>>> } & {
  readonly mode: 'electron'
  onEvent(listener: (event: ApiEvent) => void): () => void
  /** Absolute path of a dropped File (webUtils.getPathForFile); '' when it has none. */
  pathForFile(file: File): string
  /** Native open dialog; resolves to the chosen path or null. */
  chooseModelPath(kind: 'file' | 'folder'): Promise<string | null>
}
