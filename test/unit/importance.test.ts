import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { planWindows } from '../../worker/inference/perplexity'
import { DecoderSession } from '../../worker/inference/session'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'
import { computeLayerImportance } from '../../worker/importance/layer-importance'
import { averageRanks, jaccardSum, spearman } from '../../worker/importance/rank-math'
import { measureSensitivity } from '../../worker/importance/sensitivity'
import { logSoftmax, referenceForward } from '../helpers/reference-forward'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'
import { encode, llamaSpecs, rng } from '../helpers/tiny-llama'
import { runCli } from '../helpers/run-cli'

/**
 * Layer importance against two independent computations:
 * - the PyTorch/transformers reference (resources/models/train/make_importance_reference.py,
 *   run on the GPU machine) for the shipped default model, per layer;
 * - a float64 brute force (test/helpers/reference-forward.ts, plain loops) on a tiny random
 *   decoder whose lm_head has every row twice, so that every logit has an exact twin and an
 *   odd k splits a tie at every position. Tie rule (engine and both references): among equal
 *   logits the lower token id is taken — ONNX TopK's specified order, reproduced in PyTorch by
 *   a stable descending sort and here by sorting on (value desc, id asc).
 */
const ROOT = resolve(import.meta.dirname, '..', '..')
const DEFAULT_MODEL = join(ROOT, 'resources/models/default')
const HELDOUT = join(ROOT, 'resources/eval/heldout.txt')
const WINDOWS = 8

interface RefMethod {
  mean: number[]
  per_window: number[][]
}
let reference: { protocol: { window: number }; models: Record<string, { layers: number; methods: Record<string, RefMethod> }> }

/** Mean of the reference's per-window values over the first n windows (the engine's --max-windows n). */
function refPrefix(method: string, n: number, model = 'default'): number[] {
  const rows = reference.models[model]!.methods[method]!.per_window.slice(0, n)
  return rows[0]!.map((_, l) => rows.reduce((s, r) => s + r[l]!, 0) / rows.length)
}

beforeAll(async () => {
  reference = JSON.parse(await readFile(join(ROOT, 'test/fixtures/reference/importance-reference.json'), 'utf8'))
})

describe('layer importance on the default model vs the PyTorch reference', () => {
  let model: OpenedModel
  let ids: number[]
  beforeAll(async () => {
    model = await openModel(DEFAULT_MODEL)
    ids = await tokensOf({ file: HELDOUT }, () => openTokenizer(model))
  })
  afterAll(async () => {
    await model.close()
  })

  it('LSAQ k=10 with the final norm and cosine agree per layer (acceptance: within 0.02)', async () => {
    const r = await computeLayerImportance(model, ids, { lsaq: {}, cosine: true, maxWindows: WINDOWS, backend: 'native' })
    expect(r.windows).toBe(WINDOWS)
    expect(r.tokens).toBe(WINDOWS * reference.protocol.window)
    expect(r.k).toBe(10)
    expect(r.finalNorm).toBe(true)
    const lsaq = refPrefix('lsaq_k10_norm', WINDOWS)
    const cos = refPrefix('cosine', WINDOWS)
    expect(r.lsaq).toHaveLength(reference.models.default!.layers)
    // Measured: within 3e-8 (the fixture's 7 decimals) for both: the same top-k sets at every position.
    r.lsaq!.forEach((v, l) => expect(Math.abs(v - lsaq[l]!)).toBeLessThan(0.02))
    r.cosine!.forEach((v, l) => expect(Math.abs(v - cos[l]!)).toBeLessThan(0.02))
    expect(Math.max(...r.lsaq!.map((v, l) => Math.abs(v - lsaq[l]!)))).toBeLessThan(1e-3)
    expect(Math.max(...r.cosine!.map((v, l) => Math.abs(v - cos[l]!)))).toBeLessThan(1e-4)
  })

  it('without the final norm, and with k=5, the sets follow the reference too', async () => {
    const noNorm = await computeLayerImportance(model, ids, { lsaq: { finalNorm: false }, maxWindows: 4, backend: 'native' })
    const k5 = await computeLayerImportance(model, ids, { lsaq: { k: 5 }, maxWindows: 4, backend: 'native', windowsPerRun: 1 })
    const refNoNorm = refPrefix('lsaq_k10_nonorm', 4)
    const refK5 = refPrefix('lsaq_k5_norm', 4)
    noNorm.lsaq!.forEach((v, l) => expect(Math.abs(v - refNoNorm[l]!)).toBeLessThan(1e-3))
    k5.lsaq!.forEach((v, l) => expect(Math.abs(v - refK5[l]!)).toBeLessThan(1e-3))
    expect(noNorm.cosine).toBeUndefined()
    // The toggle matters: some layer's figure moves (k=10, 4 windows).
    const withNorm = refPrefix('lsaq_k10_norm', 4)
    expect(Math.max(...noNorm.lsaq!.map((v, l) => Math.abs(v - withNorm[l]!)))).toBeGreaterThan(1e-3)
  })
})

