import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { readFile, rm, writeFile, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { ModelFormatError } from '../../worker/common/errors'
import { InferenceInputError } from '../../worker/inference/errors'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { openEvalSession } from '../../worker/inference/eval-session'
import { OnnxFileSession } from '../../worker/inference/onnx-file-session'
import { DecoderSession } from '../../worker/inference/session'
import { generateTokens } from '../../worker/inference/generate'
import { runInferenceJob } from '../../worker/inference/inference-jobs'
import type { GenerateJobResult } from '../../worker/inference/inference-protocol'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'
import { DataType, encodeModel, f16Bytes, f32Bytes, i64Bytes } from '../helpers/onnx-builder'
import { writeDecoderOnnx } from '../helpers/onnx-decoder-file'
import { runCli } from '../helpers/run-cli'

/**
 * An .onnx decoder runs as it is in the evaluation. Two kinds of file:
 * - the default model's own graph written to disk (engine names and Hugging Face names),
 *   whose numbers must equal the evaluation of the same weights through the built graph;
 * - an independent export: qwen2-tiny by torch.onnx.export with Hugging Face I/O names
 *   (test/fixtures/onnx-decoder, resources/models/train/make_export_reference.py), whose
 *   numbers must equal those onnxruntime and PyTorch gave in Python.
 */
const ROOT = resolve(import.meta.dirname, '..', '..')
const DEFAULT_MODEL = join(ROOT, 'resources/models/default')
const HELDOUT = join(ROOT, 'resources/eval/heldout.txt')
const FIXTURE = join(ROOT, 'test/fixtures/onnx-decoder/qwen2-tiny')
const CTX = 128

interface Reference {
  windows: number
  ort_ppl: number
  torch_ppl: number
  ort_window_nll_prefix: number[]
  prompts: { ids: number[]; last_logits: number[]; last_logits_top5: number[] }[]
}

let root: string
let weights: OpenedModel
let ids: number[]
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-onnx-file-'))
  weights = await openModel(DEFAULT_MODEL)
  ids = await tokensOf({ file: HELDOUT }, () => openTokenizer(weights))
  for (const io of ['engine', 'hf'] as const) await writeDecoderOnnx(weights, join(root, io), io)
})
afterAll(async () => {
  await weights.close()
  await rm(root, { recursive: true, force: true })
})

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}

// Engine names on the WASM backend, Hugging Face names on the native one.
describe.each([
  ['engine', 'wasm'],
  ['hf', 'native'],
] as const)('the default model written as an ONNX file (%s I/O names, %s)', (io, backend) => {
  let file: OpenedModel
  beforeAll(async () => {
    file = await openModel(join(root, io)) // the folder: onnx/model.onnx, config.json and tokenizer.json one level up
  })
  afterAll(() => file.close())

  it('opens from the folder with its tokenizer and config one level up', async () => {
    expect(file.format).toBe('onnx')
    expect(file.files[0]).toBe(join(root, io, 'onnx', 'model.onnx'))
    expect(file.tokenizerPath).toBe(join(root, io, 'tokenizer.json'))
    expect(file.config?.numKvHeads).toBe(4)
    // Its tokenizer gives the same ids as the weights folder's.
    expect((await openTokenizer(file)).encode('The held-out text', { addSpecialTokens: false })).toEqual(
      (await openTokenizer(weights)).encode('The held-out text', { addSpecialTokens: false }),
    )
  })

  it('perplexity (and on native KL divergence) equals the evaluation of the same weights', async () => {
    // WASM is the slow one on two shared cores: one window, no KL there.
    const windows = backend === 'wasm' ? 1 : 2
    const opts = { ctx: CTX, maxWindows: windows, backend, threads: 2 }
    const graph = await evaluatePerplexity(weights, ids, opts)
    // KL against the weights-built graph as base: both sides computed, nothing cached.
    const onnx = await evaluatePerplexity(file, ids, { ...opts, kld: backend === 'native' ? { base: weights, cache: 'off' } : null })
    expect(onnx.windows).toBe(windows)
    expect(onnx.backend).toBe(backend)
    expect(Math.abs(onnx.ppl / graph.ppl - 1)).toBeLessThan(1e-4)
    expect(maxDiff(onnx.windowNll, graph.windowNll)).toBeLessThan(1e-4)
    expect(onnx.ppl).toBeGreaterThan(5) // a real model on real text: neither ~1 nor ~vocab
    expect(onnx.ppl).toBeLessThan(500)
    if (backend === 'native') {
      expect(onnx.kld!.mean).toBeLessThan(1e-5)
      expect(onnx.kld!.top1).toBeGreaterThan(0.99)
      expect(Math.abs(onnx.kld!.basePpl / graph.ppl - 1)).toBeLessThan(1e-5)
    }
  })

  it('greedy generation equals the built graph with the KV cache', async () => {
    const prompt = ids.slice(0, 12)
    const graph = await DecoderSession.create(weights, { backend, threads: 2, graph: { kvCache: true, logits: 'last', maxPositions: 64 } })
    const onnx = await openEvalSession(file, { backend, threads: 2, graph: { kvCache: true, maxPositions: 64 } })
    try {
      expect(onnx).toBeInstanceOf(OnnxFileSession)
      const a = await generateTokens(graph, prompt, { maxTokens: 20 })
      const b = await generateTokens(onnx, prompt, { maxTokens: 20 })
      expect(b.ids).toEqual(a.ids)
      expect(new Set(b.ids).size).toBeGreaterThan(1)
    } finally {
      await graph.release()
      await onnx.release()
    }
  })
})

