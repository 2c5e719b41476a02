import { resolve } from 'node:path'
import { openModel } from '../formats/open-model'
import { captureCalibration } from '../plan/calibration'
import { checkPlannedWeightsFinite, quantizeEntry, readOrientedWeight } from '../plan/apply'
import { planSize } from '../plan/size'
import { quantErrorMetrics } from '../quant/metrics'
import { formatQuantSpec } from '../quant/spec'
import { UsageError, type ParsedArgs } from './args'
import { formatBytes, progressLine } from './format'
import { planArgument } from './plan-args'

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

/**
 * `quantize MODEL (--quant SPEC | --plan FILE) [--calib FILE] [--tokenizer FILE] [--json]`:
 * quantizes every planned tensor without evaluating, and reports per tensor its method,
 * exact bytes, weight MSE, SQNR, max error (and output MSE where the method had XᵀX), and
 * the seconds it took. Writes no files (exporting is `export`'s).
 */
export async function runQuantize(args: ParsedArgs): Promise<number> {
  const path = args.positionals[0]
  if (!path || args.positionals.length > 1) throw new UsageError('quantize takes exactly one MODEL')
  const tokenizer = args.flags.get('tokenizer')
  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const t0 = performance.now()
  const model = await openModel(path)
  try {
    const planned = await planArgument(model, args, typeof tokenizer === 'string' ? resolve(tokenizer) : undefined)
    if (!planned) throw new UsageError('quantize needs --quant SPEC or --plan FILE')
    const { entries } = planned
    await checkPlannedWeightsFinite(model, entries, controller.signal)
    const tc = performance.now()
    const calibration = await captureCalibration(model, entries, planned.calibration, {
      signal: controller.signal,
      onProgress: (p) => progressLine(`calibration ${p.stage}`, p.done, p.total),
    })
    const calibrationSeconds = (performance.now() - tc) / 1000
    const tensors: QuantizedTensorReport[] = []
    for (const [i, entry] of entries.entries()) {
      controller.signal.throwIfAborted()
      const weight = await readOrientedWeight(model, entry, controller.signal)
      const calib = calibration.get(entry.tensor.name)
      const ts = performance.now()
      const q = quantizeEntry(entry, weight, calib, { signal: controller.signal })
      const seconds = (performance.now() - ts) / 1000
      const m = quantErrorMetrics(weight, q, calib?.gram ? calib : undefined)
      tensors.push({
        name: entry.tensor.name,
        method: entry.methodId,
        spec: formatQuantSpec(entry.methodId, entry.params),
        shape: [entry.rows, entry.cols],
        bytes: q.bytes,
        storedBytes: entry.tensor.byteLength,
        bitsPerWeight: (8 * q.bytes) / (entry.rows * entry.cols),
        mse: m.mse,
        sqnrDb: m.sqnrDb,
        maxAbsError: m.maxAbsError,
        outputMse: m.outputMse,
        seconds,
      })
      progressLine('tensors', i + 1, entries.length)
    }
    const size = planSize(model, entries)
    const report: QuantizeReport = {
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
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderQuantize(report))
    return 0
  } finally {
    await model.close()
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
