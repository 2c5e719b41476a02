import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { evaluatePerplexity, planWindows, type EvalProgress } from '../../worker/inference/perplexity'
import { cacheBytes, decodeWindow, encodeWindow } from '../../worker/inference/logprob-cache'
import { quantile } from '../../worker/inference/kld'
import type { WeightOverrides } from '../../worker/inference/weights'
import { logSoftmax, referenceForward, referencePerplexity } from '../helpers/reference-forward'
import { gaussian } from '../helpers/tiny-llama'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

let root: string
let tiny: TinyDecoder
let model: OpenedModel
const CTX = 16
let ids: number[]

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-inference-ppl-'))
  tiny = await writeTinyDecoder(join(root, 'llama'), { seed: 31, heads: 4, kvHeads: 2 })
  model = await openModel(tiny.dir)
  ids = randomTokens(3 * CTX + 5, tiny.ref.vocab, 31) // 3 windows + a dropped remainder
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

describe('perplexity protocol', () => {
  it('splits into non-overlapping windows and drops the remainder', () => {
    const w = planWindows(Array.from({ length: 10 }, (_, i) => i), 4)
    expect(w).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
    ])
    expect(planWindows(Array.from({ length: 10 }, (_, i) => i), 4, 1)).toEqual([[0, 1, 2, 3]])
  })

  it('explains a text shorter than one window', () => {
    expect(() => planWindows([1, 2, 3], 256)).toThrow(
      'the text has 3 tokens, fewer than one window of ctx = 256 tokens; use a longer text or a smaller context length',
    )
  })

  it('matches the float64 reference perplexity (ctx − 1 predictions per window, exp of the mean NLL)', async () => {
    const progress: EvalProgress[] = []
    const res = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, windowsPerRun: 1 }, { onProgress: (p) => progress.push(p) })
    const ref = referencePerplexity(tiny.ref, tiny.values, ids, CTX)
    expect(res.windows).toBe(3)
    expect(res.tokens).toBe(3 * CTX)
    expect(res.predicted).toBe(3 * (CTX - 1))
    expect(ref.nll.length).toBe(res.predicted)
    expect(Math.abs(res.ppl / ref.ppl - 1)).toBeLessThan(1e-5)
    expect(res.ppl).toBeGreaterThan(10) // a random model: near the vocabulary size, far from 1
    const evalSteps = progress.filter((p) => p.stage === 'evaluating')
    expect(evalSteps.map((p) => p.done)).toEqual([1, 2, 3])
    expect(progress.some((p) => p.stage === 'loading')).toBe(true)
  })

  it('windows batched into one runtime call give the same per-window NLL as one at a time', async () => {
    const one = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, windowsPerRun: 1 })
    const all = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, windowsPerRun: 3 })
    const two = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, windowsPerRun: 2 }) // 2 + 1
    for (let w = 0; w < 3; w++) {
      expect(Math.abs(all.windowNll[w]! - one.windowNll[w]!)).toBeLessThan(1e-6)
      expect(Math.abs(two.windowNll[w]! - one.windowNll[w]!)).toBeLessThan(1e-6)
    }
    const ref = referencePerplexity(tiny.ref, tiny.values, ids, CTX)
    for (let w = 0; w < 3; w++) {
      const refWindow = ref.nll.slice(w * (CTX - 1), (w + 1) * (CTX - 1)).reduce((a, b) => a + b, 0) / (CTX - 1)
      expect(Math.abs(all.windowNll[w]! - refWindow)).toBeLessThan(1e-5)
    }
  })

  it('maxWindows limits the evaluation to the first windows', async () => {
    const res = await evaluatePerplexity(model, ids, { ctx: CTX, maxWindows: 1, threads: 2 })
    const ref = referencePerplexity(tiny.ref, tiny.values, ids, CTX, 1)
    expect(res.windows).toBe(1)
    expect(Math.abs(res.ppl / ref.ppl - 1)).toBeLessThan(1e-5)
  })

  it('stops at the next window when the signal aborts', async () => {
    const controller = new AbortController()
    const run = evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, windowsPerRun: 1 }, {
      signal: controller.signal,
      onProgress: (p) => {
        if (p.stage === 'evaluating' && p.done === 1) controller.abort()
      },
    })
    await expect(run).rejects.toMatchObject({ name: 'AbortError' })
  })
})