describe('layer importance on qwen2-tiny (q/k/v biases, tied lm_head) vs the PyTorch reference', () => {
  it('LSAQ k=10 and cosine per layer', async () => {
    const model = await openModel(join(ROOT, 'resources/models/qwen2-tiny'))
    try {
      const ids = await tokensOf({ file: HELDOUT }, () => openTokenizer(model))
      const r = await computeLayerImportance(model, ids, { lsaq: { k: 10 }, cosine: true, maxWindows: WINDOWS, backend: 'native' })
      const lsaq = refPrefix('lsaq_k10_norm', WINDOWS, 'qwen2-tiny')
      const cos = refPrefix('cosine', WINDOWS, 'qwen2-tiny')
      expect(r.lsaq).toHaveLength(4)
      r.lsaq!.forEach((v, l) => expect(Math.abs(v - lsaq[l]!)).toBeLessThan(1e-3))
      r.cosine!.forEach((v, l) => expect(Math.abs(v - cos[l]!)).toBeLessThan(1e-4))
    } finally {
      await model.close()
    }
  })
})

// ---------------------------------------------------------------- float64 brute force

/** Top-k ids by (value desc, id asc) and whether the k-th and (k+1)-th values are equal. */
function bruteTopK(z: ArrayLike<number>, k: number): { ids: number[]; boundaryTie: boolean } {
  const order = Array.from({ length: z.length }, (_, i) => i).sort((a, b) => z[b]! - z[a]! || a - b)
  return { ids: order.slice(0, k), boundaryTie: z[order[k - 1]!] === z[order[k]!] }
}

function rmsNorm(x: number[], w: Float64Array, eps: number): number[] {
  const ms = x.reduce((s, v) => s + v * v, 0) / x.length
  const r = 1 / Math.sqrt(ms + eps)
  return x.map((v, i) => v * r * w[i]!)
}

