import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { loadTokenizer } from '../../worker/model/tokenizer'
import { DecoderSession } from '../../worker/inference/session'
import { generateTokens, generationGraph } from '../../worker/inference/generate'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { DEFAULT_KV_CALIBRATION_TEXT, kvEvalOptions } from '../../worker/inference/kv-calibration'
import { kvGraphFromEval, type KvEvalOptions, type KvSmoothing } from '../../worker/inference/kv-quant'
import { runInferenceJob } from '../../worker/inference/inference-jobs'
import type { GenerateJobResult } from '../../worker/inference/inference-protocol'
import { gaussian } from '../helpers/tiny-llama'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'
import { kvReference, maxDiff } from '../helpers/kv-reference'
import { logSoftmax } from '../helpers/reference-forward'
import { runCli } from '../helpers/run-cli'

/**
 * Generation with a quantized KV cache (WKVQuant past-only or naive): every step's logits
 * against a float64 forward that quantizes K/V by the documented formula (kv-reference.ts),
 * and on the default model the log-probs of greedy generation against the perplexity graph
 * on the same token sequence (both: keys j < t quantized, j = t full precision).
 */

let root: string
let tiny: TinyDecoder
let model: OpenedModel
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-generate-kv-'))
  tiny = await writeTinyDecoder(join(root, 'qwen2'), { seed: 31, bias: true, hidden: 64, heads: 4, kvHeads: 2, layers: 2, dtype: 'F32' })
  model = await openModel(tiny.dir)
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

function randomSmoothing(seed: number): KvSmoothing {
  const C = 2 * 16
  const mk = (s: number) => ({ shift: Float32Array.from(gaussian(C, s, 0.3)), scale: Float32Array.from(gaussian(C, s + 1, 0.3), (g) => 0.5 + Math.abs(g)) })
  return { key: [mk(seed), mk(seed + 2)], value: [mk(seed + 4), mk(seed + 6)] }
}

/** Greedy generation through the decode graph; every step's logits (copied) by position. */
async function generateWithLogits(m: OpenedModel, prompt: number[], maxTokens: number, kv: KvEvalOptions | null): Promise<{ ids: number[]; logits: Map<number, Float32Array> }> {
  const s = await DecoderSession.create(m, { threads: 2, graph: generationGraph(prompt.length, maxTokens, { kv }) })
  try {
    const logits = new Map<number, Float32Array>()
    const r = await generateTokens(s, prompt, { maxTokens }, { onLogits: (row, pos) => logits.set(pos, row.slice()) })
    return { ids: r.ids, logits }
  } finally {
    await s.release()
  }
}

describe('generation with a quantized KV cache vs a float64 reference (tiny qwen2)', () => {
  const cases: { name: string; kv: KvEvalOptions }[] = [
    { name: '3-bit past-only, smoothed', kv: { bits: 3, group: null, pastOnly: true, smooth: true, smoothing: randomSmoothing(13) } },
    { name: '3-bit naive, smoothed', kv: { bits: 3, group: null, pastOnly: false, smooth: true, smoothing: randomSmoothing(13) } },
    { name: '2-bit past-only, groups of 8', kv: { bits: 2, group: 8, pastOnly: true, smooth: false } },
  ]
  it.each(cases)('$name: every step equals the reference over prompt + generated tokens', async ({ kv }) => {
    const prompt = randomTokens(5, tiny.ref.vocab, 7)
    const maxTokens = 10
    const { ids, logits } = await generateWithLogits(model, prompt, maxTokens, kv)
    expect(ids).toHaveLength(maxTokens)
    const seq = [...prompt, ...ids]
    const refKv = { bits: kv.bits, group: kv.group, pastOnly: kv.pastOnly, smooth: kv.smooth ? kv.smoothing! : undefined }
    const ref = kvReference(tiny.ref, tiny.values, seq.slice(0, -1), refKv)
    // No code within 2e-5 of a rounding boundary: float32 and float64 pick the same codes.
    expect(ref.margin).toBeGreaterThan(2e-5)
    const other = kvReference(tiny.ref, tiny.values, seq.slice(0, -1), { ...refKv, pastOnly: !kv.pastOnly })
    const full = kvReference(tiny.ref, tiny.values, seq.slice(0, -1), null)
    let worst = 0
    let vsOther = 0
    let vsFull = 0
    for (let i = 0; i < maxTokens; i++) {
      const pos = prompt.length - 1 + i
      const got = logits.get(pos)!
      worst = Math.max(worst, maxDiff(got, ref.logits[pos]!))
      vsOther = Math.max(vsOther, maxDiff(got, other.logits[pos]!))
      vsFull = Math.max(vsFull, maxDiff(got, full.logits[pos]!))
      // greedy picked the reference's top token
      const row = ref.logits[pos]!
      expect(ids[i]).toBe(row.indexOf(Math.max(...row)))
    }
    expect(worst).toBeLessThan(2e-4)
    // The other mode and full precision are far off: the comparison tells them apart.
    expect(vsOther).toBeGreaterThan(1e-2)
    expect(vsFull).toBeGreaterThan(1e-2)
  })

  it('refuses bad KV settings and smoothing without statistics', () => {
    expect(() => generationGraph(4, 4, { kv: { bits: 9, group: null, pastOnly: true, smooth: false } })).toThrow(/bits must be an integer from 2 to 8, got 9/)
    expect(() => generationGraph(4, 4, { kv: { bits: 4, group: null, pastOnly: true, smooth: true } })).toThrow(/needs its calibration statistics/)
  })
})