/** The float64 KL(base ‖ variant) per predicted token, over the protocol's windows. */
function referenceKl(base: Map<string, Float64Array>, variant: Map<string, Float64Array>, windows: number[][]): { kl: number[]; agree: number } {
  const kl: number[] = []
  let agree = 0
  for (const win of windows) {
    const a = referenceForward(tiny.ref, base, win).logits
    const b = referenceForward(tiny.ref, variant, win).logits
    for (let t = 0; t < win.length - 1; t++) {
      const lp = logSoftmax(a[t]!)
      const lq = logSoftmax(b[t]!)
      let s = 0
      for (let v = 0; v < lp.length; v++) s += Math.exp(lp[v]!) * (lp[v]! - lq[v]!)
      kl.push(s)
      let ia = 0
      let ib = 0
      for (let v = 1; v < lp.length; v++) {
        if (a[t]![v]! > a[t]![ia]!) ia = v
        if (b[t]![v]! > b[t]![ib]!) ib = v
      }
      if (ia === ib) agree++
    }
  }
  return { kl, agree }
}

describe('KL divergence against the base model', () => {
  /** A variant: noise on one tensor (array override) and a row producer for another. */
  function variant(): { overrides: WeightOverrides; values: Map<string, Float64Array> } {
    const values = new Map(tiny.values)
    const down = 'model.layers.0.mlp.down_proj.weight'
    const noisy = Float32Array.from(tiny.values.get(down)!, (x, i) => x + gaussian(1, 1000 + i, 0.08)[0]!)
    values.set(down, Float64Array.from(noisy))
    const q = 'model.layers.1.self_attn.q_proj.weight'
    const cols = tiny.ref.hidden
    const qv = Float32Array.from(tiny.values.get(q)!, (x) => Math.round(x * 20) / 20) // a coarse "quantizer"
    values.set(q, Float64Array.from(qv))
    const overrides: WeightOverrides = new Map<string, Float32Array | ((r0: number, r1: number) => Float32Array)>([
      [down, noisy],
      [q, (r0, r1) => qv.slice(r0 * cols, r1 * cols)],
    ])
    return { overrides, values }
  }

  it('the model against itself: KL 0, top-1 agreement 1, ΔPPL 0', async () => {
    const res = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, kld: { cache: 'off' } })
    expect(res.kld!.baseSource).toBe('recompute')
    expect(res.kld!.mean).toBeGreaterThanOrEqual(0) // clamped: KL of a model against itself is 0, never negative noise
    expect(res.kld!.mean).toBeLessThan(1e-6)
    expect(res.kld!.top1).toBe(1)
    expect(Math.abs(res.kld!.deltaPpl)).toBeLessThan(1e-9 * res.ppl + 1e-6)
  })

  it('a variant (overrides) matches the float64 KL, top-1 agreement and ΔPPL', async () => {
    const { overrides, values } = variant()
    const res = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, overrides, kld: { cache: 'off' } })
    const windows = planWindows(ids, CTX)
    const ref = referenceKl(tiny.values, values, windows)
    const sorted = Float64Array.from(ref.kl).sort()
    const mean = ref.kl.reduce((a, b) => a + b, 0) / ref.kl.length
    expect(mean).toBeGreaterThan(1e-3) // the perturbation is visible
    expect(Math.abs(res.kld!.mean - mean)).toBeLessThan(1e-5)
    expect(Math.abs(res.kld!.median - quantile(sorted, 0.5))).toBeLessThan(1e-5)
    expect(Math.abs(res.kld!.p99 - quantile(sorted, 0.99))).toBeLessThan(1e-5)
    expect(res.kld!.top1).toBeCloseTo(ref.agree / ref.kl.length, 10)
    const basePpl = referencePerplexity(tiny.ref, tiny.values, ids, CTX).ppl
    const varPpl = referencePerplexity(tiny.ref, values, ids, CTX).ppl
    expect(Math.abs(res.ppl / varPpl - 1)).toBeLessThan(1e-5)
    expect(Math.abs(res.kld!.deltaPpl - (varPpl - basePpl))).toBeLessThan(1e-4 * basePpl)
  })

  it('the disk cache: written on the first run, read on the second, same numbers within its precision', async () => {
    const cacheDir = join(root, 'cache')
    const { overrides } = variant()
    const first = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, overrides, kld: { cache: 'auto', cacheDir } })
    expect(first.kld!.baseSource).toBe('cache-write')
    expect((await readdir(cacheDir)).filter((f) => f.endsWith('.qslp'))).toHaveLength(1)
    const second = await evaluatePerplexity(model, ids, { ctx: CTX, threads: 2, overrides, kld: { cache: 'auto', cacheDir } })
    expect(second.kld!.baseSource).toBe('cache-read')
    expect(Math.abs(second.kld!.mean - first.kld!.mean)).toBeLessThan(2e-4 * first.kld!.mean + 1e-6)
    expect(second.kld!.top1).toBe(first.kld!.top1)
    expect(second.kld!.deltaPpl).toBeCloseTo(first.kld!.deltaPpl, 5)
    // Other windows (ctx) are another cache entry; a tiny budget means no file at all.
    const third = await evaluatePerplexity(model, ids, { ctx: 8, threads: 2, overrides, kld: { cache: 'auto', cacheDir, cacheBudgetBytes: 1000 } })
    expect(third.kld!.baseSource).toBe('recompute')
    // A budget for one file only: the older entry makes room for the new one.
    const before = (await readdir(cacheDir)).filter((f) => f.endsWith('.qslp'))
    const budget = cacheBytes(8, tiny.ref.vocab, 6) + 100
    const fourth = await evaluatePerplexity(model, ids, { ctx: 8, threads: 2, overrides, kld: { cache: 'auto', cacheDir, cacheBudgetBytes: budget } })
    expect(fourth.kld!.baseSource).toBe('cache-write')
    const after = (await readdir(cacheDir)).filter((f) => f.endsWith('.qslp'))
    expect(after).toHaveLength(1)
    expect(after[0]).not.toBe(before[0])
  })

  it('cache rows round-trip within half a code step', () => {
    const V = 1000
    const ctx = 3
    const lp = new Float32Array(ctx * V)
    for (let t = 0; t < ctx; t++) {
      const row = logSoftmax(gaussian(V, 77 + t, 3))
      lp.set(row, t * V)
    }
    const w = decodeWindow(ctx, V, encodeWindow(ctx, V, { logprobs: lp, argmax: Int32Array.of(5, 6, 7), nll: Float32Array.of(1.5, 2.5, 3.5) }))
    expect(Array.from(w.argmax)).toEqual([5, 6, 7])
    expect(Array.from(w.nll)).toEqual([1.5, 2.5, 3.5])
    let worst = 0
    for (let t = 0; t < ctx; t++) {
      let max = -Infinity
      for (let v = 0; v < V; v++) max = Math.max(max, lp[t * V + v]!)
      for (let v = 0; v < V; v++) {
        const x = lp[t * V + v]!
        if (x > max - 24) worst = Math.max(worst, Math.abs(w.logprobs[t * V + v]! - x))
        else expect(w.logprobs[t * V + v]!).toBeCloseTo(max - 24, 3) // clamped floor
      }
    }
    expect(worst).toBeLessThan(24 / 65535 / 2 + 1e-5)
  })
})