function bruteImportance(tiny: TinyDecoder, windows: number[][], k: number, finalNorm: boolean): { lsaq: number[]; cosine: number[]; ties: number; topk: number[][][] } {
  const { ref, values } = tiny
  const head = values.get('lm_head.weight')!
  const normW = values.get('model.norm.weight')!
  const lens = (h: number[]): number[] => {
    const x = finalNorm ? rmsNorm(h, normW, ref.eps) : h
    return Array.from({ length: ref.vocab }, (_, v) => x.reduce((s, xi, i) => s + xi * head[v * ref.hidden + i]!, 0))
  }
  const jSum = new Array<number>(ref.layers).fill(0)
  const cSum = new Array<number>(ref.layers).fill(0)
  let ties = 0
  let positions = 0
  // topk[i][row] = ids of lens i at row (window-major), as the graph's imp.topk.i
  const topk: number[][][] = Array.from({ length: ref.layers + 1 }, () => [])
  for (const w of windows) {
    const acts = referenceForward(ref, values, w).activations
    for (let t = 0; t < w.length; t++) {
      const resid = [...acts.residIn.map((b) => b[t]!), acts.residOut[ref.layers - 1]![t]!]
      const sets = resid.map((h, i) => {
        const top = bruteTopK(lens(h), k)
        if (top.boundaryTie) ties++
        topk[i]!.push(top.ids)
        return new Set(top.ids)
      })
      for (let l = 0; l < ref.layers; l++) {
        const inter = [...sets[l]!].filter((id) => sets[l + 1]!.has(id)).length
        jSum[l]! += inter / new Set([...sets[l]!, ...sets[l + 1]!]).size
        const a = resid[l]!
        const b = resid[l + 1]!
        const dot = a.reduce((s, v, i) => s + v * b[i]!, 0)
        cSum[l]! += dot / Math.sqrt(a.reduce((s, v) => s + v * v, 0) * b.reduce((s, v) => s + v * v, 0))
      }
      positions++
    }
  }
  return { lsaq: jSum.map((s) => 1 - s / positions), cosine: cSum.map((s) => 1 - s / positions), ties, topk }
}

describe('layer importance vs a float64 brute force (tiny decoder, tied logits)', () => {
  let root: string
  let tiny: TinyDecoder
  let model: OpenedModel
  const CTX = 16
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'qs-importance-'))
    tiny = await writeTinyDecoder(join(root, 'tiny'), { seed: 7, layers: 3, dtype: 'F32' })
    // lm_head rows 2j and 2j+1 identical: every lens logit has an exact twin.
    const H = tiny.ref.hidden
    const head = tiny.values.get('lm_head.weight')!
    for (let v = 1; v < tiny.ref.vocab; v += 2) head.copyWithin(v * H, (v - 1) * H, v * H)
    const specs = llamaSpecs({ hidden: H, layers: 3, heads: 4, kvHeads: 2, intermediate: 64, vocab: tiny.ref.vocab, dtype: 'F32', tied: false, modelType: 'llama', seed: 7 })
    await writeSafetensorsFile(join(tiny.dir, 'model.safetensors'), specs, (spec) => encode('F32', tiny.values.get(spec.name)!))
    model = await openModel(tiny.dir)
  })
  afterAll(async () => {
    await model.close()
    await rm(root, { recursive: true, force: true })
  })

  for (const [k, finalNorm] of [
    [5, true],
    [4, true],
    [7, false],
  ] as const) {
    it(`k=${k}, final norm ${finalNorm ? 'on' : 'off'}: LSAQ and the top-k ids equal the brute force, cosine within 1e-6`, async () => {
      const ids = randomTokens(3 * CTX + 5, tiny.ref.vocab, 11 + k)
      const r = await computeLayerImportance(model, ids, { lsaq: { k, finalNorm }, cosine: true, ctx: CTX, backend: 'native', threads: 2 })
      const windows = planWindows(ids, CTX)
      expect(r.windows).toBe(3)
      const b = bruteImportance(tiny, windows, k, finalNorm)
      // With twins everywhere, an odd k splits a tie at every lens (L + 1 per position); an even k never.
      expect(b.ties).toBe(k % 2 === 1 ? 3 * CTX * 4 : 0)
      // Same sets at every position: the Jaccard sums are equal to rounding of the mean.
      r.lsaq!.forEach((v, l) => expect(v).toBeCloseTo(b.lsaq[l]!, 12))
      r.cosine!.forEach((v, l) => expect(Math.abs(v - b.cosine[l]!)).toBeLessThan(1e-6))
      // The importances are not all alike (a broken lens giving the same set everywhere would fail here).
      expect(Math.max(...b.lsaq) - Math.min(...b.lsaq)).toBeGreaterThan(0.01)
      // Jaccard cannot see the tie rule here (swapping every twin pair is a relabelling of all
      // sets alike), so the graph's top-k ids are checked directly: the lower id of a split pair.
      const session = await DecoderSession.create(model, { backend: 'native', graph: { importance: { lens: { k, finalNorm } }, maxPositions: CTX } })
      try {
        const out = await session.forwardWindows(windows, {}, session.info.importance!.topk)
        session.info.importance!.topk.forEach((name, i) => {
          const got = out[name]!.data as BigInt64Array
          const rows = b.topk[i]!.map((_, r) => Array.from(got.subarray(r * k, (r + 1) * k), Number))
          expect(rows).toEqual(b.topk[i])
        })
      } finally {
        await session.release()
      }
    })
  }
})

