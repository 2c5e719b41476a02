import { resolve } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { captureCalibration } from '../plan/calibration'
import { checkPlannedWeightsFinite, quantizeEntry, readOrientedWeight } from '../plan/apply'
import type { ResolvedEntry } from '../plan/plan'
import type { QuantizeTensorResult } from '../plan/quant-protocol'
import { QuantService } from '../plan/quant-service'
import { planSize } from '../plan/size'
import type { LayerCalibration } from '../quant/contract'
import { quantErrorMetrics } from '../quant/metrics'
import { formatQuantSpec } from '../quant/spec'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { formatBytes, progressLine } from './format'
import { PLAN_FLAGS, planArgument } from './plan-args'

/** One tensor of the `quantize --json` report (a contract scripts rely on). */
export interface QuantizedTensorReport {
  name: string
  method: string
  /** The method and its params as a spec string (every param, defaults included). */
  spec: string
  shape: [number, number]
  bytes: number
  storedBytes: number
  bitsPerWeight: number
  mse: number
  sqnrDb: number
  maxAbsError: number
  /** Mean squared error of one output element on the calibration activations (methods with XᵀX only). */
  outputMse: number | null
  seconds: number
}

export interface QuantizeReport {
  model: string
  plan: string
  tensors: QuantizedTensorReport[]
  totals: {
    tensors: number
    params: number
    bytes: number
    storedBytes: number
    bitsPerWeight: number | null
    /** The whole model as planned (quantized tensors at their storage, the rest as stored). */
    modelBytes: number
    modelBitsPerWeight: number
    calibrationSeconds: number
    seconds: number
  }
}

export interface QuantizeModelOptions {
  /** Worker threads quantizing tensors in parallel; 0: one at a time in this thread (the reference path). */
  threads: number
  signal?: AbortSignal
  /** Progress lines on stderr. */
  progress?: boolean
}

/**
 * `quantize MODEL (--quant SPEC | --plan FILE | --preset NAME) [--calib FILE] [--tokenizer FILE] [--threads N] [--json]`:
 * quantizes every planned tensor without evaluating, N tensors at a time on worker threads
 * (default 2), and reports per tensor (in model order) its method, exact bytes, weight MSE,
 * SQNR, max error (and output MSE where the method had XᵀX), and the seconds it took. Writes
 * no files (exporting is `export`'s).
 */
export async function runQuantize(args: ParsedArgs): Promise<number> {
  const path = args.positionals[0]
  if (!path || args.positionals.length > 1) throw new UsageError('quantize takes exactly one MODEL')
  const threads = intFlag(args, 'threads', DEFAULT_THREADS, 1)
  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const report = await quantizeModel(path, args, { threads, signal: controller.signal, progress: true })
  if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
  else process.stdout.write(renderQuantize(report))
  return 0
}

const DEFAULT_THREADS = 2

/** The `quantize` report of MODEL under the plan the args give (--quant/--plan/--calib/--tokenizer). */
export async function quantizeModel(path: string, args: ParsedArgs, options: QuantizeModelOptions): Promise<QuantizeReport> {
  const { signal } = options
  const tokenizer = args.flags.get('tokenizer')
  const line = options.progress ? progressLine : () => {}
  const t0 = performance.now()
  const model = await openModel(path)
  try {
    const planned = await planArgument(model, args, typeof tokenizer === 'string' ? resolve(tokenizer) : undefined)
    if (!planned) throw new UsageError(`quantize needs ${PLAN_FLAGS}`)
    const { entries } = planned
    await checkPlannedWeightsFinite(model, entries, signal)
    const tc = performance.now()
    const calibration = await captureCalibration(model, entries, planned.calibration, {
      signal,
      onProgress: (p) => line(`calibration ${p.stage}`, p.done, p.total),
    })
    const calibrationSeconds = (performance.now() - tc) / 1000
    let results: TensorResult[]
    if (options.threads === 0) {
      results = []
      for (const [i, entry] of entries.entries()) {
        results.push(await quantizeHere(model, entry, calibration.get(entry.tensor.name), signal))
        line('tensors', i + 1, entries.length)
      }
    } else {
      const service = new QuantService({ threads: options.threads })
      try {
        results = await service.quantizeEntries(path, entries, calibration, { signal, onProgress: (done, total) => line('tensors', done, total) })
      } finally {
        await service.close()
      }
    }
    const tensors = results.map((r, i) => tensorReport(entries[i]!, r))
    const size = planSize(model, entries)
    return {
      model: resolve(path),
      plan: planned.source,
      tensors,
      totals: {
        tensors: tensors.length,
        params: size.planned.params,
        bytes: size.planned.bytes,
        storedBytes: size.planned.storedBytes,
        bitsPerWeight: size.bitsPerWeight,
        modelBytes: size.bytes,
        modelBitsPerWeight: size.modelBitsPerWeight,
        calibrationSeconds,
        seconds: (performance.now() - t0) / 1000,
      },
    }
  } finally {
    await model.close()
  }
}