describe('KL divergence between two different models', () => {
  it("equals the built graph's figure whichever side is an ONNX file (native)", async () => {
    const qwenWeights = await openModel(join(ROOT, 'resources/models/qwen2-tiny'))
    const qwenOnnx = await openModel(FIXTURE)
    const defaultOnnx = await openModel(join(root, 'hf'))
    try {
      const opts = { ctx: CTX, maxWindows: 2, backend: 'native' as const, threads: 2 }
      // The graph computes KL(default ‖ qwen2-tiny) inside onnxruntime …
      const graph = (await evaluatePerplexity(qwenWeights, ids, { ...opts, kld: { base: weights, cache: 'off' } })).kld!
      // … the ONNX file session from the logits: the evaluated side, then the base side.
      const evaluated = (await evaluatePerplexity(qwenOnnx, ids, { ...opts, kld: { base: weights, cache: 'off' } })).kld!
      const base = (await evaluatePerplexity(qwenWeights, ids, { ...opts, kld: { base: defaultOnnx, cache: 'off' } })).kld!
      expect(graph.mean).toBeGreaterThan(0.1) // two different models: far from 0
      for (const k of [evaluated, base]) {
        expect(Math.abs(k.mean / graph.mean - 1)).toBeLessThan(1e-4)
        expect(Math.abs(k.p99 / graph.p99 - 1)).toBeLessThan(1e-3)
        expect(Math.abs(k.top1 - graph.top1)).toBeLessThanOrEqual(1 / (2 * (CTX - 1)))
        expect(Math.abs(k.basePpl / graph.basePpl - 1)).toBeLessThan(1e-4)
      }
    } finally {
      await Promise.all([qwenWeights.close(), qwenOnnx.close(), defaultOnnx.close()])
    }
  })
})

describe('the log-prob cache with an ONNX file as the base', () => {
  it('writes on the first run and reads back the same figures on the second', async () => {
    const qwenOnnx = await openModel(FIXTURE)
    try {
      const opts = { ctx: CTX, maxWindows: 2, backend: 'native' as const, threads: 2 }
      const kld = { base: qwenOnnx, cache: 'auto' as const, cacheDir: join(root, 'logprobs') }
      const first = (await evaluatePerplexity(weights, ids, { ...opts, kld })).kld!
      const second = (await evaluatePerplexity(weights, ids, { ...opts, kld })).kld!
      expect(first.baseSource).toBe('cache-write')
      expect(second.baseSource).toBe('cache-read')
      expect(first.mean).toBeGreaterThan(0.1)
      // The cache keeps 16-bit log-probs: the KL moves by rounding only.
      expect(Math.abs(second.mean / first.mean - 1)).toBeLessThan(1e-2)
      expect(Math.abs(second.basePpl / first.basePpl - 1)).toBeLessThan(1e-4)
    } finally {
      await qwenOnnx.close()
    }
  })
})