/** Round to the nearest binary16 value, ties to even (normal and subnormal range; no overflow here). */
function f16(x: number): number {
  if (x === 0) return 0
  const a = Math.abs(x)
  const e = Math.max(-14, Math.floor(Math.log2(a)))
  const quantum = 2 ** (e - 10)
  const n = a / quantum
  const fl = Math.floor(n)
  const k = n - fl === 0.5 ? (fl % 2 === 0 ? fl : fl + 1) : Math.round(n)
  return Math.sign(x) * k * quantum
}

/**
 * Asymmetric 4-bit RTN per group as the engine documents it (worker/quant/rtn.ts): the
 * reference formula of test/helpers/rtn-int4.ts with the group's min and scale stored as fp16
 * and the codes taken against the stored values. (Without the fp16 step ~0.5% of the codes
 * move by one and the tiny model's ΔKLD moves by ~10%: KLD is that sensitive.)
 */
function rtnInt4Fp16Params(w: Float64Array, cols: number, group: number): Float64Array {
  const f = Math.fround
  const out = new Float64Array(w.length)
  for (let start = 0; start < w.length; start += group) {
    let lo = Infinity
    let hi = -Infinity
    for (let i = start; i < start + group; i++) {
      lo = Math.min(lo, w[i]!)
      hi = Math.max(hi, w[i]!)
    }
    const s = f16(f(f(hi - lo) / 15))
    const m = f16(lo)
    for (let i = start; i < start + group; i++) {
      const q = s === 0 ? 0 : Math.min(15, Math.max(0, Math.floor(f(f(f(w[i]! - m) / s) + 0.5))))
      out[i] = f(f(q * s) + m)
    }
  }
  if (w.length % cols !== 0 || cols % group !== 0) throw new Error('rtnInt4Fp16Params: shape')
  return out
}

/** Mean KL(base ‖ variant) and perplexity over the ctx − 1 predictions of each window, float64. */
function bruteKldPpl(tiny: TinyDecoder, variant: Map<string, Float64Array>, windows: number[][]): { kld: number; ppl: number; basePpl: number } {
  let kl = 0
  let nll = 0
  let baseNll = 0
  let n = 0
  for (const w of windows) {
    const base = referenceForward(tiny.ref, tiny.values, w).logits
    const q = referenceForward(tiny.ref, variant, w).logits
    for (let t = 0; t + 1 < w.length; t++) {
      const lb = logSoftmax(base[t]!)
      const lq = logSoftmax(q[t]!)
      for (let v = 0; v < lb.length; v++) kl += Math.exp(lb[v]!) * (lb[v]! - lq[v]!)
      nll -= lq[w[t + 1]!]!
      baseNll -= lb[w[t + 1]!]!
      n++
    }
  }
  return { kld: kl / n, ppl: Math.exp(nll / n), basePpl: Math.exp(baseNll / n) }
}

