import type { OpenedModel } from '../formats/contract'
import { matrixShape } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { serveJobs } from '../jobs/job-worker'
import { QuantParamError } from './contract'
import type { QuantJobs } from './quant-jobs'
import type { RtnParams } from './rtn'
import { quantizeRtnF16 } from './rtn-f16'
import { parseQuantSpec } from './spec'

/**
 * Quant worker thread: serves QuantJobs (quant-jobs.ts). The last model opened stays open for
 * the next job on the same path (a whole-model run sends one job per tensor).
 */
let current: { path: string; model: Promise<OpenedModel> } | null = null

function modelAt(path: string): Promise<OpenedModel> {
  if (current?.path === path) return current.model
  const previous = current
  current = { path, model: openModel(path) }
  void previous?.model.then((m) => m.close()).catch(() => {})
  return current.model
}

/** Little-endian fp16 bits of stored bytes (copied when not 2-byte aligned). */
function f16View(bytes: Uint8Array): Uint16Array {
  const aligned = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice()
  return new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2)
}

serveJobs<QuantJobs>({
  async 'quantize-tensor'({ path, tensor, spec, kernel }, ctx) {
    const { method, params } = parseQuantSpec(spec)
    if (method.needs(params) !== 'none') throw new QuantParamError(tensor, `${method.id} needs calibration data, which quantize-tensor jobs do not carry`)
    const model = await modelAt(path)
    const info = model.tensors.find((t) => t.name === tensor)
    if (!info) throw new QuantParamError(tensor, `no such tensor in ${path}`)
    const { rows, cols } = matrixShape(info.shape)
    const hooks = { signal: ctx.signal, onProgress: (d: number, n: number) => ctx.progress(d, n), kernel }
    const t0 = performance.now()
    // RTN of an fp16 tensor reads the stored bytes and lets the kernel decode them (rtn-f16.ts).
    const fromF16 = method.id === 'rtn' && info.dtype === 'F16'
    const weight = fromF16 ? f16View(await model.readRaw(tensor)) : await model.readRows(tensor, 0, rows)
    ctx.signal.throwIfAborted()
    const t1 = performance.now()
    try {
      const q = weight instanceof Uint16Array ? quantizeRtnF16(weight, rows, cols, params as RtnParams, hooks) : method.quantize(weight, rows, cols, params, undefined, hooks)
      return { tensor, rows, cols, bytes: q.bytes, storage: q.storage, readMs: t1 - t0, quantizeMs: performance.now() - t1 }
    } catch (err) {
      if (err instanceof QuantParamError && err.tensor === null) throw new QuantParamError(tensor, err.problem)
      throw err
    }
  },
})
