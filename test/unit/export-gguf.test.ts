/**
 * GGUF export verified by its real consumer: llama.cpp (node-llama-cpp 3.21.1, its own CPU
 * kernels) loads the default model exported under uniform ggml plans (Q8_0, Q4_0), and its
 * per-token probabilities on held-out windows give the perplexity the app measures for the same
 * plan (within 0.5 %), its greedy continuation equals ours, and our GGUF reader reopens the file
 * to exactly the plan's blocks and dequantised values.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getLlama, LlamaLogLevel, type ControlledEvaluateInputItem, type Llama, type Token } from 'node-llama-cpp'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { loadTokenizer } from '../../worker/model/tokenizer'
import { createOverrides, quantizeEntry, readOrientedWeight, resolvePlanFor } from '../../worker/plan/apply'
import { planFromSpec, type Plan } from '../../worker/plan/plan'
import { planFromLlamaCppPreset } from '../../worker/plan/llama-cpp-presets'
import { evaluatePerplexity, planWindows } from '../../worker/inference/perplexity'
import { DecoderSession } from '../../worker/inference/session'
import type { WeightOverrides } from '../../worker/inference/weights'
import { generateTokens } from '../../worker/inference/generate'
import { runExport } from '../../worker/export/run-export'
import type { ExportReport } from '../../worker/export/contract'
import { permuteToGgufRows } from '../../worker/inference/gguf-layout'
import type { GgmlQuantizedTensor } from '../../worker/quant/ggml'
import { openOutputFile } from '../../worker/io/output-file'

const DEFAULT = join(__dirname, '../../resources/models/default')
const HELDOUT = join(__dirname, '../../resources/eval/heldout.txt')
const CTX = 256
const WINDOWS = 2
const PROMPT_TOKENS = 24
const NEW_TOKENS = 8

let dir: string
let model: OpenedModel
let llama: Llama
let ids: number[]

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-export-gguf-'))
  model = await openModel(DEFAULT)
  const tok = await loadTokenizer(join(DEFAULT, 'tokenizer.json'))
  ids = tok.encode(await readFile(HELDOUT, 'utf8'))
  llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
}, 60_000)

afterAll(async () => {
  await llama?.dispose()
  await model?.close()
  if (dir) await rm(dir, { recursive: true, force: true })
})

// node-llama-cpp brands its token ids; ours are the same integers (the GGUF carries our vocabulary).
const asTokens = (ids: readonly number[]): Token[] => ids as Token[]

/** Items asking for the next-token probabilities after each token where `want(i)` holds. */
function withProbabilities(ids: readonly number[], want: (i: number) => boolean): ControlledEvaluateInputItem[] {
  return asTokens(ids).map((id, i) => (want(i) ? [id, { generateNext: { probabilities: true } }] : id))
}

/** llama.cpp's NLL of each window, from its next-token probabilities (ids fed as they are: no BOS). */
async function llamaCppNll(path: string, windows: number[][]): Promise<{ nll: number; greedy: number[] }> {
  const m = await llama.loadModel({ modelPath: path })
  const context = await m.createContext({ contextSize: CTX, threads: 2, batchSize: CTX })
  try {
    const seq = context.getSequence()
    let sum = 0
    let count = 0
    for (const w of windows) {
      await seq.clearHistory()
      const res = await seq.controlledEvaluate(withProbabilities(w, (i) => i < w.length - 1))
      for (let i = 0; i < w.length - 1; i++) {
        const p = res[i]?.next.probabilities?.get(asTokens(w)[i + 1]!)
        expect(p, `probability of token ${i + 1} of a window`).toBeGreaterThan(0)
        sum -= Math.log(p!)
        count++
      }
    }
    // Greedy continuation of the first window's opening: the most probable token each step.
    await seq.clearHistory()
    const greedy: number[] = []
    let input = windows[0]!.slice(0, PROMPT_TOKENS)
    for (let t = 0; t < NEW_TOKENS; t++) {
      const res = await seq.controlledEvaluate(withProbabilities(input, (i) => i === input.length - 1))
      const probs = res[input.length - 1]!.next.probabilities!
      const top = [...probs.entries()].reduce((a, b) => (b[1] > a[1] ? b : a))
      greedy.push(top[0])
      input = [top[0]]
    }
    return { nll: sum / count, greedy }
  } finally {
    await context.dispose()
    await m.dispose()
  }
}