describe('an independent export: qwen2-tiny by torch.onnx.export (Hugging Face names)', () => {
  let ref: Reference
  let model: OpenedModel
  beforeAll(async () => {
    ref = JSON.parse(await readFile(join(ROOT, 'test/fixtures/onnx-decoder/reference.json'), 'utf8')) as Reference
    model = await openModel(FIXTURE)
  })
  afterAll(() => model.close())

  it("per-window NLL on the held-out text equals onnxruntime's and PyTorch's (native 16 windows, wasm 1)", async () => {
    const fixtureIds = await tokensOf({ file: HELDOUT }, () => openTokenizer(model))
    const n = ref.ort_window_nll_prefix.length
    const native = await evaluatePerplexity(model, fixtureIds, { ctx: 256, maxWindows: n, backend: 'native', threads: 2 })
    expect(maxDiff(native.windowNll, ref.ort_window_nll_prefix)).toBeLessThan(2e-5)
    const wasm = await evaluatePerplexity(model, fixtureIds, { ctx: 256, maxWindows: 1, backend: 'wasm', threads: 2 })
    expect(maxDiff(wasm.windowNll, ref.ort_window_nll_prefix.slice(0, 1))).toBeLessThan(2e-5)
    // PyTorch's and onnxruntime's whole-text figures agree with each other (the fixture's own check).
    expect(Math.abs(ref.ort_ppl / ref.torch_ppl - 1)).toBeLessThan(1e-6)
  })

  it('last-position logits of the reference prompts, prefilled whole and through the cache', async () => {
    const s = await openEvalSession(model, { backend: 'native', threads: 2, graph: { kvCache: true, maxPositions: 64 } })
    try {
      expect(s.vocab).toBe(8192)
      for (const p of ref.prompts) {
        const whole = (await s.forward({ tokens: p.ids }, ['logits'])).outputs.logits!.data as Float32Array
        const last = whole.subarray(whole.length - s.vocab)
        expect(maxDiff(last, p.last_logits)).toBeLessThan(1e-4)
        const top5 = Array.from(last.keys()).sort((a, b) => last[b]! - last[a]!).slice(0, 5)
        expect(top5).toEqual(p.last_logits_top5)
        // present → past: the first part, then the rest one token at a time.
        const cut = Math.floor(p.ids.length / 2)
        let step = await s.forward({ tokens: p.ids.slice(0, cut) }, ['logits'])
        for (let i = cut; i < p.ids.length; i++) step = await s.forward({ tokens: [p.ids[i]!], past: step.present }, ['logits'])
        expect(step.present!.length).toBe(p.ids.length)
        expect(maxDiff(step.outputs.logits!.data as Float32Array, p.last_logits)).toBeLessThan(1e-4)
      }
    } finally {
      await s.release()
    }
  })

  it('generates through the inference job as the weights of qwen2-tiny do', async () => {
    const prompt = { tokens: ref.prompts[0]!.ids }
    const job = { kind: 'generate' as const, prompt, maxTokens: 16, backend: 'native' as const, threads: 2, stopTokens: [] }
    const onnx = (await runInferenceJob({ ...job, model: FIXTURE })) as GenerateJobResult
    const built = (await runInferenceJob({ ...job, model: join(ROOT, 'resources/models/qwen2-tiny') })) as GenerateJobResult
    expect(onnx.variants[0]!.ids).toEqual(built.variants[0]!.ids)
    expect(onnx.variants[0]!.ids[0]).toBe(ref.prompts[0]!.last_logits_top5[0])
    // The tokenizer one folder up decodes the text.
    expect(onnx.variants[0]!.text).toBe(built.variants[0]!.text)
  })

  it('the CLI evaluates the .onnx file itself', async () => {
    const r = await runCli(['eval', join(FIXTURE, 'onnx', 'model.onnx'), '--text', HELDOUT, '--max-windows', '2', '--backend', 'native', '--threads', '2', '--json'])
    expect(r.stderr).not.toMatch(/error/i)
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout) as { ppl: number; windows: number }
    expect(out.windows).toBe(2)
    const nll = (ref.ort_window_nll_prefix[0]! + ref.ort_window_nll_prefix[1]!) / 2
    expect(Math.abs(Math.log(out.ppl) - nll)).toBeLessThan(2e-5)
  })
})

