import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { describeRuntimeFailure, NonFiniteResultError } from '../../worker/inference/errors'
import { generateTokens } from '../../worker/inference/generate'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { DecoderSession } from '../../worker/inference/session'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

const CTX = 16
let root: string
let tiny: TinyDecoder
let model: OpenedModel
let embedName: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-inference-sanity-'))
  tiny = await writeTinyDecoder(join(root, 'llama'), { seed: 7, heads: 4, kvHeads: 2 })
  model = await openModel(tiny.dir)
  embedName = model.tensors.find((t) => t.name.includes('embed_tokens'))!.name
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

/** The embedding with one token's row replaced by `value`. */
async function embeddingWithBadRow(token: number, value: number): Promise<Float32Array> {
  const entry = model.tensors.find((t) => t.name === embedName)!
  const [vocab, hidden] = entry.shape as [number, number]
  const rows = await model.readRows(embedName, 0, vocab)
  rows.fill(value, token * hidden, (token + 1) * hidden)
  return rows
}

describe('non-finite results are errors that say where', () => {
  it('names the first window and position whose NLL is NaN', async () => {
    const ids = randomTokens(3 * CTX, tiny.ref.vocab, 11)
    // A token whose first use is in the middle of window 1: every NLL of window 0 is finite. The
    // additive causal mask does not stop a NaN key (NaN + −∞ = NaN), so the whole of window 1
    // turns NaN from its position 0 on: that is where the result stops being finite.
    const first = new Map<number, number>()
    ids.forEach((id, i) => first.has(id) || first.set(id, i))
    const [token] = [...first].find(([, i]) => i >= CTX + 3 && i <= CTX + 10)!
    const overrides = new Map([[embedName, await embeddingWithBadRow(token, Number.NaN)]])
    const run = evaluatePerplexity(model, ids, { ctx: CTX, threads: 1, overrides })
    await expect(run).rejects.toBeInstanceOf(NonFiniteResultError)
    await expect(evaluatePerplexity(model, ids, { ctx: CTX, threads: 1, overrides })).rejects.toThrow(
      'the NLL is NaN at window 1, position 0',
    )
  })

  it('refuses an all-Inf weight instead of returning a null perplexity', async () => {
    const ids = randomTokens(2 * CTX, tiny.ref.vocab, 12)
    const entry = model.tensors.find((t) => t.name.endsWith('layers.0.mlp.down_proj.weight'))!
    const inf = new Float32Array(entry.shape[0]! * entry.shape[1]!).fill(Number.POSITIVE_INFINITY)
    await expect(evaluatePerplexity(model, ids, { ctx: CTX, threads: 1, overrides: new Map([[entry.name, inf]]) })).rejects.toThrow(
      /the NLL is NaN at window 0, position 0/,
    )
  })

  it('stops generation at a non-finite logit instead of emitting token 0', async () => {
    const overrides = new Map([[embedName, await embeddingWithBadRow(5, Number.NaN)]])
    const session = await DecoderSession.create(model, { threads: 1, overrides, graph: { logits: 'last', kvCache: true, maxPositions: 32 } })
    try {
      await expect(generateTokens(session, [1, 2, 5, 3], { maxTokens: 4 })).rejects.toThrow(/a logit is NaN at position 3/)
    } finally {
      await session.release()
    }
  })
})

describe('context beyond the trained positions', () => {
  it('warns when ctx exceeds max_position_embeddings, and only then', async () => {
    expect(model.config?.maxPositionEmbeddings).toBe(512)
    const long = await evaluatePerplexity(model, randomTokens(520, tiny.ref.vocab, 13), { ctx: 520, threads: 1 })
    expect(long.warnings).toEqual([expect.stringContaining("ctx 520 is longer than the model's max_position_embeddings (512)")])
    const short = await evaluatePerplexity(model, randomTokens(CTX, tiny.ref.vocab, 14), { ctx: CTX, threads: 1 })
    expect(short.warnings).toEqual([])
  })
})

describe('onnxruntime errors are wrapped', () => {
  it('drops build paths and status prefixes from the runtime message', () => {
    const raw =
      "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul node. Name:'/model/layers.0/mlp/down' " +
      'Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/math/matmul_helper.h:61 onnxruntime::MatMulComputeHelper::Compute() left operand cannot broadcast on dim 0'
    const text = describeRuntimeFailure(new Error(raw))
    expect(text).toBe("Non-zero status code returned while running MatMul node. Name:'/model/layers.0/mlp/down' Status Message: left operand cannot broadcast on dim 0")
    expect(text).not.toContain('onnxruntime_src')
  })
})
