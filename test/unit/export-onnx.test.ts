/**
 * `--format onnx` on the default model, verified by its real consumers: onnxruntime-node and
 * onnxruntime-web run the exported folder and give the logits and perplexity of the app's own
 * evaluation of the same plan; transformers.js loads it offline and its greedy generation (with
 * the KV cache, past_key_values/attention_mask as it names them) equals the app's.
 *
 * The plan mixes every encoding: MatMulNBits 4-bit asymmetric g32 with uint8 zero points (GPTQ)
 * and with float zero points (RTN's fp16 minimum), 8-bit symmetric (RTN), AWQ (input ÷ its
 * channel scale), lookup tables (NF4's shared table, any4's per-row table, k-means with
 * outliers), the integer dequantising subgraph (RTN 3-bit), and kept float32 tensors. The
 * exporter checks each exact encoding against dequantizeRows value by value as it writes.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { ExportError, type ExportReport } from '../../worker/export/contract'
import { runExport } from '../../worker/export/run-export'
import { DecoderSession } from '../../worker/inference/session'
import { generateTokens } from '../../worker/inference/generate'
import { evaluatePerplexity, planWindows } from '../../worker/inference/perplexity'
import { openTokenizer } from '../../worker/inference/text-source'
import { createOverrides } from '../../worker/plan/apply'
import type { CalibrationOptions } from '../../worker/plan/calibration'
import { modelDisplayName, modelFingerprint, planFromSpec, PLAN_FORMAT, PLAN_VERSION, type Plan, type PlanEntry } from '../../worker/plan/plan'
import { readTensor, type WeightOverrides } from '../../worker/inference/weights'
import { randomTokens, writeTinyDecoder } from '../helpers/tiny-decoder'
import { openOutputFile, type OpenOutput } from '../../worker/io/output-file'

const DEFAULT = resolve('resources/models/default')
const HELDOUT = resolve('resources/eval/heldout.txt')
// The capture cache (in the test's folder) lets the export reuse the app's calibration capture.
const CALIB: CalibrationOptions = { maxWindows: 2, threads: 2, backend: 'native' }
const CTX = 256

let dir: string
let model: OpenedModel
let plan: Plan
let overrides: WeightOverrides
let fp32: ExportReport
let heldout: number[]

function mixedPlan(m: OpenedModel): Plan {
  const tensors: Record<string, PlanEntry> = {}
  for (let l = 0; l < 8; l++) {
    const p = `model.layers.${l}`
    tensors[`${p}.self_attn.q_proj.weight`] = { method: 'rtn', params: { bits: 4, group: 32, sym: false } }
    tensors[`${p}.self_attn.k_proj.weight`] = { method: 'rtn', params: { bits: 8, group: 64, sym: true } }
    tensors[`${p}.self_attn.v_proj.weight`] = { method: 'nf4', params: { group: 64 } }
    tensors[`${p}.self_attn.o_proj.weight`] = { method: 'any4', params: { group: 128, weighting: 'weights', maxIter: 20 } }
    tensors[`${p}.mlp.gate_proj.weight`] = { method: 'gptq', params: { bits: 4, group: 32, sym: false } }
    tensors[`${p}.mlp.up_proj.weight`] = { method: 'rtn', params: { bits: 3, group: 64, sym: false } }
  }
  // AWQ (MatMulNBits, input ÷ its channel scale) and k-means with outliers (ScatterElements) on a few tensors.
  tensors['model.layers.1.mlp.up_proj.weight'] = { method: 'awq', params: { bits: 4, group: 64, clip: false } }
  tensors['model.layers.2.self_attn.o_proj.weight'] = { method: 'kmeans', params: { bits: 3, outliers: 0.01, maxIter: 20 } }
  return { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(m), fingerprint: modelFingerprint(m) }, tensors }
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!))
  return worst
}

type Ort = typeof import('onnxruntime-node')

/** One forward pass of the export (batch 1, empty cache) through an onnxruntime package. */
async function exportedLogits(ort: Ort, session: import('onnxruntime-node').InferenceSession, tokens: number[]): Promise<Float32Array> {
  const T = tokens.length
  const feeds: Record<string, import('onnxruntime-node').Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, T]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: T }, (_, i) => BigInt(i)), [1, T]),
  }
  for (let l = 0; l < 8; l++) {
    for (const kind of ['key', 'value']) feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [1, 4, 0, 32])
  }
  const out = await session.run(feeds, ['logits'])
  return out.logits!.data as Float32Array
}