describe('an fp16 merged decoder (use_cache_branch, no position_ids)', () => {
  /**
   * A toy graph in the shape of optimum's fp16 merged decoders: fp16 embedding E [V, 2], the new
   * tokens' rows appended to an fp16 cache [1, 1, past, 2], and fp16 logits
   *   logits[t] = (E[id_t] + use_cache_branch · Σ_{cache after this step} key) · W.
   * Values are multiples of 1/8, so every result is exact in fp16 and the expectation exact.
   */
  const V = 6
  const E = [0.5, -0.25, 1, 0.125, -0.5, 0.75, 0.25, 0.25, -1, 0.5, 0.375, -0.125]
  const W = [1, 0, -1, 0.5, 0.25, 2, 0, 1, 0.5, -0.5, 1, 0.25] // [2, V]
  async function writeToy(): Promise<string> {
    const f16 = (name: string, shape: (number | string)[]) => ({ name, elemType: DataType.FLOAT16, shape })
    const path = join(root, 'fp16-merged.onnx')
    const kv = ['key', 'value'] as const
    await writeFile(
      path,
      encodeModel({
        initializers: [
          { name: 'E', dataType: DataType.FLOAT16, dims: [V, 2], raw: f16Bytes(E) },
          { name: 'W', dataType: DataType.FLOAT, dims: [2, V], raw: f32Bytes(W) },
          { name: 'axis1', dataType: DataType.INT64, dims: [1], raw: i64Bytes([1]) },
          { name: 'axis2', dataType: DataType.INT64, dims: [1], raw: i64Bytes([2]) },
        ],
        nodes: [
          { opType: 'Gather', inputs: ['E', 'input_ids'], outputs: ['x16'], attrs: { axis: { i: 0 } } },
          { opType: 'Unsqueeze', inputs: ['x16', 'axis1'], outputs: ['new_kv'] },
          ...kv.map((k) => ({ opType: 'Concat', inputs: [`past_key_values.0.${k}`, 'new_kv'], outputs: [`present.0.${k}`], attrs: { axis: { i: 2 } } })),
          { opType: 'Cast', inputs: ['present.0.key'], outputs: ['keys32'], attrs: { to: { i: DataType.FLOAT } } },
          { opType: 'ReduceSum', inputs: ['keys32', 'axis2'], outputs: ['ksum'], attrs: { keepdims: { i: 0 } } },
          { opType: 'Cast', inputs: ['use_cache_branch'], outputs: ['flag'], attrs: { to: { i: DataType.FLOAT } } },
          { opType: 'Mul', inputs: ['ksum', 'flag'], outputs: ['ctx'] },
          { opType: 'Cast', inputs: ['x16'], outputs: ['x32'], attrs: { to: { i: DataType.FLOAT } } },
          { opType: 'Add', inputs: ['x32', 'ctx'], outputs: ['h'] },
          { opType: 'MatMul', inputs: ['h', 'W'], outputs: ['logits32'] },
          { opType: 'Cast', inputs: ['logits32'], outputs: ['logits'], attrs: { to: { i: DataType.FLOAT16 } } },
        ],
        inputs: [
          { name: 'input_ids', elemType: DataType.INT64, shape: ['batch', 'seq'] },
          { name: 'attention_mask', elemType: DataType.INT64, shape: ['batch', 'total'] },
          ...kv.map((k) => f16(`past_key_values.0.${k}`, ['batch', 1, 'past', 2])),
          { name: 'use_cache_branch', elemType: DataType.BOOL, shape: [1] },
        ],
        outputs: [f16('logits', ['batch', 'seq', V]), ...kv.map((k) => f16(`present.0.${k}`, ['batch', 1, 'total', 2]))],
      }),
    )
    return path
  }
  function expected(cache: number[], chunk: number[], branch: boolean): number[] {
    const sum = [0, 0]
    for (const id of [...cache, ...chunk]) for (let c = 0; c < 2; c++) sum[c] += E[id * 2 + c]!
    return chunk.flatMap((id) => {
      const h = [0, 1].map((c) => E[id * 2 + c]! + (branch ? sum[c]! : 0))
      return Array.from({ length: V }, (_, j) => h[0]! * W[j]! + h[1]! * W[V + j]!)
    })
  }

  it.each(['native', 'wasm'] as const)('prefill and cached steps give the exact fp16 logits (%s)', async (backend) => {
    const m = await openModel(await writeToy())
    const s = await openEvalSession(m, { backend, threads: 1, graph: { kvCache: true, maxPositions: 16 } })
    try {
      expect(s.vocab).toBe(V)
      expect(s.emptyCache().keys[0]).toMatchObject({ type: 'float16', dims: [1, 1, 0, 2] })
      let step = await s.forward({ tokens: [1, 4, 2] })
      expect(Array.from(step.outputs.logits!.data as Float32Array)).toEqual(expected([], [1, 4, 2], false))
      const history = [1, 4, 2]
      for (const id of [5, 0, 3]) {
        step = await s.forward({ tokens: [id], past: step.present }, ['logits', 'argmax'])
        const want = expected(history, [id], true)
        expect(Array.from(step.outputs.logits!.data as Float32Array)).toEqual(want)
        expect(Number((step.outputs.argmax!.data as BigInt64Array)[0])).toBe(want.indexOf(Math.max(...want)))
        history.push(id)
        expect(step.present!.length).toBe(history.length)
      }
      // Windows from an empty cache take the no-cache branch; nll and argmax from the fp16 logits.
      const out = await s.forwardWindows([[3, 1]], { targets: [[2, 0]] }, ['nll', 'argmax'])
      const rows = expected([], [3, 1], false)
      const lse = (r: number[]) => Math.log(r.reduce((a, v) => a + Math.exp(v), 0))
      const nll = [0, 1].map((t) => lse(rows.slice(t * V, (t + 1) * V)) - rows[t * V + [2, 0][t]!]!)
      expect(maxDiff(out.nll!.data as Float32Array, nll)).toBeLessThan(1e-6)
      const top = (t: number): number => {
        const r = rows.slice(t * V, (t + 1) * V)
        return r.indexOf(Math.max(...r))
      }
      expect(Array.from(out.argmax!.data as BigInt64Array, Number)).toEqual([top(0), top(1)])
    } finally {
      await s.release()
      await m.close()
    }
  })
})

