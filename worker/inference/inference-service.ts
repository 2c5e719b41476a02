import type { Worker } from 'node:worker_threads'
import { spawnEngineWorker } from '../jobs/spawn-worker'
import type { CaptureResult } from './activation-capture'
import {
  deserializeError,
  type AnyJobResult,
  type BackendsResult,
  type CaptureJob,
  type GenerateJob,
  type GenerateJobResult,
  type InferenceJob,
  type InferenceMessage,
  type InferenceProgress,
  type InferenceRequest,
  type PerplexityJob,
} from './inference-protocol'
import type { PerplexityResult } from './perplexity'
import type { TextSource } from './text-source'

/**
 * The main-side API of the inference engine, used by the CLI and the UI. Every call runs in
 * its own worker thread (onnxruntime and the weights live there and go away with it),
 * reports progress through `onProgress`, is cancelled through `signal` (the promise then
 * rejects with an AbortError) and resolves to plain data.
 */
export interface InferenceHooks {
  onProgress?(p: InferenceProgress): void
  signal?: AbortSignal
}

/** After a cancel, how long the worker may take to stop at its next window before it is terminated. */
const CANCEL_GRACE_MS = 3000

export type PerplexityOptions = Omit<PerplexityJob, 'kind' | 'model' | 'text'>
export type GenerateOptions = Omit<GenerateJob, 'kind' | 'model' | 'prompt'>
export type CaptureOptions = Omit<CaptureJob, 'kind' | 'model' | 'text'>

/** Perplexity (and with `kld`, KL divergence against the base) of a model on a text. */
export function evalPerplexity(modelPath: string, text: TextSource, options: PerplexityOptions = {}, hooks: InferenceHooks = {}): Promise<PerplexityResult> {
  return runJob({ kind: 'perplexity', model: modelPath, text, ...options }, hooks) as Promise<PerplexityResult>
}

/** Generation from one prompt by one or more variants (side by side), with the KV cache. */
export function generate(modelPath: string, prompt: string | { tokens: number[] }, options: GenerateOptions = {}, hooks: InferenceHooks = {}): Promise<GenerateJobResult> {
  return runJob({ kind: 'generate', model: modelPath, prompt, ...options }, hooks) as Promise<GenerateJobResult>
}

/** Per-channel activation statistics (and Gram matrices on request) over a text. */
export function captureActivations(modelPath: string, text: TextSource, options: CaptureOptions = {}, hooks: InferenceHooks = {}): Promise<CaptureResult> {
  return runJob({ kind: 'capture', model: modelPath, text, ...options }, hooks) as Promise<CaptureResult>
}

/** Which backends load on this machine (checked in a worker, so the caller never loads them). */
export function availableBackends(): Promise<BackendsResult> {
  return runJob({ kind: 'backends' }) as Promise<BackendsResult>
}

let nextJobId = 1

export function runJob(job: InferenceJob, hooks: InferenceHooks = {}): Promise<AnyJobResult> {
  const { signal, onProgress } = hooks
  if (signal?.aborted) return Promise.reject(new DOMException('cancelled', 'AbortError'))
  const jobId = nextJobId++
  const worker: Worker = spawnEngineWorker('inference')
  return new Promise((resolvePromise, rejectPromise) => {
    let settled = false
    let graceTimer: NodeJS.Timeout | null = null
    const finish = (err: Error | null, result?: AnyJobResult): void => {
      if (settled) return
      settled = true
      signal?.removeEventListener('abort', onAbort)
      if (graceTimer) clearTimeout(graceTimer)
      void worker.terminate()
      if (err) rejectPromise(err)
      else resolvePromise(result!)
    }
    const onAbort = (): void => {
      worker.postMessage({ type: 'cancel', jobId } satisfies InferenceRequest)
      graceTimer = setTimeout(() => finish(new DOMException('cancelled', 'AbortError')), CANCEL_GRACE_MS)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    worker.on('message', (msg: InferenceMessage) => {
      if (msg.jobId !== jobId) return
      switch (msg.type) {
        case 'progress':
          if (!settled) onProgress?.(msg.progress)
          break
        case 'result':
          finish(null, msg.result)
          break
        case 'error':
          finish(deserializeError(msg.error))
          break
      }
    })
    worker.on('error', (err) => finish(err))
    worker.on('exit', (code) => finish(new Error(`the inference worker exited (code ${code}) before finishing`)))
    worker.postMessage({ type: 'run', jobId, job } satisfies InferenceRequest)
  })
}