describe('measured sensitivity (one block quantized) vs a float64 brute force', () => {
  let root: string
  let tiny: TinyDecoder
  let model: OpenedModel
  const CTX = 16
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'qs-sensitivity-'))
    tiny = await writeTinyDecoder(join(root, 'tiny'), { seed: 3, layers: 3, dtype: 'F32' })
    model = await openModel(tiny.dir)
  })
  afterAll(async () => {
    await model.close()
    await rm(root, { recursive: true, force: true })
  })

  it('ΔKLD and ΔPPL per block equal RTN int4 of that block alone in float64; the result is cached and verified', async () => {
    const ids = randomTokens(2 * CTX, tiny.ref.vocab, 5)
    const cacheDir = join(root, 'cache')
    const options = { spec: 'rtn:bits=4,group=32,sym=false', ctx: CTX, backend: 'native' as const, threads: 2, cacheDir, kldCache: 'off' as const }
    const r = await measureSensitivity(model, ids, options)
    expect(r.cached).toBe(false)
    expect(r.blocks.map((b) => b.layer)).toEqual([0, 1, 2])
    const windows = planWindows(ids, CTX)
    for (const b of r.blocks) {
      const variant = new Map(tiny.values)
      for (const [name, w] of tiny.values) {
        if (!name.startsWith(`model.layers.${b.layer}.`) || !name.endsWith('proj.weight')) continue
        const cols = name.endsWith('down_proj.weight') ? tiny.ref.intermediate : tiny.ref.hidden
        variant.set(name, rtnInt4Fp16Params(w, cols, 32))
      }
      const brute = bruteKldPpl(tiny, variant, windows)
      expect(b.tensors).toBe(7)
      expect(b.deltaKld).toBeGreaterThan(0)
      expect(Math.abs(b.deltaKld - brute.kld) / brute.kld).toBeLessThan(2e-4) // measured ≤ 4.4e-5
      expect(Math.abs(b.deltaPpl - (brute.ppl - brute.basePpl))).toBeLessThan(1e-4) // measured ≤ 6e-6
      expect(r.basePpl).toBeCloseTo(brute.basePpl, 3)
    }
    const again = await measureSensitivity(model, ids, options)
    expect(again.cached).toBe(true)
    expect(again.blocks).toEqual(r.blocks)
    // An edited entry fails its checksum and is recomputed, never trusted.
    const [entry] = await readdir(cacheDir)
    const bytes = await readFile(join(cacheDir, entry!))
    const at = bytes.lastIndexOf('"deltaKld":')
    bytes[at + 12] = bytes[at + 12] === 0x31 ? 0x32 : 0x31
    await writeFile(join(cacheDir, entry!), bytes)
    const recomputed = await measureSensitivity(model, ids, options)
    expect(recomputed.cached).toBe(false)
    expect(recomputed.blocks).toEqual(r.blocks)
    // Another spec is another entry.
    const other = await measureSensitivity(model, ids, { ...options, spec: 'rtn:bits=3,group=32,sym=false' })
    expect(other.cached).toBe(false)
    other.blocks.forEach((b, i) => expect(b.deltaKld).toBeGreaterThan(r.blocks[i]!.deltaKld))
  })
})

describe('rank math', () => {
  it('jaccardSum equals set arithmetic on random rows of distinct ids', () => {
    const r = rng(5)
    const rows = 200
    const k = 6
    const pick = (): number[] => {
      const s = new Set<number>()
      while (s.size < k) s.add(Math.floor(r() * 12))
      return [...s]
    }
    const a: number[] = []
    const b: number[] = []
    let expected = 0
    for (let i = 0; i < rows; i++) {
      const x = pick()
      const y = pick()
      a.push(...x)
      b.push(...y)
      const inter = x.filter((v) => y.includes(v)).length
      expected += inter / new Set([...x, ...y]).size
    }
    expect(jaccardSum(a, b, rows, k)).toBeCloseTo(expected, 12)
    expect(jaccardSum(BigInt64Array.from(a.map(BigInt)), BigInt64Array.from(a.map(BigInt)), rows, k)).toBe(rows)
    expect(() => jaccardSum(a, b.slice(1), rows, k)).toThrow(/200×6/)
  })

  it('the test\'s binary16 rounding agrees with known values', () => {
    expect(f16(1 / 3)).toBe(0.333251953125)
    expect(f16(-0.1)).toBe(-0.0999755859375)
    expect(f16(1 + 2 ** -11)).toBe(1) // a tie goes to the even neighbour
    expect(f16(1 + 3 * 2 ** -11)).toBe(1 + 2 ** -9)
  })

  it('Spearman ρ on hand-checked cases', () => {
    // No ties: d = (−2, 1, −1, 2, 0), Σd² = 10, ρ = 1 − 6·10 / (5·24) = 0.5
    expect(spearman([10, 20, 30, 40, 50], [3, 1, 4, 2, 5])).toBeCloseTo(0.5, 12)
    // Ties: ranks of b = (1, 2, 3.5, 5, 3.5); centred (−2, −1, .5, 2, .5) against (−2, −1, 0, 1, 2):
    // Σ = 8, ρ = 8 / √(10 · 9.5)
    expect(averageRanks([5, 6, 7, 8, 7])).toEqual([1, 2, 3.5, 5, 3.5])
    expect(spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])).toBeCloseTo(8 / Math.sqrt(95), 12)
    expect(spearman([1, 2, 3], [3, 2, 1])).toBeCloseTo(-1, 12)
    expect(spearman([1, 1, 1], [1, 2, 3])).toBeNull()
  })
})