describe('what is not a runnable decoder is refused with the file and the reason', () => {
  async function writeGraph(name: string, inputs: string[], outputs: string[]): Promise<string> {
    const f = (n: string) => ({ name: n, elemType: DataType.FLOAT, shape: [1, 4] })
    const path = join(root, name)
    await writeFile(
      path,
      encodeModel({
        initializers: [{ name: 'w', dataType: DataType.FLOAT, dims: [4, 4], raw: f32Bytes(new Array(16).fill(0.5)) }],
        nodes: [{ opType: 'MatMul', inputs: [inputs[0]!, 'w'], outputs: [outputs[0]!] }],
        inputs: inputs.map(f),
        outputs: outputs.map(f),
      }),
    )
    return path
  }
  async function failure(path: string): Promise<Error> {
    const m = await openModel(path)
    try {
      return await evaluatePerplexity(m, Array.from({ length: 40 }, (_, i) => i), { ctx: 8, threads: 1 }).then(
        () => new Error('no error'),
        (e: Error) => e,
      )
    } finally {
      await m.close()
    }
  }

  it('a MatMul-only graph: no logits output', async () => {
    const path = await writeGraph('matmul.onnx', ['x'], ['y'])
    const e = await failure(path)
    expect(e).toBeInstanceOf(ModelFormatError)
    expect(e.message).toBe(
      `${path}: no 'logits' output (outputs: 'y'); a decoder needs input_ids → logits (optionally attention_mask, position_ids, past_key_values.N.key/value → present.N.key/value)`,
    )
  })

  it('logits but no input_ids, an input it cannot feed, a layer without its value cache', async () => {
    expect((await failure(await writeGraph('no-ids.onnx', ['x'], ['logits']))).message).toMatch(/no-ids\.onnx: no 'input_ids' input \(inputs: 'x'\)/)
    expect((await failure(await writeGraph('types.onnx', ['input_ids', 'token_type_ids'], ['logits']))).message).toMatch(
      /types\.onnx: unexpected input 'token_type_ids', which Quantscope cannot feed/,
    )
    expect((await failure(await writeGraph('half-cache.onnx', ['input_ids', 'past_key_values.0.key'], ['logits', 'present.0.key']))).message).toMatch(
      /half-cache\.onnx: past key\/value inputs: layer 0 has no value/,
    )
  })

  it('a quantization plan on an .onnx file', async () => {
    const job = { kind: 'perplexity' as const, model: join(FIXTURE, 'onnx', 'model.onnx'), text: { tokens: ids.slice(0, 64) }, ctx: 32, threads: 1 }
    const e = await runInferenceJob({ ...job, variant: { overrides: { 'model.embed_tokens.weight': new Float32Array(1) } } }).then(
      () => new Error('no error'),
      (err: Error) => err,
    )
    expect(e).toBeInstanceOf(InferenceInputError)
    expect(e.message).toMatch(/model\.onnx: quantization plans need the model's weights/)
  })
})