type TensorResult = Pick<QuantizeTensorResult, 'bytes' | 'metrics' | 'seconds'>

/** The reference path: one tensor in this thread. */
async function quantizeHere(model: OpenedModel, entry: ResolvedEntry, calib: LayerCalibration | undefined, signal?: AbortSignal): Promise<TensorResult> {
  signal?.throwIfAborted()
  const weight = await readOrientedWeight(model, entry, signal)
  const ts = performance.now()
  const q = quantizeEntry(entry, weight, calib, { signal })
  const seconds = (performance.now() - ts) / 1000
  return { bytes: q.bytes, metrics: quantErrorMetrics(weight, q, calib?.gram ? calib : undefined), seconds }
}

function tensorReport(entry: ResolvedEntry, r: TensorResult): QuantizedTensorReport {
  return {
    name: entry.tensor.name,
    method: entry.methodId,
    spec: formatQuantSpec(entry.methodId, entry.params),
    shape: [entry.rows, entry.cols],
    bytes: r.bytes,
    storedBytes: entry.tensor.byteLength,
    bitsPerWeight: (8 * r.bytes) / (entry.rows * entry.cols),
    mse: r.metrics.mse,
    sqnrDb: r.metrics.sqnrDb,
    maxAbsError: r.metrics.maxAbsError,
    outputMse: r.metrics.outputMse,
    seconds: r.seconds,
  }
}

function renderQuantize(r: QuantizeReport): string {
  const width = Math.min(60, Math.max(4, ...r.tensors.map((t) => t.name.length)))
  const lines = [`${'tensor'.padEnd(width)}  ${'method'.padEnd(8)} ${'bytes'.padStart(10)} ${'bpw'.padStart(6)} ${'MSE'.padStart(10)} ${'SQNR dB'.padStart(8)} ${'s'.padStart(6)}`]
  for (const t of r.tensors) {
    lines.push(
      `${t.name.padEnd(width)}  ${t.method.padEnd(8)} ${String(t.bytes).padStart(10)} ${t.bitsPerWeight.toFixed(3).padStart(6)} ${t.mse.toExponential(3).padStart(10)} ${t.sqnrDb.toFixed(2).padStart(8)} ${t.seconds.toFixed(2).padStart(6)}`,
    )
  }
  const s = r.totals
  lines.push(
    '',
    `quantized     ${s.tensors} tensors, ${s.params} weights: ${formatBytes(s.bytes)} (${s.bitsPerWeight?.toFixed(3) ?? '–'} bits per weight; ${formatBytes(s.storedBytes)} as stored)`,
    `whole model   ${formatBytes(s.modelBytes)} (${s.modelBitsPerWeight.toFixed(3)} bits per weight)`,
    `time          ${s.seconds.toFixed(2)} s (calibration ${s.calibrationSeconds.toFixed(2)} s)`,
  )
  return lines.join('\n') + '\n'
}
