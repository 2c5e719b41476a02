/**
 * Messages between the engine (importance-thread.ts) and the importance worker
 * (importance.worker.ts). Layer importance runs the evaluation graph over the text (and, for
 * measured sensitivity, one evaluation per block): minutes of work that must not hold the
 * engine thread. Plain data only (structured clone): the worker opens the model itself.
 */
import type { BackendKind } from '../inference/ort-backend'
import type { SerializedError } from '../jobs/serialized-error'
import type { IMPORTANCE_METHOD_IDS } from './schemas'

export type ImportanceMethodId = (typeof IMPORTANCE_METHOD_IDS)[number]

export interface ImportanceWorkerJob {
  /** The model's path as opened (folder or file). */
  modelPath: string
  /** The text file, resolved (held-out text or the user's file). */
  textFile: string
  methods: ImportanceMethodId[]
  k: number
  finalNorm: boolean
  ctx: number
  maxWindows?: number
  /** Sensitivity and local: the spec one block at a time is quantized with (local: default rtn:bits=4,group=128). */
  quant?: string
  backend?: BackendKind
  threads?: number
  /** Sensitivity result cache; undefined: the default folder, null: none (also no local-proxy result cache). */
  cacheDir?: string | null
}

/**
 * One stage's progress: loading (weight tensors), evaluating (windows), measuring (blocks of
 * sensitivity), calibrating (the local proxy's capture windows), local (its tensors).
 */
export interface ImportanceWorkerProgress {
  stage: 'loading' | 'evaluating' | 'measuring' | 'calibrating' | 'local'
  done: number
  total: number
}

export interface ImportanceWorkerResult {
  /** Block indices, ascending: every method's values follow this order. */
  layers: number[]
  lsaq?: number[]
  cosine?: number[]
  /** Per layer (null: the block has no linear weight the spec quantizes). */
  sensitivity?: { deltaKld: (number | null)[]; deltaPpl: (number | null)[]; basePpl: number; spec: string; cached: boolean }
  /** Per layer, the local error proxy (null: the spec fits none of the block's linears). */
  local?: { values: (number | null)[]; spec: string; tokens: number; cached: boolean }
  k: number | null
  finalNorm: boolean | null
  ctx: number
  windows: number
  tokens: number
  backend: BackendKind
  seconds: number
}

export type ImportanceWorkerRequest = { type: 'run'; job: ImportanceWorkerJob } | { type: 'cancel' }

export type ImportanceWorkerMessage =
  | { type: 'progress'; progress: ImportanceWorkerProgress }
  | { type: 'result'; result: ImportanceWorkerResult }
  | { type: 'error'; error: SerializedError }