describe('importance CLI', () => {
  it('--json prints { method, layers: [{ layer, importance }] } equal to the reference', async () => {
    const r = await runCli(['importance', DEFAULT_MODEL, '--text', HELDOUT, '--method', 'lsaq', '--max-windows', '2', '--backend', 'native', '--json'])
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout) as { method: string; layers: { layer: number; importance: number }[]; k: number; cosine: number[]; spearman: Record<string, number> }
    expect(out.method).toBe('lsaq')
    expect(out.k).toBe(10)
    const ref = refPrefix('lsaq_k10_norm', 2)
    expect(out.layers.map((l) => l.layer)).toEqual(ref.map((_, l) => l))
    out.layers.forEach((l) => expect(Math.abs(l.importance - ref[l.layer]!)).toBeLessThan(1e-3))
    expect(Object.keys(out.spearman)).toEqual(['lsaq~cosine'])
    expect(out.spearman['lsaq~cosine']).toBeCloseTo(spearman(ref, refPrefix('cosine', 2))!, 6)
    // The default backend (onnxruntime-web's WASM build: its TopK and reductions) on one window.
    const cos = await runCli(['importance', DEFAULT_MODEL, '--text', HELDOUT, '--method', 'cosine', '--max-windows', '1', '--json'])
    const c = JSON.parse(cos.stdout) as { method: string; layers: { layer: number; importance: number }[]; lsaq: number[]; backend: string }
    expect(c.method).toBe('cosine')
    expect(c.backend).toBe('wasm')
    const refCos = refPrefix('cosine', 1)
    c.layers.forEach((l) => expect(Math.abs(l.importance - refCos[l.layer]!)).toBeLessThan(1e-4))
    const refLsaq1 = refPrefix('lsaq_k10_norm', 1)
    c.lsaq.forEach((v, l) => expect(Math.abs(v - refLsaq1[l]!)).toBeLessThan(1e-3))
  })

  it('refuses an unknown method, --k with cosine and sensitivity without a spec before any work (exit 2)', async () => {
    const bad = await runCli(['importance', DEFAULT_MODEL, '--text', HELDOUT, '--method', 'magic', '--json'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/--method must be one of lsaq, cosine, sensitivity/)
    expect(bad.stdout).toBe('')
    const k = await runCli(['importance', DEFAULT_MODEL, '--text', HELDOUT, '--method', 'cosine', '--k', '5'])
    expect(k.code).toBe(2)
    expect(k.stderr).toMatch(/--k and --no-final-norm go with --method lsaq/)
    const noSpec = await runCli(['importance', DEFAULT_MODEL, '--text', HELDOUT, '--method', 'sensitivity'])
    expect(noSpec.code).toBe(2)
    expect(noSpec.stderr).toMatch(/--method sensitivity needs --quant SPEC/)
  })
})