/** Index of the first value that differs (bit for bit), or -1. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length)
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length)
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length)
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i
  return -1
}

async function appGreedy(overrides: WeightOverrides, prompt: number[]): Promise<number[]> {
  const s = await DecoderSession.create(model, { threads: 2, overrides, graph: { logits: 'last', kvCache: true, maxPositions: PROMPT_TOKENS + NEW_TOKENS } })
  try {
    return (await generateTokens(s, prompt, { maxTokens: NEW_TOKENS })).ids
  } finally {
    await s.release()
  }
}

async function exportPlan(label: string, plan: Plan): Promise<{ report: ExportReport; out: string }> {
  const out = join(dir, `default-${label.replace(/[^A-Za-z0-9]+/g, '_')}.gguf`)
  const report = await runExport({ model, modelPath: DEFAULT, plan, planSource: label, format: 'gguf', out })
  return { report, out }
}

// Uniform legacy types over the linears, and llama-quantize's Q4_K_M mix (K types, quantized
// embeddings and output) over every matrix.
const CASES: Array<[string, (m: OpenedModel) => Plan]> = [
  ['ggml:type=Q8_0', (m) => planFromSpec(m, 'ggml:type=Q8_0')],
  ['ggml:type=Q4_0', (m) => planFromSpec(m, 'ggml:type=Q4_0')],
  ['llama.cpp Q4_K_M', (m) => planFromLlamaCppPreset(m, 'Q4_K_M')],
]

describe.each(CASES)('GGUF export of the default model as %s', (label, makePlan) => {
  let plan: Plan
  let report: ExportReport
  let out: string
  /** The plan's quantized tensors, and their dequantised values as the evaluation's weight overrides. */
  const quantized = new Map<string, GgmlQuantizedTensor>()
  const overrides = new Map<string, Float32Array>()

  beforeAll(async () => {
    plan = makePlan(model)
    ;({ report, out } = await exportPlan(label, plan))
    // What createOverrides hands the graph, computed once here for the three checks below.
    for (const e of resolvePlanFor(model, plan, label)) {
      const q = quantizeEntry(e, await readOrientedWeight(model, e), undefined) as GgmlQuantizedTensor
      quantized.set(e.tensor.name, q)
      overrides.set(e.tensor.name, q.dequantizeRows(0, e.rows))
    }
    // The same values as the app's own lazy overrides (checked on one tensor; each costs a quantization).
    const [first] = overrides.keys()
    const lazy = (await createOverrides(model, { plan, source: label })).get(first!) as (r0: number, r1: number) => Promise<Float32Array>
    expect(firstDifference(await lazy(0, model.tensors.find((t) => t.name === first)!.shape[0]!), overrides.get(first!)!)).toBe(-1)
  }, 120_000)

  it('llama.cpp’s perplexity on held-out windows is the app’s for the same plan (within 0.5 %), and greedy generation agrees', async () => {
    const app = await evaluatePerplexity(model, ids, { ctx: CTX, maxWindows: WINDOWS, threads: 2, overrides })
    const windows = planWindows(ids, CTX, WINDOWS)
    const cpp = await llamaCppNll(out, windows)

    const cppPpl = Math.exp(cpp.nll)
    console.info(`${label}: app ppl ${app.ppl.toFixed(4)}, llama.cpp ppl ${cppPpl.toFixed(4)} (${(100 * (cppPpl / app.ppl - 1)).toFixed(3)} %)`)
    expect(Math.abs(cppPpl / app.ppl - 1)).toBeLessThan(0.005)
    // The plan changes the model: the unquantized perplexity is not what either measured.
    expect(await appGreedy(overrides, windows[0]!.slice(0, PROMPT_TOKENS))).toEqual(cpp.greedy)
  })

  it('our GGUF reader reopens the export: the plan’s blocks byte for byte (q/k rows in llama.cpp order) and its dequantised values', async () => {
    expect(report.tensors.filter((t) => t.support === 'exact')).toHaveLength(Object.keys(plan.tensors).length)
    const gguf = await openModel(out)
    try {
      const cfg = model.config!
      const entries = resolvePlanFor(model, plan, label)
      for (const e of entries) {
        const written = report.tensors.find((t) => t.source === e.tensor.name)!
        const q = quantized.get(e.tensor.name)!
        let want = overrides.get(e.tensor.name)!
        const heads = /q_proj/.test(e.tensor.name) ? cfg.numHeads : /k_proj/.test(e.tensor.name) ? cfg.numKvHeads : null
        if (heads !== null) want = permuteToGgufRows(want, heads, cfg.headDim, e.cols)
        const entry = gguf.tensors.find((t) => t.name === written.name)!
        expect(entry.dtype).toBe(e.params.type)
        expect(entry.shape).toEqual([e.rows, e.cols])
        expect(firstDifference(await gguf.readRows(written.name, 0, e.rows), want), written.name).toBe(-1)
        if (heads === null) expect(Buffer.from(await gguf.readRaw(written.name)).equals(Buffer.from(q.blocks)), written.name).toBe(true)
      }
      // Sections add up to the file.
      expect(Object.values(report.sections).reduce((a, b) => a + b, 0)).toBe(report.bytes)
      expect(gguf.metadata['general.quantization_version']).toBe(2)
      expect(gguf.metadata['tokenizer.ggml.pre']).toBe('gpt-2')
    } finally {
      await gguf.close()
    }
  })
})