const appCache = new Map<string, Float32Array>()

/** The app's logits for the plan (one session per call; cached per token list). */
async function appLogits(tokens: number[], with_: WeightOverrides = overrides): Promise<Float32Array> {
  const key = with_ === overrides ? tokens.join(',') : null
  if (key && appCache.has(key)) return appCache.get(key)!
  const s = await DecoderSession.create(model, { backend: 'native', threads: 2, overrides: with_, graph: { logits: 'all', maxPositions: CTX } })
  try {
    const logits = (await s.forward({ tokens })).outputs.logits!.data as Float32Array
    if (key) appCache.set(key, logits)
    return logits
  } finally {
    await s.release()
  }
}

/** Perplexity of windows from logits (float64 log-softmax), the reference protocol's positions. */
function perplexityOf(windows: number[][], logitsOf: (w: number[]) => Promise<Float32Array>): Promise<number> {
  return (async () => {
    let nll = 0
    let n = 0
    for (const w of windows) {
      const logits = await logitsOf(w)
      const V = logits.length / w.length
      for (let t = 0; t < w.length - 1; t++) {
        const row = logits.subarray(t * V, (t + 1) * V)
        let max = -Infinity
        for (let j = 0; j < V; j++) max = Math.max(max, row[j]!)
        let sum = 0
        for (let j = 0; j < V; j++) sum += Math.exp(row[j]! - max)
        nll += max + Math.log(sum) - row[w[t + 1]!]!
        n++
      }
    }
    return Math.exp(nll / n)
  })()
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-export-onnx-'))
  CALIB.cacheDir = join(tmpdir(), `${basename(dir)}-calibration`)
  model = await openModel(DEFAULT)
  plan = mixedPlan(model)
  // The app's plan values, quantized once (a lazy override re-quantizes for every session).
  const lazy = await createOverrides(model, { plan, source: 'test plan', calibration: CALIB })
  const values = new Map<string, Float32Array>()
  for (const name of lazy.keys()) values.set(name, await readTensor(model, name, lazy))
  overrides = values
  fp32 = await runExport({ model, modelPath: DEFAULT, plan, planSource: 'test plan', format: 'onnx', out: join(dir, 'fp32'), options: { dtype: 'fp32', calibration: CALIB } })
  const tokenizer = await openTokenizer(model)
  heldout = tokenizer.encode(await readFile(HELDOUT, 'utf8'))
}, 120_000)
afterAll(async () => {
  await model.close()
  await rm(dir, { recursive: true, force: true })
  await rm(CALIB.cacheDir!, { recursive: true, force: true })
})

