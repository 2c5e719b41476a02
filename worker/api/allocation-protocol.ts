/**
 * Messages between the engine (allocation-thread.ts) and the allocation worker
 * (allocation.worker.ts). The worker does the slow parts of allocation on its own thread:
 * measuring what an allocator decides by (LSAQ importance; per-tensor ΔKLD, disk-cached) and
 * evaluating the perplexity of a sweep's plans. The allocation itself (a knapsack over a few
 * hundred items) is fast and runs on the engine thread, so moving the budget slider once the
 * measurements are in needs no thread at all. Plain data only (structured clone).
 */
import type { BackendKind } from '../inference/ort-backend'
import type { AllocatorId } from '../plan/allocate'
import type { Plan } from '../plan/plan'
import type { SerializedError } from '../jobs/serialized-error'

export interface AllocationWorkerJob {
  /** The model's path as opened (folder or file). */
  modelPath: string
  ctx: number
  backend?: BackendKind
  threads?: number
  /** Measure for these allocators (each at most once); empty: nothing to measure. */
  measure: {
    allocators: AllocatorId[]
    /** The option set as written (`rtn:bits=4,group=128;rtn:bits=3,group=128`). */
    options: string
    allTensors: boolean
    textFile: string
    windows: number
    /** ΔKLD result cache; undefined: the default folder, null: none. */
    cacheDir?: string | null
  }
  /** Plans to evaluate (perplexity over `windows` windows of `textFile`), in order. */
  evaluate?: { textFile: string; windows: number; plans: { label: string; plan: Plan }[] }
}

export interface AllocationWorkerProgress {
  stage: 'loading' | 'measuring' | 'evaluating'
  done: number
  total: number
  /** What is being measured or evaluated. */
  label?: string
}

export interface AllocationWorkerResult {
  /** LSAQ importance per decoder layer, when measured. */
  importance?: number[]
  /** ΔKLD per tensor name and option spec, when measured. */
  costs?: Map<string, Map<string, number>>
  /** Measurements taken from the ΔKLD cache / measured now. */
  cached: number
  measured: number
  /** Per evaluated plan, in order. */
  evaluations: { label: string; ppl: number; windows: number }[]
  seconds: number
}

export type AllocationWorkerRequest = { type: 'run'; job: AllocationWorkerJob } | { type: 'cancel' }

export type AllocationWorkerMessage =
  | { type: 'progress'; progress: AllocationWorkerProgress }
  | { type: 'result'; result: AllocationWorkerResult }
  | { type: 'error'; error: SerializedError }
