import type { OpenedModel } from '../formats/contract'
import { matrixShape } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { serveJobs } from '../jobs/job-worker'
import { QuantParamError } from './contract'
import type { QuantJobs } from './quant-jobs'
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

serveJobs<QuantJobs>({
  async 'quantize-tensor'({ path, tensor, spec, kernel }, ctx) {
    const { method, params } = parseQuantSpec(spec)
    if (method.needs(params) !== 'none') throw new QuantParamError(tensor, `${method.id} needs calibration data, which quantize-tensor jobs do not carry`)
    const model = await modelAt(path)
    const info = model.tensors.find((t) => t.name === tensor)
    if (!info) throw new QuantParamError(tensor, `no such tensor in ${path}`)
    const { rows, cols } = matrixShape(info.shape)
    const t0 = performance.now()
    const weight = await model.readRows(tensor, 0, rows)
    ctx.signal.throwIfAborted()
    const t1 = performance.now()
    try {
      const q = method.quantize(weight, rows, cols, params, undefined, { signal: ctx.signal, onProgress: (d, n) => ctx.progress(d, n), kernel })
      return { tensor, rows, cols, bytes: q.bytes, storage: q.storage, readMs: t1 - t0, quantizeMs: performance.now() - t1 }
    } catch (err) {
      if (err instanceof QuantParamError && err.tensor === null) throw new QuantParamError(tensor, err.problem)
      throw err
    }
  },
})
