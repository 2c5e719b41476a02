import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { DecoderSession, type KvCache } from '../../worker/inference/session'
import { generateTokens } from '../../worker/inference/generate'
import { nucleus, sampleToken, seededRandom } from '../../worker/inference/sampler'
import { referenceForward } from '../helpers/reference-forward'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

let root: string
let tiny: TinyDecoder
let model: OpenedModel
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-inference-kv-'))
  // Head size 16, so both attention forms (GroupQueryAttention and standard ops) apply.
  tiny = await writeTinyDecoder(join(root, 'qwen2'), { seed: 21, bias: true, hidden: 64, heads: 4, kvHeads: 2 })
  model = await openModel(tiny.dir)
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}

describe.each(['gqa', 'ops'] as const)('incremental decoding with the KV cache (%s attention)', (attention) => {
  it('prefill + single steps + a chunk give the logits of one full forward pass', async () => {
    const V = tiny.ref.vocab
    const ids = randomTokens(14, V, 5)
    const full = await DecoderSession.create(model, { threads: 2, graph: { logits: 'all', maxPositions: 32, attention } })
    const fullLogits = (await full.forward({ tokens: ids })).outputs.logits!.data as Float32Array
    await full.release()

    const kv = await DecoderSession.create(model, { threads: 2, graph: { logits: 'all', kvCache: true, maxPositions: 32, attention } })
    const pieces = [ids.slice(0, 5), [ids[5]!], [ids[6]!], [ids[7]!], ids.slice(8, 11), [ids[11]!], ids.slice(12)]
    let cache: KvCache | undefined
    let pos = 0
    let worst = 0
    for (const piece of pieces) {
      const step = await kv.forward({ tokens: piece, past: cache })
      const got = step.outputs.logits!.data as Float32Array
      expect(step.outputs.logits!.dims).toEqual([1, piece.length, V])
      worst = Math.max(worst, maxDiff(got, fullLogits.subarray(pos * V, (pos + piece.length) * V)))
      cache = step.present!
      pos += piece.length
      expect(cache.length).toBe(pos)
      expect(cache.keys[0]!.dims).toEqual([1, tiny.ref.kvHeads, pos, tiny.ref.hidden / tiny.ref.heads])
    }
    await kv.release()
    expect(worst).toBeLessThan(1e-5)
    // …and both match the float64 reference.
    const ref = referenceForward(tiny.ref, tiny.values, ids)
    expect(maxDiff(fullLogits, ref.logits.flatMap((r) => Array.from(r)))).toBeLessThan(5e-6)
  })

  it("the 'last' logits output is the last row of the full logits", async () => {
    const V = tiny.ref.vocab
    const ids = randomTokens(9, V, 6)
    const s = await DecoderSession.create(model, { threads: 2, graph: { logits: 'last', kvCache: true, maxPositions: 16, attention } })
    const out = await s.forward({ tokens: ids })
    await s.release()
    expect(out.outputs.logits!.dims).toEqual([1, 1, V])
    const ref = referenceForward(tiny.ref, tiny.values, ids)
    expect(maxDiff(out.outputs.logits!.data as Float32Array, ref.logits[8]!)).toBeLessThan(5e-6)
  })

  it('refuses positions beyond the RoPE table and token ids outside the vocabulary', async () => {
    const s = await DecoderSession.create(model, { threads: 2, graph: { logits: 'last', kvCache: true, maxPositions: 4, attention } })
    await expect(s.forward({ tokens: [1, 2, 3, 4, 5] })).rejects.toThrow(/positions up to 4 exceed the RoPE table of this session \(4 positions\)/)
    await expect(s.forward({ tokens: [1, 96] })).rejects.toThrow(/token id 96 at 1 is outside the vocabulary \[0, 96\)/)
    await s.release()
  })
})

describe('generation', () => {
  it('greedy generation follows the float64 reference argmax, token by token', async () => {
    const prompt = randomTokens(6, tiny.ref.vocab, 8)
    const s = await DecoderSession.create(model, { threads: 2, graph: { logits: 'last', kvCache: true, maxPositions: 32 } })
    const streamed: number[] = []
    const res = await generateTokens(s, prompt, { maxTokens: 8 }, { onToken: (id) => streamed.push(id) })
    await s.release()
    const seq = [...prompt]
    for (let i = 0; i < 8; i++) {
      const logits = referenceForward(tiny.ref, tiny.values, seq).logits.at(-1)!
      let best = 0
      for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v
      seq.push(best)
    }
    expect(res.ids).toEqual(seq.slice(prompt.length))
    expect(streamed).toEqual(res.ids)
    expect(res.stopReason).toBe('max-tokens')
  })

  it('sampling is repeatable with a seed, differs across seeds, and stops at a stop token', async () => {
    const prompt = randomTokens(4, tiny.ref.vocab, 9)
    const s = await DecoderSession.create(model, { threads: 2, graph: { logits: 'last', kvCache: true, maxPositions: 64 } })
    const a = await generateTokens(s, prompt, { maxTokens: 12, temperature: 1.5, topP: 0.95, seed: 1 })
    const b = await generateTokens(s, prompt, { maxTokens: 12, temperature: 1.5, topP: 0.95, seed: 1 })
    const c = await generateTokens(s, prompt, { maxTokens: 12, temperature: 1.5, topP: 0.95, seed: 2 })
    expect(b.ids).toEqual(a.ids)
    expect(c.ids).not.toEqual(a.ids)
    const stop = a.ids[3]!
    const d = await generateTokens(s, prompt, { maxTokens: 12, temperature: 1.5, topP: 0.95, seed: 1, stopTokens: [stop] })
    await s.release()
    expect(d.ids).toEqual(a.ids.slice(0, a.ids.indexOf(stop) + 1))
    expect(d.stopReason).toBe('stop-token')
  })
})

describe('sampler', () => {
  it('top-p keeps the smallest most-likely set reaching p, renormalised', () => {
    // probabilities 0.5, 0.25, 0.15, 0.1 (logits = log p)
    const logits = [Math.log(0.15), Math.log(0.5), Math.log(0.1), Math.log(0.25)]
    const n = nucleus(logits, { temperature: 1, topP: 0.8 })
    expect(Array.from(n.ids)).toEqual([1, 3, 0])
    expect(n.probs[0]).toBeCloseTo(0.5 / 0.9, 12)
    expect(n.probs[2]).toBeCloseTo(0.15 / 0.9, 12)
    expect(Array.from(nucleus(logits, { temperature: 1, topP: 0.75 }).ids)).toEqual([1, 3])
  })

  it('sampled frequencies follow softmax(logits / T)', () => {
    const logits = [0, 1, 2]
    const rand = seededRandom(3)
    const counts = [0, 0, 0]
    const N = 20000
    for (let i = 0; i < N; i++) counts[sampleToken(logits, { temperature: 2, topP: 1 }, rand)]!++
    const z = Math.exp(0) + Math.exp(0.5) + Math.exp(1)
    expect(counts[0]! / N).toBeCloseTo(1 / z, 1)
    expect(counts[2]! / N).toBeCloseTo(Math.exp(1) / z, 1)
    expect(sampleToken(logits, { temperature: 0, topP: 1 }, rand)).toBe(2)
  })
})
