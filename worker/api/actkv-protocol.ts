/**
 * Messages between the engine (actkv-thread.ts) and the activation/KV worker
 * (actkv-view.worker.ts), and the plain results of its three jobs: k-means activation
 * codebooks for an evaluation (the same fit the CLI runs, off the engine thread), the
 * activation view of one layer and the KV view of one layer and kv head. Structured-clone data
 * only: the worker opens the model itself.
 */
import type { BackendKind } from '../inference/ort-backend'
import type { SerializedError } from '../jobs/serialized-error'
import type { ActivationViewResult, ActNorm, KvViewResult } from './actkv-types'

export type * from './actkv-types'


interface Common {
  modelPath: string
  backend?: BackendKind
  threads?: number
}

/** plan/act-codebooks.ts kmeansActOptions on the calibration text, as `eval --act kmeans:…` runs it. */
export interface CodebooksJob extends Common {
  kind: 'codebooks'
  bits: number
  outliers: number
  norm: ActNorm
  /** Calibration windows of 256 tokens (default: act-codebooks.ts's 32). */
  maxWindows?: number
}

export interface ActivationViewJob extends Common {
  kind: 'activationView'
  layer: number
  bits: number
  outliers: number
  norm: ActNorm
  bins: number
  maxWindows: number
  topChannels: number
}

export interface KvViewJob extends Common {
  kind: 'kvView'
  layer: number
  kvHead: number
  tokens: number
  calibrationWindows: number
}

export type ActKvJob = CodebooksJob | ActivationViewJob | KvViewJob

export interface CodebooksResult {
  codebooks: Record<string, Float32Array>
  calibrationTokens: number
}

export type ActKvResult = CodebooksResult | ActivationViewResult | KvViewResult

export interface ActKvProgress {
  stage: 'loading' | 'calibrating' | 'evaluating'
  done: number
  total: number
}

export type ActKvRequest = { type: 'run'; job: ActKvJob } | { type: 'cancel' }

export type ActKvMessage = { type: 'progress'; progress: ActKvProgress } | { type: 'result'; result: ActKvResult } | { type: 'error'; error: SerializedError }