describe('ONNX export', () => {
  it('writes the folder transformers.js and onnxruntime-genai expect, and a report of every encoding', async () => {
    const out = fp32.path
    expect((await readdir(out)).sort()).toEqual(['config.json', 'genai_config.json', 'generation_config.json', 'onnx', 'tokenizer.json', 'tokenizer_config.json'])
    expect((await readdir(join(out, 'onnx'))).sort()).toEqual(['model.onnx', 'model.onnx_data'])
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'))
    expect(config['transformers.js_config']).toMatchObject({ use_external_data_format: { 'model.onnx': 1 } })
    const genai = JSON.parse(await readFile(join(out, 'genai_config.json'), 'utf8'))
    expect(genai.model.decoder).toMatchObject({ filename: 'model.onnx', head_size: 32, num_key_value_heads: 4, num_attention_heads: 8, num_hidden_layers: 8 })
    expect(genai.model.decoder.inputs.past_key_names).toBe('past_key_values.%d.key')
    expect(genai.model.context_length).toBe(512)
    // The graph itself is small: every weight lies in the data file.
    const graphBytes = (await readFile(join(out, 'onnx/model.onnx'))).length
    expect(graphBytes).toBeLessThan(400_000)
    expect(Object.values(fp32.sections).reduce((a, b) => a + b, 0)).toBe(fp32.bytes)

    const byName = (source: string) => fp32.tensors.find((t) => t.source === source)!
    const L0 = 'model.layers.0'
    expect(byName(`${L0}.mlp.gate_proj.weight`)).toMatchObject({ support: 'exact', maxAbsError: 0, writtenType: 'MatMulNBits int4 block 32 uint8 zero points' })
    expect(byName(`${L0}.self_attn.k_proj.weight`)).toMatchObject({ support: 'exact', maxAbsError: 0, writtenType: 'MatMulNBits int8 block 64 sym' })
    expect(byName(`${L0}.self_attn.v_proj.weight`)).toMatchObject({ support: 'exact', maxAbsError: 0 })
    expect(byName(`${L0}.self_attn.o_proj.weight`)).toMatchObject({ support: 'exact', maxAbsError: 0 })
    expect(byName(`${L0}.mlp.up_proj.weight`)).toMatchObject({ support: 'exact', maxAbsError: 0 })
    // RTN's fp16 minimum as a float zero point: a rounding difference, measured and small.
    const q = byName(`${L0}.self_attn.q_proj.weight`)
    expect(q).toMatchObject({ support: 'fallback', writtenType: 'MatMulNBits int4 block 32 float zero points' })
    console.log(`RTN asym as a float zero point: max |Δw| ${q.maxAbsError!.toExponential(3)}, rms ${q.rmsError!.toExponential(3)}`)
    expect(q.maxAbsError!).toBeGreaterThan(0)
    expect(q.maxAbsError!).toBeLessThan(1e-6)
    expect(byName(`${L0}.mlp.down_proj.weight`)).toMatchObject({ support: 'kept', writtenType: 'float32' })
    expect(byName('model.layers.1.mlp.up_proj.weight')).toMatchObject({ support: 'exact', maxAbsError: 0, writtenType: 'MatMulNBits int4 block 64 uint8 zero points (input ÷ AWQ scale)' })
    expect(byName('model.layers.2.self_attn.o_proj.weight').writtenType).toMatch(/3-bit codes, per-row fp16 codebook, \d+ fp16 outliers per row/)
  })

  it('onnxruntime-node runs it: logits within 1e-3 of the app, perplexity on 2 held-out windows within 0.1 %', async () => {
    const ort = await import('onnxruntime-node')
    const session = await ort.InferenceSession.create(join(fp32.path, 'onnx/model.onnx'), { intraOpNumThreads: 2 })
    try {
      const windows = planWindows(heldout, CTX, 2)
      const app = await appLogits(windows[0]!)
      const got = await exportedLogits(ort, session, windows[0]!)
      expect(got.length).toBe(app.length)
      const worst = maxDiff(got, app)
      console.log(`onnx export, onnxruntime-node: max |Δlogit| ${worst.toExponential(3)}`)
      expect(worst).toBeLessThan(1e-3)

      const inApp = await evaluatePerplexity(model, heldout, { ctx: CTX, maxWindows: 2, overrides, backend: 'native', threads: 2 })
      const exported = await perplexityOf(windows, (w) => exportedLogits(ort, session, w))
      console.log(`onnx export: ppl in app ${inApp.ppl}, exported ${exported}`)
      expect(Math.abs(exported / inApp.ppl - 1)).toBeLessThan(1e-3)
    } finally {
      await session.release()
    }
  }, 60_000)

  it('honours attention_mask: a left-padded row gives the logits of the unpadded sequence (onnxruntime-node)', async () => {
    const ort = await import('onnxruntime-node')
    const session = await ort.InferenceSession.create(join(fp32.path, 'onnx/model.onnx'), { intraOpNumThreads: 2 })
    try {
      const tokens = heldout.slice(0, 12)
      const plain = await exportedLogits(ort, session, tokens)
      // Batch of 2: row 0 = 4 pad tokens + the sequence, row 1 = 16 tokens; positions as
      // transformers.js makes them (cumsum(mask) − 1, pads at 1).
      const pad = 4
      const T = tokens.length + pad
      const other = heldout.slice(100, 100 + T)
      const ids = BigInt64Array.from([...new Array(pad).fill(0), ...tokens, ...other], BigInt)
      const mask = BigInt64Array.from([...new Array(pad).fill(0), ...new Array(tokens.length).fill(1), ...new Array(T).fill(1)], BigInt)
      const pos = BigInt64Array.from([...new Array(pad).fill(1), ...tokens.map((_, i) => i), ...other.map((_, i) => i)], BigInt)
      const feeds: Record<string, import('onnxruntime-node').Tensor> = {
        input_ids: new ort.Tensor('int64', ids, [2, T]),
        attention_mask: new ort.Tensor('int64', mask, [2, T]),
        position_ids: new ort.Tensor('int64', pos, [2, T]),
      }
      for (let l = 0; l < 8; l++) for (const kind of ['key', 'value']) feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [2, 4, 0, 32])
      const out = await session.run(feeds)
      const V = 8192
      const logits = out.logits!.data as Float32Array
      expect(out.logits!.dims).toEqual([2, T, V])
      expect(out['present.7.key']!.dims).toEqual([2, 4, T, 32])
      expect(maxDiff(logits.subarray(pad * V, T * V), plain)).toBeLessThan(1e-4)
      expect(maxDiff(logits.subarray(T * V, 2 * T * V), await exportedLogits(ort, session, other))).toBeLessThan(1e-4)
      expect(logits.every(Number.isFinite)).toBe(true)
    } finally {
      await session.release()
    }
  }, 30_000)

  it('onnxruntime-web (WASM, in Node) runs the same export within the same tolerance', async () => {
    const web = await import('onnxruntime-web')
    const ort = ((web as unknown as { default?: typeof web }).default ?? web) as unknown as Ort
    ;(ort.env as { wasm: { numThreads: number } }).wasm.numThreads = 1
    const session = await (ort.InferenceSession as unknown as { create(m: Uint8Array, o: object): Promise<import('onnxruntime-node').InferenceSession> }).create(
      new Uint8Array(await readFile(join(fp32.path, 'onnx/model.onnx'))),
      { executionProviders: ['wasm'], externalData: [{ path: 'model.onnx_data', data: new Uint8Array(await readFile(join(fp32.path, 'onnx/model.onnx_data'))) }] },
    )
    try {
      // A causal model's logits for a prefix are the prefix of its logits: reuse the app's window.
      const window = planWindows(heldout, CTX, 1)[0]!
      const tokens = window.slice(0, 64)
      const worst = maxDiff(await exportedLogits(ort, session, tokens), (await appLogits(window)).subarray(0, 64 * 8192))
      console.log(`onnx export, onnxruntime-web: max |Δlogit| ${worst.toExponential(3)}`)
      expect(worst).toBeLessThan(1e-3)
    } finally {
      await session.release()
    }
  }, 60_000)

  it('transformers.js loads the folder offline and its greedy generation (KV cache) equals the app\'s', async () => {
    const tjs = await import('@huggingface/transformers')
    tjs.env.allowRemoteModels = false
    tjs.env.allowLocalModels = true
    tjs.env.localModelPath = dir + '/'
    const name = 'fp32'
    const tokenizer = await tjs.AutoTokenizer.from_pretrained(name)
    const lm = await tjs.AutoModelForCausalLM.from_pretrained(name, { dtype: 'fp32', device: 'cpu' })
    try {
      const inputs = tokenizer('The history of the city begins') as { input_ids: { data: BigInt64Array }; attention_mask: unknown }
      const prompt = Array.from(inputs.input_ids.data, Number)
      const NEW = 16
      const generated = (await lm.generate({ ...inputs, max_new_tokens: NEW, min_new_tokens: NEW, do_sample: false })) as { data: BigInt64Array; dims: number[] }
      const theirs = Array.from(generated.data, Number).slice(prompt.length)
      const session = await DecoderSession.create(model, { backend: 'native', threads: 2, overrides, graph: { logits: 'all', kvCache: true, maxPositions: CTX } })
      let ours: number[]
      try {
        ours = (await generateTokens(session, prompt, { maxTokens: NEW })).ids
      } finally {
        await session.release()
      }
      console.log(`transformers.js: ${JSON.stringify(theirs)}\nquantscope:      ${JSON.stringify(ours)}`)
      expect(theirs).toHaveLength(NEW)
      expect(theirs).toEqual(ours)
    } finally {
      await lm.dispose()
    }
  }, 60_000)

  it('fp16 kept tensors: the folder runs within the fp16 tolerance, rounding reported', async () => {
    // A cheap plan (RTN only) keeps this test short; the kept tensors are what --dtype changes.
    const rtnPlan: Plan = { ...plan, tensors: Object.fromEntries(Object.entries(plan.tensors).map(([k]) => [k, { method: 'rtn', params: { bits: 4, group: 32, sym: true } }])) }
    const report = await runExport({ model, modelPath: DEFAULT, plan: rtnPlan, planSource: 'rtn plan', format: 'onnx', out: join(dir, 'fp16'), options: { dtype: 'fp16' } })
    const down = report.tensors.find((t) => t.source === 'model.layers.0.mlp.down_proj.weight')!
    expect(down.writtenType).toBe('float16')
    // Quantized tensors are unaffected by --dtype (their scales are fp16 values already).
    expect(report.tensors.find((t) => t.source === 'model.layers.0.mlp.gate_proj.weight')).toMatchObject({ support: 'exact', maxAbsError: 0 })
    // The bf16 source is fp16-representable except magnitudes below fp16's normal range: those are reported.
    const rounded = report.tensors.filter((t) => t.method === null && t.note)
    for (const t of rounded) expect(t.maxAbsError!).toBeLessThan(6.2e-5 / 2 ** 10)
    const ort = await import('onnxruntime-node')
    const session = await ort.InferenceSession.create(join(report.path, 'onnx/model.onnx'), { intraOpNumThreads: 2 })
    try {
      const tokens = heldout.slice(0, 64)
      const rtnOverrides = await createOverrides(model, { plan: rtnPlan, source: 'rtn plan' })
      const worst = maxDiff(await exportedLogits(ort, session, tokens), await appLogits(tokens, rtnOverrides))
      console.log(`onnx export fp16: max |Δlogit| ${worst.toExponential(3)}; ${rounded.length} kept tensors rounded`)
      // Stated fp16 tolerance: 1e-3 for a bf16/fp16 source (exact but for subnormals); an fp32
      // source rounds every kept weight by up to 2^-11 relative — expect ~1e-2 there.
      expect(worst).toBeLessThan(1e-3)
    } finally {
      await session.release()
    }
  }, 60_000)

  it('refuses a method ONNX cannot hold, naming the tensor, and writes nothing', async () => {
    const bad: Plan = { ...plan, tensors: { ...plan.tensors, 'model.layers.3.mlp.down_proj.weight': { method: 'ggml', params: { type: 'Q4_K' } } } }
    const out = join(dir, 'bad')
    const err = await runExport({ model, modelPath: DEFAULT, plan: bad, planSource: 'bad plan', format: 'onnx', out, options: {} }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ExportError)
    expect((err as Error).message).toMatch(/model\.layers\.3\.mlp\.down_proj\.weight' \(ggml\): ggml block types have no ONNX operator/)
    expect((await readdir(dir)).some((n) => n.startsWith('bad'))).toBe(false)
  })

  it('a cancel between tensors removes the partial folder and says so', async () => {
    const controller = new AbortController()
    const seen: string[] = []
    const err = await runExport(
      { model, modelPath: DEFAULT, plan, planSource: 'test plan', format: 'onnx', out: join(dir, 'cancelled'), options: { calibration: CALIB } },
      {
        signal: controller.signal,
        onProgress: (p) => {
          if (p.stage !== 'writing' || !p.tensor) return
          seen.push(p.tensor)
          if (seen.length === 10) controller.abort()
        },
      },
    ).catch((e: unknown) => e)
    expect((err as Error).message).toMatch(/export cancelled/)
    expect(seen.length).toBe(10)
    expect((await readdir(dir)).some((n) => n.startsWith('cancelled'))).toBe(false)
  })

  it('reopens in Quantscope: the exported model.onnx evaluates to the app\'s perplexity of the plan', async () => {
    const reopened = await openModel(join(fp32.path, 'onnx/model.onnx'))
    try {
      const again = await evaluatePerplexity(reopened, heldout, { ctx: CTX, maxWindows: 2, backend: 'native', threads: 2 })
      const inApp = await evaluatePerplexity(model, heldout, { ctx: CTX, maxWindows: 2, overrides, backend: 'native', threads: 2 })
      console.log(`reopened export: ppl ${again.ppl} (app ${inApp.ppl})`)
      expect(Math.abs(again.ppl / inApp.ppl - 1)).toBeLessThan(1e-3)
    } finally {
      await reopened.close()
    }
  }, 60_000)

  it('an fp16 model\'s kept embedding is copied as its stored bytes: the same folder as decoding and re-encoding it', async () => {
    const tiny = await writeTinyDecoder(join(dir, 'tiny-f16-src'), { bias: true, tied: true, modelType: 'qwen2', seed: 11, hidden: 64, heads: 4, kvHeads: 2, intermediate: 128 })
    const small = await openModel(tiny.dir)
    try {
      const spec = 'rtn:bits=4,group=16,sym=true'
      const tinyPlan = planFromSpec(small, spec)
      const reads: string[] = []
      const spy: OpenedModel = { ...small, readRawRows: async (name, r0, r1) => (reads.push(name), small.readRawRows!(name, r0, r1)) }
      const copied = await runExport({ model: spy, modelPath: tiny.dir, plan: tinyPlan, planSource: spec, format: 'onnx', out: join(dir, 'tiny-copied'), options: { dtype: 'fp16' } })
      const decoded = await runExport({ model: { ...small, readRawRows: undefined }, modelPath: tiny.dir, plan: tinyPlan, planSource: spec, format: 'onnx', out: join(dir, 'tiny-decoded'), options: { dtype: 'fp16' } })
      expect(reads).toEqual(['model.embed_tokens.weight'])
      for (const file of ['onnx/model.onnx', 'onnx/model.onnx_data']) {
        expect(Buffer.compare(await readFile(join(copied.path, file)), await readFile(join(decoded.path, file))), file).toBe(0)
      }
      const embed = (r: ExportReport) => r.tensors.find((t) => t.source === 'model.embed_tokens.weight')
      expect(embed(copied)).toEqual(embed(decoded))
      expect(copied.sections).toEqual(decoded.sections)
    } finally {
      await small.close()
    }
  })

  it('a qwen2 model with q/k/v biases and tied embeddings exports and runs the same (onnxruntime-node); progress; a full disk', async () => {
    const tiny = await writeTinyDecoder(join(dir, 'tiny-src'), { bias: true, tied: true, modelType: 'qwen2', seed: 7, hidden: 64, heads: 4, kvHeads: 2, intermediate: 128 })
    const small = await openModel(tiny.dir)
    try {
      const spec = 'rtn:bits=4,group=16,sym=true'
      const tinyPlan = planFromSpec(small, spec)
      const progress: { done: number; total: number; tensor?: string }[] = []
      const report = await runExport(
        { model: small, modelPath: tiny.dir, plan: tinyPlan, planSource: spec, format: 'onnx', out: join(dir, 'tiny'), options: { dtype: 'fp32' } },
        { onProgress: (p) => p.stage === 'writing' && progress.push(p) },
      )
      // One progress step per source tensor (biases of a layer count once), ending at the total.
      expect(progress.map((p) => p.done)).toEqual(progress.map((_, i) => i + 1))
      expect(progress.at(-1)).toMatchObject({ done: 2 + 2 * 9 + 2, total: 2 + 2 * 9 + 2 })
      expect(new Set(progress.map((p) => p.tensor)).size).toBe(progress.length)

      // A full disk part-way through the data file: a clean failure, nothing left behind.
      let budget = 20_000
      const fullDisk: OpenOutput = async (path) => {
        const real = await openOutputFile(path)
        return {
          async write(bytes) {
            if (bytes.length > budget) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' })
            budget -= bytes.length
            await real.write(bytes)
          },
          close: () => real.close(),
        }
      }
      const full = await runExport({ model: small, modelPath: tiny.dir, plan: tinyPlan, planSource: spec, format: 'onnx', out: join(dir, 'tiny-full') }, { openOutput: fullDisk }).catch((e: unknown) => e)
      expect((full as Error).message).toMatch(/disk full while writing the export \(ENOSPC: no space left on device, write\); the partial output was removed/)
      expect((await readdir(dir)).some((n) => n.startsWith('tiny-full'))).toBe(false)

      expect(report.tensors.filter((t) => t.writtenType.startsWith('MatMulNBits int4 block 16 sym'))).toHaveLength(Object.keys(tinyPlan.tensors).length)
      const tokens = randomTokens(20, tiny.ref.vocab, 3)
      const app = await DecoderSession.create(small, { backend: 'native', threads: 2, overrides: await createOverrides(small, { plan: tinyPlan, source: spec }), graph: { logits: 'all', maxPositions: 64 } })
      const want = (await app.forward({ tokens })).outputs.logits!.data as Float32Array
      await app.release()
      const ort = await import('onnxruntime-node')
      const session = await ort.InferenceSession.create(join(report.path, 'onnx/model.onnx'), { intraOpNumThreads: 1 })
      try {
        const T = tokens.length
        const feeds: Record<string, import('onnxruntime-node').Tensor> = {
          input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, T]),
          attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
          position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: T }, (_, i) => BigInt(i)), [1, T]),
        }
        for (let l = 0; l < tiny.ref.layers; l++) for (const kind of ['key', 'value']) feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [1, 2, 0, 16])
        const got = (await session.run(feeds)).logits!.data as Float32Array
        expect(maxDiff(got, want)).toBeLessThan(1e-4)
      } finally {
        await session.release()
      }
    } finally {
      await small.close()
    }
  }, 30_000)
})
