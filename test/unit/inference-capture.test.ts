import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { captureActivations, type CapturedPoint } from '../../worker/inference/activation-capture'
import { planWindows } from '../../worker/inference/perplexity'
import { referenceForward, type RefActivations } from '../helpers/reference-forward'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

let root: string
let tiny: TinyDecoder
let model: OpenedModel
const CTX = 12

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-inference-capture-'))
  tiny = await writeTinyDecoder(join(root, 'qwen2'), { seed: 41, bias: true })
  model = await openModel(tiny.dir)
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

/** Rows (tokens × channels) of a capture point, gathered from the reference over all windows. */
function referenceRows(acts: RefActivations[], p: CapturedPoint): number[][] {
  const pick = (a: RefActivations): number[][] => {
    const b = p.block!
    switch (p.site) {
      case 'resid_in':
        return a.residIn[b]!
      case 'resid_out':
        return a.residOut[b]!
      case 'attn_in':
        return a.attnIn[b]!
      case 'o_in':
        return a.oIn[b]!
      case 'attn_k':
      case 'attn_v':
        throw new Error('the K/V sites are checked in inference-kv-quant.test.ts')
      case 'mlp_in':
        return a.mlpIn[b]!
      case 'down_in':
        return a.downIn[b]!
      case 'lm_head_in':
        return a.lmHeadIn
    }
  }
  return acts.flatMap(pick)
}

describe('activation capture', () => {
  it('per-channel mean, mean |x|, mean x², max |x| and XᵀX match the float64 reference', async () => {
    const ids = randomTokens(2 * CTX + 3, tiny.ref.vocab, 41)
    const res = await captureActivations(model, ids, { ctx: CTX, gram: true, threads: 2 })
    const acts = planWindows(ids, CTX).map((w) => referenceForward(tiny.ref, tiny.values, w).activations)
    expect(res.windows).toBe(2)
    // 2 blocks × (resid_in, resid_out, attn_in, o_in, mlp_in, down_in) + lm_head_in
    expect(res.points.map((p) => p.id).sort()).toEqual(
      ['L0', 'L1'].flatMap((l) => ['attn_in', 'down_in', 'mlp_in', 'o_in', 'resid_in', 'resid_out'].map((s) => `${l}.${s}`)).concat(['lm_head_in']).sort(),
    )
    expect(res.linearInputs['model.layers.1.self_attn.k_proj.weight']).toBe('L1.attn_in')
    expect(res.linearInputs['model.layers.0.mlp.down_proj.weight']).toBe('L0.down_in')
    for (const p of res.points) {
      const rows = referenceRows(acts, p)
      expect(p.stats.count).toBe(rows.length)
      const C = p.channels
      for (let c = 0; c < C; c++) {
        let s = 0
        let sa = 0
        let sq = 0
        let mx = 0
        for (const r of rows) {
          s += r[c]!
          sa += Math.abs(r[c]!)
          sq += r[c]! * r[c]!
          mx = Math.max(mx, Math.abs(r[c]!))
        }
        const n = rows.length
        const tol = 2e-5 * (1 + mx * mx)
        expect(Math.abs(p.stats.mean[c]! - s / n)).toBeLessThan(tol)
        expect(Math.abs(p.stats.meanAbs[c]! - sa / n)).toBeLessThan(tol)
        expect(Math.abs(p.stats.meanSq[c]! - sq / n)).toBeLessThan(tol)
        expect(Math.abs(p.stats.maxAbs[c]! - mx)).toBeLessThan(tol)
      }
      const gram = res.grams![p.id]
      if (p.site === 'resid_in' || p.site === 'resid_out') {
        expect(gram).toBeUndefined()
        continue
      }
      expect(gram).toHaveLength(C * C)
      for (const [i, j] of [[0, 0], [1, C - 1], [C - 1, 2]] as const) {
        let g = 0
        let scale = 0
        for (const r of rows) {
          g += r[i]! * r[j]!
          scale += Math.abs(r[i]! * r[j]!)
        }
        expect(Math.abs(gram![i * C + j]! - g)).toBeLessThan(1e-5 * (1 + scale))
      }
    }
    // the residual stream really changes across blocks (the taps are not all the same tensor)
    const r0 = res.points.find((p) => p.id === 'L0.resid_in')!.stats.meanSq
    const r1 = res.points.find((p) => p.id === 'L1.resid_out')!.stats.meanSq
    expect(r0).not.toEqual(r1)
  })

  it('restricts to the requested sites, without Gram matrices unless asked', async () => {
    const ids = randomTokens(CTX, tiny.ref.vocab, 42)
    const res = await captureActivations(model, ids, { ctx: CTX, sites: ['down_in'], threads: 2 })
    expect(res.points.map((p) => p.id)).toEqual(['L0.down_in', 'L1.down_in'])
    expect(res.grams).toBeUndefined()
    expect(res.points[0]!.channels).toBe(64)
  })
})