describe('GGUF export of a qwen2 model (q/k/v biases, tied embeddings, no q/k permutation)', () => {
  it('llama.cpp’s perplexity of qwen2-tiny with Q8_0 linears is the app’s (within 0.5 %), biases written exactly as F32', async () => {
    const QWEN = join(__dirname, '../../resources/models/qwen2-tiny')
    const qwen = await openModel(QWEN)
    try {
      const plan = planFromSpec(qwen, 'ggml:type=Q8_0')
      const out = join(dir, 'qwen2-q8_0.gguf')
      const report = await runExport({ model: qwen, modelPath: QWEN, plan, planSource: 'qwen2 Q8_0', format: 'gguf', out })
      expect(report.tensors.some((t) => t.name === 'output.weight')).toBe(false)
      const qids = (await loadTokenizer(join(QWEN, 'tokenizer.json'))).encode(await readFile(HELDOUT, 'utf8'))
      const app = await evaluatePerplexity(qwen, qids, { ctx: CTX, maxWindows: WINDOWS, threads: 2, overrides: await createOverrides(qwen, { plan, source: 'qwen2' }) })
      const cpp = Math.exp((await llamaCppNll(out, planWindows(qids, CTX, WINDOWS))).nll)
      console.info(`qwen2-tiny Q8_0: app ppl ${app.ppl.toFixed(4)}, llama.cpp ppl ${cpp.toFixed(4)} (${(100 * (cpp / app.ppl - 1)).toFixed(3)} %)`)
      expect(Math.abs(cpp / app.ppl - 1)).toBeLessThan(0.005)
      const gguf = await openModel(out)
      try {
        expect(gguf.tensors.find((t) => t.name === 'blk.1.attn_k.bias')!.dtype).toBe('F32')
        // qwen2 keeps HF's row order (NEOX RoPE in llama.cpp): no permutation of q/k rows or biases.
        expect(await gguf.readRows('blk.1.attn_k.bias', 0, 1)).toEqual(await qwen.readRows('model.layers.1.self_attn.k_proj.bias', 0, 1))
      } finally {
        await gguf.close()
      }
    } finally {
      await qwen.close()
    }
  })
})

describe('GGUF export: cancel and failure leave nothing', () => {
  it('a cancel mid-export and a full disk remove the partial file and say why', async () => {
    const sub = await mkdtemp(join(dir, 'fail-'))
    const plan = planFromSpec(model, 'ggml:type=Q4_0')
    const controller = new AbortController()
    const req = { model, modelPath: DEFAULT, plan, planSource: 'spec', format: 'gguf', out: join(sub, 'x.gguf') }
    await expect(
      runExport(req, { signal: controller.signal, onProgress: (p) => p.stage === 'writing' && p.done === 5 && controller.abort() }),
    ).rejects.toThrow(/cancelled/)
    expect(await readdir(sub)).toEqual([])
    let written = 0
    // A real file that stops growing after 3 MB, as a full disk does.
    const openOutput = async (path: string) => {
      const file = await openOutputFile(path)
      return {
        async write(b: Uint8Array) {
          if (written + b.length > 3_000_000) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' })
          written += b.length
          await file.write(b)
        },
        close: () => file.close(),
      }
    }
    await expect(runExport(req, { openOutput })).rejects.toThrow(/disk full/)
    expect(await readdir(sub)).toEqual([])
  })
})
