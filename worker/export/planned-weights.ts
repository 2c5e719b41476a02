/**
 * The plan's quantized tensors for an exporter, one at a time: the same calibration capture,
 * finiteness check and quantizeEntry as `eval --plan` (plan/apply.ts), so what an export
 * writes is what the app evaluated, bit for bit. Holds one weight and its quantized form.
 */
import type { ResolvedEntry } from '../plan/plan'
import { captureCalibration } from '../plan/calibration'
import { checkPlannedWeightsFinite, quantizeEntry, readOrientedWeight } from '../plan/apply'
import type { LayerCalibration, QuantizedTensor } from '../quant/contract'
import { formatQuantSpec } from '../quant/spec'
import type { ExportHooks, ExportJob } from './contract'

export class PlannedWeights {
  private calibration: Map<string, LayerCalibration> = new Map()
  private readonly byName: Map<string, ResolvedEntry>

  private constructor(
    private readonly job: ExportJob,
    private readonly hooks: ExportHooks,
  ) {
    this.byName = new Map(job.entries.map((e) => [e.tensor.name, e]))
  }

  /** Checks the planned weights and captures the calibration the methods need, before any writing. */
  static async prepare(job: ExportJob, hooks: ExportHooks): Promise<PlannedWeights> {
    const planned = new PlannedWeights(job, hooks)
    await checkPlannedWeightsFinite(job.model, job.entries, hooks.signal)
    planned.calibration = await captureCalibration(job.model, job.entries, job.options.calibration, {
      signal: hooks.signal,
      onProgress: (p) => hooks.onProgress?.({ stage: 'calibrating', done: p.done, total: p.total }),
    })
    return planned
  }

  /** The plan's entry for a stored tensor, or undefined when the tensor is kept. */
  entry(name: string): ResolvedEntry | undefined {
    return this.byName.get(name)
  }

  /** The source weight ([out, in], float32) and its quantized form. */
  async quantize(entry: ResolvedEntry): Promise<{ weight: Float32Array; quantized: QuantizedTensor }> {
    this.hooks.signal?.throwIfAborted()
    const weight = await readOrientedWeight(this.job.model, entry, this.hooks.signal)
    const quantized = quantizeEntry(entry, weight, this.calibration.get(entry.tensor.name), { signal: this.hooks.signal })
    return { weight, quantized }
  }
}

/** The entry's method and params as a spec string ('rtn:bits=4,group=128,sym=false,clip=none'). */
export function entrySpec(entry: ResolvedEntry): string {
  try {
    return formatQuantSpec(entry.methodId, entry.params)
  } catch {
    return `${entry.methodId} ${JSON.stringify(entry.params)}`
  }
}

/** How far the values a format writes are from the plan's (what ExportedTensor reports). */
export interface WrittenError {
  maxAbsError: number
  /** Root mean square of written − planned. */
  rmsError: number
}

/**
 * Written vs planned values of one tensor. With `exactTensor` the format claims to store the
 * plan exactly, so any difference is an exporter bug and throws, naming the tensor and encoding.
 */
export function writtenError(written: ArrayLike<number>, planned: ArrayLike<number>, exactTensor?: { tensor: string; encoding: string }): WrittenError {
  if (written.length !== planned.length) throw new Error(`${exactTensor?.tensor ?? 'tensor'}: ${written.length} written values for ${planned.length} planned; this is a bug`)
  let maxAbsError = 0
  let sumSq = 0
  for (let i = 0; i < written.length; i++) {
    const d = Math.abs(written[i]! - planned[i]!)
    if (d > maxAbsError) maxAbsError = d
    sumSq += d * d
  }
  if (exactTensor && maxAbsError !== 0) {
    throw new Error(`${exactTensor.tensor}: the ${exactTensor.encoding} does not reproduce the plan's values (max |error| ${maxAbsError}); this is a bug`)
  }
  return { maxAbsError, rmsError: Math.sqrt(sumSq / Math.max(1, written.length)) }
}
