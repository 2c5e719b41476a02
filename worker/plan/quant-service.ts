/**
 * Quantization off the calling thread: a WorkerPool of plan quant workers (quant.worker.ts)
 * that read, quantize and measure one tensor per job. The engine thread (API) and the CLI
 * use it so quantizing never blocks them, and a whole model goes N tensors at a time.
 *
 * - `quantizeTensor`: one tensor, one method → storage, bytes, error metrics, seconds and,
 *   when asked, the inspector's payloads (quant-preview.ts).
 * - `quantizeEntries`: every planned tensor, spread over the pool, results in model order.
 * - `captureCalibration`: the calibration a list of (tensor, method) needs, captured in a
 *   worker through the capture cache (calibration-cache.ts), one result per entry.
 * Every call reports progress and is cancelled by its AbortSignal.
 */
import { abortError } from '../jobs/abort'
import type { JobHooks } from '../jobs/pool'
import { WorkerPool } from '../jobs/pool'
import type { LayerCalibration } from '../quant/contract'
import type { CalibrationOptions } from './calibration'
import type { ResolvedEntry } from './plan'
import type { CaptureCalibrationResult, PlanQuantJobs, QuantizeTensorParams, QuantizeTensorResult } from './quant-protocol'

export interface QuantServiceOptions {
  /** Worker threads (default 2). */
  threads?: number
}

/** Errors the workers raise, rebuilt with their names (the API reports 'PlanError' as such). */
const KNOWN_ERRORS: Record<string, (message: string) => Error> = {
  PlanError: (message) => Object.assign(new Error(message), { name: 'PlanError' }),
  QuantParamError: (message) => Object.assign(new Error(message), { name: 'QuantParamError' }),
}

export class QuantService {
  private readonly pool: WorkerPool<PlanQuantJobs>

  constructor(options: QuantServiceOptions = {}) {
    this.pool = new WorkerPool<PlanQuantJobs>({ worker: 'plan-quant', threads: options.threads, knownErrors: KNOWN_ERRORS })
  }

  get threads(): number {
    return this.pool.threads
  }

  quantizeTensor(params: QuantizeTensorParams, hooks: JobHooks = {}): Promise<QuantizeTensorResult> {
    return this.pool.run('quantizeTensor', params, hooks)
  }

  /**
   * Every entry of a resolved plan, in parallel over the pool; results in the entries' order.
   * `calibration` holds what the entries' methods need (captureCalibration's map, by tensor).
   * Progress counts tensors done.
   */
  async quantizeEntries(
    modelPath: string,
    entries: readonly ResolvedEntry[],
    calibration: ReadonlyMap<string, LayerCalibration>,
    hooks: JobHooks & { kernel?: 'ts' | 'wasm'; onTensor?(result: QuantizeTensorResult, index: number): void } = {},
  ): Promise<QuantizeTensorResult[]> {
    if (hooks.signal?.aborted) throw abortError()
    let done = 0
    const jobs = entries.map((e, i) => {
      const job = this.pool.submit('quantizeTensor', {
        modelPath,
        tensor: e.tensor.name,
        methodId: e.methodId,
        params: e.params,
        ...(calibration.has(e.tensor.name) ? { calibration: calibration.get(e.tensor.name)! } : {}),
        ...(hooks.kernel ? { kernel: hooks.kernel } : {}),
      })
      const promise = job.promise.then((r) => {
        hooks.onTensor?.(r, i)
        hooks.onProgress?.(++done, entries.length)
        return r
      })
      return { promise, cancel: job.cancel }
    })
    const cancelAll = () => jobs.forEach((j) => j.cancel())
    hooks.signal?.addEventListener('abort', cancelAll, { once: true })
    try {
      // The first failure cancels the rest, so a bad tensor never waits behind the whole model.
      return await Promise.all(jobs.map((j) => j.promise.catch((err: unknown) => (cancelAll(), Promise.reject(err)))))
    } catch (err) {
      // Settle every job before returning, so none still reports progress afterwards.
      await Promise.allSettled(jobs.map((j) => j.promise))
      throw hooks.signal?.aborted ? abortError() : err
    } finally {
      hooks.signal?.removeEventListener('abort', cancelAll)
    }
  }

  /** Calibration per entry (null where its method needs none), captured in a worker, cached. */
  async captureCalibration(
    modelPath: string,
    entries: readonly { tensor: string; methodId: string; params: Record<string, unknown> }[],
    options: CalibrationOptions,
    hooks: JobHooks = {},
  ): Promise<CaptureCalibrationResult> {
    return this.pool.run('captureCalibration', { modelPath, entries: [...entries], options }, hooks)
  }

  close(): Promise<void> {
    return this.pool.close()
  }
}
