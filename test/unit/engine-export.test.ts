/**
 * The engine's export API on the default model: the formats on offer, what each represents of
 * an RTN int8 plan (checked before any work, with the destination), the export job on its worker
 * thread with progress, and the written export reopened and evaluated — its perplexity equal to
 * the same plan evaluated in the app (the fp32 safetensors export holds exactly the plan's
 * dequantised values), the figures in the report beside it. Cancel removes the staged output;
 * a plan the format cannot represent is refused before anything is written.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { ApiEvent, ExportModelReport, Plan } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import type { InferenceApi } from '../../worker/api/evaluate-service'
import { EXPORT_FORMAT_IDS } from '../../worker/export/contract'
import { EXPORT_FORMATS } from '../../worker/export/registry'
import { openModel } from '../../worker/formats/open-model'
import { availableBackends, generate } from '../../worker/inference/inference-service'
import { planFromSpec } from '../../worker/plan/plan'
import { dispatchRequest } from '../../main/api-dispatcher'
import { parseApiParams } from '../../worker/api/parse-request'

const MODEL = resolve('resources/models/default')
const EVAL = { ctx: 256, maxWindows: 2, backend: 'wasm' as const }

describe('EngineService export (default model)', () => {
  let dir: string
  let engine: EngineService
  let modelId: string
  let rtn8: Plan
  let nf4: Plan
  let gptq: Plan
  const events: ApiEvent[] = []

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-engine-export-'))
    engine = new EngineService({ statsThreads: 1, inferenceThreads: 2, calibrationCacheDir: null })
    engine.onEvent((e) => events.push(e))
    modelId = (await engine.openModel({ path: MODEL })).modelId
    const model = await openModel(MODEL)
    try {
      rtn8 = planFromSpec(model, 'rtn:bits=8,group=128')
      nf4 = planFromSpec(model, 'nf4:group=64')
      gptq = planFromSpec(model, 'gptq:bits=4,group=128')
    } finally {
      await model.close()
    }
  })

  afterAll(async () => {
    await engine?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('lists every format, built or not, with the GGUF fallback option', async () => {
    const formats = await engine.exportFormats({ modelId })
    expect(formats.map((f) => f.id)).toEqual([...EXPORT_FORMAT_IDS])
    for (const f of formats) {
      expect(f.built).toBe(EXPORT_FORMATS.has(f.id))
      if (!f.built) expect(f.unavailable).toMatch(/not available in this build/)
      else expect(f.output).toBe(EXPORT_FORMATS.get(f.id)!.output)
    }
    const gguf = formats.find((f) => f.id === 'gguf')!
    expect(gguf.options.map((o) => o.key)).toEqual(['fallback'])
    expect(gguf.options[0]!.choices).toContain('Q8_0')
  })

  it('says per tensor what each format represents of an RTN int8 plan, and checks the destination', async () => {
    const planned = Object.keys(rtn8.tensors).length
    expect(planned).toBe(56)
    const st = await engine.exportSupport({ modelId, plan: rtn8, format: 'safetensors', dtype: 'fp32' })
    expect(st.counts).toMatchObject({ exact: planned, fallback: 0, unsupported: 0 })
    expect(st.refusal).toBeNull()
    // bf16 cannot hold an fp16 scale times a code: every planned tensor is rounded.
    const bf16 = await engine.exportSupport({ modelId, plan: rtn8, format: 'safetensors', dtype: 'bf16' })
    expect(bf16.counts.fallback).toBe(planned)
    // RTN has no GGUF type: every tensor falls back to the type nearest in bits, Q8_0.
    const gguf = await engine.exportSupport({ modelId, plan: rtn8, format: 'gguf' })
    expect(gguf.counts).toMatchObject({ exact: 0, fallback: planned, unsupported: 0 })
    expect(gguf.tensors[0]!.detail).toMatch(/Q8_0/)
    expect(gguf.defaultDestination).toBe(join(resolve(MODEL, '..'), 'default-plan-gguf.gguf'))
    const q4k = await engine.exportSupport({ modelId, plan: rtn8, format: 'gguf', formatOptions: { fallback: 'Q4_K' } })
    expect(q4k.tensors[0]!.detail).toMatch(/Q4_K/)
    // Asymmetric RTN: compressed-tensors writes integer zero points instead (fallback); NF4 it cannot write.
    expect((await engine.exportSupport({ modelId, plan: rtn8, format: 'compressed-tensors' })).counts.fallback).toBe(planned)
    const ct = await engine.exportSupport({ modelId, plan: nf4, format: 'compressed-tensors' })
    expect(ct.counts.unsupported).toBe(planned)
    expect(ct.refusal).toMatch(/cannot represent 56 planned tensor\(s\): 'model\.layers\.0\.mlp\.down_proj\.weight' \(nf4\)/)

    const problem = async (out: string) => (await engine.exportSupport({ modelId, plan: rtn8, format: 'gguf', out })).destination!.problem
    expect(await problem('relative/out.gguf')).toBe('must be an absolute path')
    expect(await problem(join(MODEL, 'model.safetensors'))).toMatch(/source model/)
    expect(await problem(join(MODEL, 'x.gguf'))).toMatch(/inside the source model's folder/)
    expect(await problem(join(dir, 'missing', 'x.gguf'))).toMatch(/does not exist/)
    expect(await problem(dir)).toMatch(/already exists/)
    expect(await problem(join(dir, 'free.gguf'))).toBeNull()
    // An unknown format option is refused, naming it.
    await expect(engine.exportSupport({ modelId, plan: rtn8, format: 'gguf', formatOptions: { fallbak: 'Q4_K' } })).rejects.toThrow(/no option 'fallbak'/)
  })

  let report: ExportModelReport

  it('exports RTN int8 to fp32 safetensors and evaluates the written folder: ppl equal to the plan in the app', async () => {
    const out = join(dir, 'default-rtn8')
    const jobId = 'export-1'
    report = await engine.exportModel({ jobId, modelId, plan: rtn8, planName: 'rtn8', format: 'safetensors', dtype: 'fp32', out, evaluate: EVAL })
    expect(report.path).toBe(out)
    expect(report.plan).toMatchObject({ source: "plan 'rtn8'", quantized: 56 })
    expect(report.tensors.filter((t) => t.method !== null).every((t) => t.support === 'exact' && t.writtenType === 'F32')).toBe(true)
    const stages = new Set(events.filter((e) => e.type === 'job-progress' && e.jobId === jobId).map((e) => (e.type === 'job-progress' ? e.detail?.stage : null)))
    expect([...stages]).toEqual(expect.arrayContaining(['writing', 'loading', 'evaluating']))
    expect(events.some((e) => e.type === 'job-finished' && e.jobId === jobId && e.outcome === 'done')).toBe(true)

    const ev = report.evaluation!
    expect(ev.status).toBe('measured')
    if (ev.status !== 'measured') return
    expect(ev.windows).toBe(2)
    // The same plan evaluated in the app (base + dequantised plan): the same perplexity.
    const inApp = await engine.evaluate({ jobId: 'eval-plan', modelId, text: { kind: 'heldout' }, ...EVAL, variant: { kind: 'plan', plan: rtn8 } })
    expect(Math.abs(ev.ppl - inApp.ppl) / inApp.ppl).toBeLessThan(1e-6)
    // KLD against the source model: small for 8 bits, not zero.
    expect(ev.kld!.mean).toBeGreaterThan(0)
    expect(ev.kld!.mean).toBeLessThan(0.01)
    expect(ev.kld!.basePpl).not.toBeCloseTo(ev.ppl, 6)
    // The report beside the export carries the figures; the run is kept with the source model.
    const onDisk = JSON.parse(await readFile(report.reportPath, 'utf8')) as ExportModelReport
    expect(onDisk.evaluation).toEqual(ev)
    expect((await engine.listRuns({ modelId })).some((r) => r.id === ev.runId && r.variantLabel === 'default-rtn8')).toBe(true)
  })

  it('checks the calls where they enter: format, float type, evaluation settings', () => {
    const base = { jobId: 'j', modelId: 'm1', plan: rtn8, out: '/tmp/x.gguf' }
    const rejection = (params: unknown): string => {
      try {
        parseApiParams('exportModel', params)
        return 'accepted'
      } catch (err) {
        return (err as Error).message
      }
    }
    expect(rejection({ ...base, format: 'gguf' })).toBe('accepted')
    expect(rejection({ ...base, format: 'exl2' })).toBe("exportModel: 'format' must be one of gguf, onnx, safetensors, compressed-tensors")
    expect(rejection({ ...base, format: 'gguf', dtype: 'fp8' })).toBe("exportModel: 'dtype' must be 'bf16', 'fp16' or 'fp32'")
    expect(rejection({ ...base, format: 'gguf', evaluate: { ctx: 1, backend: 'wasm' } })).toBe("exportModel: 'evaluate.ctx' must be an integer in [2, 32768]")
    expect(rejection({ ...base, format: 'gguf', out: '' })).toBe("exportModel: 'out' must be a non-empty string")
    expect(rejection({ ...base, format: 'gguf', overwrite: true })).toBe("exportModel: unknown key 'overwrite'")
  })

  it('refuses a destination that exists, and a relative one, before any work', async () => {
    await expect(engine.exportModel({ jobId: 'export-2', modelId, plan: rtn8, format: 'safetensors', out: report.path })).rejects.toMatchObject({ name: 'ExportError', problem: expect.stringMatching(/already exists/) })
    await expect(engine.exportModel({ jobId: 'export-3', modelId, plan: rtn8, format: 'gguf', out: 'x.gguf' })).rejects.toThrow(/'out' must be an absolute path/)
  })

  it('refuses a plan the format cannot represent before any work, naming the tensor', async () => {
    const out = join(dir, 'nf4-ct')
    const answer = await dispatchRequest(engine, { id: 7, method: 'exportModel', params: { jobId: 'export-nf4', modelId, plan: nf4, format: 'compressed-tensors', out } })
    expect(answer.ok).toBe(false)
    if (answer.ok) return
    expect(answer.error.name).toBe('ExportError')
    expect(answer.error.file).toBe(out)
    expect(answer.error.problem).toMatch(/cannot represent 56 planned tensor\(s\): 'model\.layers\.0\.mlp\.down_proj\.weight' \(nf4\): nf4 is not an integer grid/)
    expect(events.some((e) => 'jobId' in e && e.jobId === 'export-nf4')).toBe(false)
    expect((await readdir(dir)).filter((n) => n.startsWith('nf4-ct'))).toEqual([])
  })

  // GPTQ calibrates on the whole calibration text before the first tensor is written: minutes
  // of wall time when the two cores are shared, hence the longer limit.
  it('cancel removes the staged output and writes nothing', { timeout: 240_000 }, async () => {
    const sub = join(dir, 'cancel')
    await mkdir(sub)
    const out = join(sub, 'default-gptq.gguf')
    const jobId = 'export-cancel'
    let stagedAtCancel: string[] = []
    // GPTQ quantizes each tensor as it is written (a fraction of a second each): cancel part-way, with the stage file there.
    let asked = false
    const off = engine.onEvent((e) => {
      if (e.type === 'job-progress' && e.jobId === jobId && e.detail?.stage === 'writing' && e.done >= 2 && !asked) {
        asked = true
        void readdir(sub).then((names) => {
          stagedAtCancel = names
          void engine.cancelJob({ jobId })
        })
      }
    })
    try {
      await expect(engine.exportModel({ jobId, modelId, plan: gptq, format: 'gguf', out })).rejects.toMatchObject({ name: 'AbortError' })
    } finally {
      off()
    }
    expect(stagedAtCancel.some((n) => n.startsWith('default-gptq.gguf.partial-'))).toBe(true)
    expect(await readdir(sub)).toEqual([])
    expect(events.some((e) => e.type === 'job-finished' && e.jobId === jobId && e.outcome === 'cancelled')).toBe(true)
  })

  it('an export the evaluation cannot run is written and its report says why', async () => {
    const failing: InferenceApi = {
      evalPerplexity: () => Promise.reject(new Error('no decoder graph for this format')),
      generate,
      availableBackends,
    }
    const other = new EngineService({ statsThreads: 1, inference: failing, calibrationCacheDir: null })
    try {
      const id = (await other.openModel({ path: MODEL })).modelId
      const out = join(dir, 'unevaluable.gguf')
      const r = await other.exportModel({ jobId: 'export-fail', modelId: id, plan: rtn8, format: 'gguf', out, evaluate: EVAL })
      expect(r.evaluation).toEqual({ status: 'failed', message: 'the export was written, but Quantscope could not evaluate it: no decoder graph for this format' })
      expect(JSON.parse(await readFile(r.reportPath, 'utf8')).evaluation.status).toBe('failed')
      expect((await readdir(dir)).filter((n) => n.startsWith('unevaluable'))).toEqual(['unevaluable.gguf', 'unevaluable.report.json'])
    } finally {
      await other.close()
    }
  })
})