describe('default model', () => {
  const DEFAULT = resolve('resources/models/default')

  it('greedy past-only generation: per-position log-probs equal the perplexity graph with past-only KV on the same tokens', { timeout: 120_000 }, async () => {
    const m = await openModel(DEFAULT)
    try {
      const tok = await loadTokenizer(m.tokenizerPath!)
      const prompt = tok.encode(await readFile(resolve('resources/eval/heldout.txt'), 'utf8'), { addSpecialTokens: false }).slice(0, 12)
      const calib = tok.encode(await readFile(DEFAULT_KV_CALIBRATION_TEXT, 'utf8'), { addSpecialTokens: false })
      const kv = await kvEvalOptions(m, { bits: 3, group: null, smooth: true, pastOnly: true }, { ids: calib, maxWindows: 2 }, { threads: 2, cacheDir: null })
      const maxTokens = 24
      const { ids, logits } = await generateWithLogits(m, prompt, maxTokens, kv)
      const seq = [...prompt, ...ids]
      const genLogProb = ids.map((id, i) => logSoftmax(logits.get(prompt.length - 1 + i)!)[id]!)
      // The perplexity graph (evaluatePerplexity's options) on the whole sequence at once.
      const nllOf = async (kvOpts: KvEvalOptions | null): Promise<Float32Array> => {
        const s = await DecoderSession.create(m, { threads: 2, graph: { nll: true, maxPositions: seq.length, ...(kvOpts ? { kv: kvGraphFromEval(kvOpts) } : {}) } })
        try {
          const out = await s.forwardWindows([seq], { targets: [seq.slice(1).concat([0])] }, ['nll'])
          return out.nll!.data as Float32Array
        } finally {
          await s.release()
        }
      }
      const dev = (nll: Float32Array): number => Math.max(...genLogProb.map((lp, i) => Math.abs(lp + nll[prompt.length - 1 + i]!)))
      const pastOnly = await nllOf(kv)
      expect(dev(pastOnly)).toBeLessThan(1e-4)
      // The same figures as evaluatePerplexity's window NLL (one window = the sequence).
      const ppl = await evaluatePerplexity(m, seq, { ctx: seq.length, maxWindows: 1, threads: 2, kv })
      const mean = Array.from(pastOnly.subarray(0, seq.length - 1)).reduce((a, b) => a + b, 0) / (seq.length - 1)
      expect(Math.abs(ppl.windowNll[0]! - mean)).toBeLessThan(1e-5)
      // Naive and full precision give other log-probs: 1e-4 discriminates.
      expect(dev(await nllOf({ ...kv, pastOnly: false }))).toBeGreaterThan(1e-3)
      expect(dev(await nllOf(null))).toBeGreaterThan(1e-3)
    } finally {
      await m.close()
    }
  })

  it('job: kv and act reach every variant and are echoed; CLI generate --kv-bits … --json; flags without --kv-bits are usage errors', { timeout: 120_000 }, async () => {
    const job = { kind: 'generate' as const, model: DEFAULT, prompt: 'The cache', maxTokens: 6, threads: 2, stopTokens: [] }
    const plain = (await runInferenceJob(job)) as GenerateJobResult
    const quant = (await runInferenceJob({
      ...job,
      variants: [{ label: 'a' }, { label: 'b' }],
      kv: { bits: 2, group: null, smooth: true, pastOnly: false, calibrationWindows: 2, calibrationCache: false },
      act: { kind: 'int', bits: 3, outliers: 0 },
    })) as GenerateJobResult
    expect(quant.kv).toEqual({ bits: 2, group: null, smooth: true, pastOnly: false, calibration: { source: DEFAULT_KV_CALIBRATION_TEXT, tokens: 512, windows: 2 } })
    expect(quant.act).toEqual({ kind: 'int', bits: 3, outliers: 0 })
    expect(plain.kv).toBeUndefined()
    // 2-bit naive KV with 3-bit activations changes what the model says.
    expect(quant.variants[0]!.ids).not.toEqual(plain.variants[0]!.ids)
    // Both variants (the same weights) generated with the same quantization.
    expect(quant.variants[1]!.ids).toEqual(quant.variants[0]!.ids)

    const r = await runCli(['generate', DEFAULT, '--prompt', 'The cache', '--max-tokens', '4', '--kv-bits', '4', '--kv-group', '16', '--kv-past-only', '--act', 'int:bits=8,outliers=2', '--json'])
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout) as GenerateJobResult
    expect(out.kv).toEqual({ bits: 4, group: 16, smooth: false, pastOnly: true })
    expect(out.act).toEqual({ kind: 'int', bits: 8, outliers: 2 })
    expect(out.variants[0]!.ids).toHaveLength(4)
    const bad = await runCli(['generate', DEFAULT, '--prompt', 'x', '--kv-past-only'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/go with --kv-bits/)
  })
})
