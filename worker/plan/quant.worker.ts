/**
 * Plan quant worker thread: serves PlanQuantJobs (quant-protocol.ts) through serveJobs, one job
 * at a time, cancel between rows. A job names a model by path; the last model opened stays
 * open for the next job on the same path (a whole-model run sends one job per tensor) and is
 * reopened when its files changed on disk.
 */
import type { OpenedModel } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { filesFingerprint } from '../io/file-fingerprint'
import { serveJobs } from '../jobs/job-worker'
import { classifyTensor } from '../model/logical-model'
import type { LayerCalibration } from '../quant/contract'
import { quantErrorMetrics } from '../quant/metrics'
import { QUANT_METHODS } from '../quant/registry'
import { orientationPlan } from '../stats/orientation'
import { readOrientedWeight, resolvePlanFor, quantizeEntry } from './apply'
import { captureCalibration } from './calibration'
import { PLAN_FORMAT, PLAN_VERSION, PlanError, type Plan, type ResolvedEntry } from './plan'
import type { PlanQuantJobs } from './quant-protocol'
import { ggufQkRows, IDENTITY_ROWS, tensorPreview } from './quant-preview'

let current: { path: string; fingerprint: string; model: OpenedModel } | null = null
let opening: Promise<OpenedModel> | null = null

async function modelAt(path: string): Promise<OpenedModel> {
  // One open at a time: jobs run one by one, but a check must not race a reopen.
  while (opening) await opening.catch(() => {})
  if (current?.path === path) {
    const now = await filesFingerprint(current.model.files).catch(() => null)
    if (now === current.fingerprint) return current.model
  }
  opening = (async () => {
    const previous = current
    current = null
    await previous?.model.close().catch(() => {})
    const model = await openModel(path)
    try {
      current = { path, fingerprint: await filesFingerprint(model.files), model }
    } catch (err) {
      await model.close()
      throw err
    }
    return model
  })()
  try {
    return await opening
  } finally {
    opening = null
  }
}

/** One planned tensor, checked like a plan entry (errors name the model file and tensor). */
function resolveOne(model: OpenedModel, path: string, tensor: string, methodId: string, params: Record<string, unknown>): ResolvedEntry {
  const plan: Plan = {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    model: { name: '', fingerprint: '-' },
    tensors: { [tensor]: { method: methodId, params: params as Record<string, number | boolean | string> } },
  }
  const [entry] = resolvePlanFor(model, plan, path, true)
  if (!entry) throw new PlanError(path, tensor, 'nothing to quantize')
  return entry
}

serveJobs<PlanQuantJobs>({
  async quantizeTensor({ modelPath, tensor, methodId, params, calibration, preview, kernel }, ctx) {
    const model = await modelAt(modelPath)
    const entry = resolveOne(model, modelPath, tensor, methodId, params)
    const t0 = performance.now()
    const weight = await readOrientedWeight(model, entry, ctx.signal)
    for (let i = 0; i < weight.length; i++) {
      const x = weight[i]!
      if (x - x !== 0) throw new PlanError(entry.tensor.file, tensor, `value [${Math.floor(i / entry.cols)}, ${i % entry.cols}] is ${x}: NaN/Inf weights cannot be quantized`)
    }
    const t1 = performance.now()
    const rows = entry.rows
    // Progress: quantizing the rows, then measuring them.
    const q = quantizeEntry(entry, weight, calibration, { signal: ctx.signal, kernel, onProgress: (done) => ctx.progress(done, 2 * rows) })
    const seconds = (performance.now() - t1) / 1000
    const metrics = quantErrorMetrics(weight, q, calibration?.gram ? calibration : undefined, { signal: ctx.signal, onProgress: (done) => ctx.progress(rows + done, 2 * rows) })
    let previewOut
    if (preview) {
      const plan = orientationPlan(model, tensor, classifyTensor(entry.tensor.alias ?? tensor).role)
      const order = plan.unpermuteHeadDim ? ggufQkRows(plan.unpermuteHeadDim) : IDENTITY_ROWS
      try {
        previewOut = tensorPreview(weight, q, entry.params, preview, order, ctx.signal)
      } catch (err) {
        if (err instanceof RangeError) throw new PlanError(entry.tensor.file, tensor, err.message)
        throw err
      }
    }
    return {
      tensor,
      methodId: entry.methodId,
      params: entry.params,
      rows,
      cols: entry.cols,
      storedBytes: entry.tensor.byteLength,
      storage: q.storage,
      bytes: q.bytes,
      metrics,
      seconds,
      readSeconds: (t1 - t0) / 1000,
      ...(previewOut ? { preview: previewOut } : {}),
    }
  },

  async captureCalibration({ modelPath, entries, options }, ctx) {
    const model = await modelAt(modelPath)
    const resolved = entries.map((e) => resolveOne(model, modelPath, e.tensor, e.methodId, e.params))
    const t0 = performance.now()
    // One capture per kind of need, so one tensor may be asked for with two methods (a
    // preview comparing any4 and GPTQ) and get each its own calibration.
    const calibration: (LayerCalibration | null)[] = resolved.map(() => null)
    for (const need of ['gram', 'activation-stats'] as const) {
      const wanted = resolved.map((e, i) => ({ e, i })).filter(({ e }) => QUANT_METHODS.get(e.methodId)!.needs(e.params) === need)
      if (wanted.length === 0) continue
      const unique = [...new Map(wanted.map(({ e }) => [e.tensor.name, e])).values()]
      const map = await captureCalibration(model, unique, options, { signal: ctx.signal, onProgress: (p) => ctx.progress(p.done, p.total) })
      for (const { e, i } of wanted) calibration[i] = map.get(e.tensor.name) ?? null
    }
    return { calibration, seconds: (performance.now() - t0) / 1000 }
  },
})
