/**
 * Allocators: the knapsack against brute force on random instances, greedy and LSAQ rules on
 * hand-made cases, budget parsing, and allocation on a real model (plan fits, infeasible budget
 * names the smallest feasible size, which equals the memory model of the all-smallest plan).
 */
import { describe, expect, it, beforeAll } from 'vitest'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { InfeasibleError, solveGreedy, solveLsaq, solveOptimal, type AllocItem } from '../../worker/plan/allocators'
import { allocate, allocationTargets, parseOptionSpecs } from '../../worker/plan/allocate'
import { parseBudget } from '../../worker/plan/budget'
import { resolvePlanFor } from '../../worker/plan/apply'
import { memoryModel } from '../../worker/plan/memory-model'
import { planFromSpec } from '../../worker/plan/plan'

/** Deterministic PRNG (mulberry32), so a failure reproduces. */
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function bruteForce(items: AllocItem[], capacity: number): number {
  let best = Infinity
  const rec = (i: number, bytes: number, cost: number) => {
    if (bytes > capacity) return
    if (i === items.length) {
      best = Math.min(best, cost)
      return
    }
    for (const c of items[i]!.choices) if (c) rec(i + 1, bytes + c.bytes, cost + c.cost)
  }
  rec(0, 0, 0)
  return best
}

function item(name: string, layer: number | null, choices: ([number, number] | null)[]): AllocItem {
  return { name, layer, choices: choices.map((c) => (c ? { bytes: c[0], cost: c[1] } : null)) }
}

describe('allocators', () => {
  it('optimal equals brute force on 300 random instances (with unavailable options and negative costs), greedy never beats it', () => {
    const r = rng(7)
    let greedyWorse = 0
    for (let trial = 0; trial < 300; trial++) {
      const n = 1 + Math.floor(r() * 6)
      const k = 1 + Math.floor(r() * 4)
      const items: AllocItem[] = []
      for (let i = 0; i < n; i++) {
        const choices: ([number, number] | null)[] = []
        for (let j = 0; j < k; j++) choices.push(j > 0 && r() < 0.2 ? null : [1 + Math.floor(r() * 40) * (trial % 3 === 0 ? 6 : 1), r() * 2 - 0.2])
        items.push(item(`t${i}`, i, choices))
      }
      const min = items.reduce((a, it) => a + Math.min(...it.choices.filter((c) => c).map((c) => c!.bytes)), 0)
      const capacity = min + Math.floor(r() * 60)
      const expected = bruteForce(items, capacity)
      const opt = solveOptimal(items, capacity)
      expect(opt.exact).toBe(true)
      expect(opt.bytes).toBeLessThanOrEqual(capacity)
      expect(opt.cost).toBeCloseTo(expected, 12)
      const g = solveGreedy(items, capacity)
      expect(g.bytes).toBeLessThanOrEqual(capacity)
      expect(g.cost).toBeGreaterThanOrEqual(expected - 1e-12)
      if (g.cost > expected + 1e-9) greedyWorse++
    }
    // The instances are hard enough that the greedy rule is not always optimal.
    expect(greedyWorse).toBeGreaterThan(0)
  })

  it('optimal on a coarse grid (too many cells) stays feasible and no worse than the exact optimum n grid steps below the capacity', () => {
    const r = rng(11)
    const items = Array.from({ length: 12 }, (_, i) => item(`t${i}`, i, [[1000 + Math.floor(r() * 997), 3 + r()], [2000 + Math.floor(r() * 1999), 1 + r()], [4001 + Math.floor(r() * 3989), r()]]))
    const capacity = 40_000
    const exact = solveOptimal(items, capacity)
    const coarse = solveOptimal(items, capacity, 50)
    expect(exact.exact).toBe(true)
    expect(coarse.exact).toBe(false)
    expect(coarse.bytes).toBeLessThanOrEqual(capacity)
    expect(coarse.cost).toBeGreaterThanOrEqual(exact.cost - 1e-12)
    // Rounding adds less than one grid step per item, so every selection fitting capacity − n·step
    // fits the rounded sizes: the coarse result is at least as good as that exact optimum.
    const shrunk = solveOptimal(items, capacity - items.length * coarse.gridBytes!)
    expect(shrunk.exact).toBe(true)
    expect(coarse.cost).toBeLessThanOrEqual(shrunk.cost + 1e-12)
    expect(coarse.cost).toBeLessThan(shrunk.cost)
  })

  it('greedy takes the best ΔKLD per byte first; the knapsack sees the better pair', () => {
    // From 20 bytes: A +10 bytes saves 4 (0.4/byte), B +5 saves 3 (0.6/byte). Capacity 30.
    const items = [item('A', 0, [[10, 5], [20, 1]]), item('B', 1, [[10, 3], [15, 0]])]
    const g = solveGreedy(items, 30)
    expect(g.picks).toEqual([0, 1]) // B first, then A's +10 no longer fits
    expect(g.cost).toBe(5)
    const o = solveOptimal(items, 30)
    expect(o.picks).toEqual([1, 0])
    expect(o.cost).toBe(4)
    expect(solveGreedy(items, 35).picks).toEqual([1, 1])
    expect(() => solveGreedy(items, 19)).toThrow(InfeasibleError)
  })

  it('LSAQ: the largest n most important blocks at the high option that fit', () => {
    const importance = [0.1, 0.9, 0.5]
    const items = [0, 0, 1, 1, 2, 2].map((l, i) => item(`t${i}`, l, [[4, 0], [2, 0]]))
    // All low 12 bytes; +4 per block promoted, in the order 1, 2, 0.
    expect(solveLsaq(items, importance, 0, 1, 19).highLayers).toEqual([1])
    expect(solveLsaq(items, importance, 0, 1, 20).highLayers).toEqual([1, 2])
    expect(solveLsaq(items, importance, 0, 1, 20).picks).toEqual([1, 1, 0, 0, 0, 0])
    expect(solveLsaq(items, importance, 0, 1, 24).highLayers).toEqual([0, 1, 2])
    expect(solveLsaq(items, importance, 0, 1, 12).highLayers).toEqual([])
    const err = (() => {
      try {
        solveLsaq(items, importance, 0, 1, 11)
      } catch (e) {
        return e as InfeasibleError
      }
    })()
    expect(err).toBeInstanceOf(InfeasibleError)
    expect(err!.smallest).toBe(12)
    expect(() => solveLsaq(items, [0.1, 0.9], 0, 1, 20)).toThrow(/importance of layer 2 is missing/)
  })
})

describe('budget', () => {
  it('parses bytes, decimal and binary units, and bits per weight', () => {
    expect(parseBudget('12000000')).toEqual({ kind: 'bytes', bytes: 12_000_000, text: '12000000' })
    expect(parseBudget('12MB')).toMatchObject({ kind: 'bytes', bytes: 12_000_000 })
    expect(parseBudget(' 1.5 gib ')).toMatchObject({ kind: 'bytes', bytes: 1.5 * 2 ** 30 })
    expect(parseBudget('300KiB')).toMatchObject({ kind: 'bytes', bytes: 307_200 })
    expect(parseBudget('3.5bpw')).toMatchObject({ kind: 'bpw', bitsPerWeight: 3.5 })
    expect(parseBudget('.5MB')).toMatchObject({ kind: 'bytes', bytes: 500_000 })
  })
  it('refuses what it cannot read, naming the budget and the problem', () => {
    expect(() => parseBudget('12XB')).toThrow(/budget '12XB': unknown unit 'XB'/)
    expect(() => parseBudget('0bpw')).toThrow(/above 0 and at most 32/)
    expect(() => parseBudget('40bpw')).toThrow(/at most 32, got 40/)
    expect(() => parseBudget('12.5')).toThrow(/whole number/)
    expect(() => parseBudget('-3MB')).toThrow(/write a byte count/)
    expect(() => parseBudget('0')).toThrow(/between 1 byte/)
    expect(() => parseBudget('')).toThrow(/write a byte count/)
  })
})

describe('allocation on qwen2-tiny', () => {
  let model: OpenedModel
  const options = parseOptionSpecs('rtn:bits=4,group=32;rtn:bits=3,group=32')
  beforeAll(async () => {
    model = await openModel('resources/models/qwen2-tiny')
  })
  /** A made-up ΔKLD per tensor and option: 3-bit costs more on later tensors. */
  function costs(): Map<string, Map<string, number>> {
    const out = new Map<string, Map<string, number>>()
    allocationTargets(model, true).forEach((t, i) => out.set(t.name, new Map([[options[0]!.spec, 0.001 * (i % 5)], [options[1]!.spec, 0.01 + 0.002 * i]])))
    return out
  }

  it('a bpw budget between the options gives a plan that resolves and fits; optimal ≤ greedy in the proxy', () => {
    const budget = parseBudget('4.5bpw')
    const results = (['greedy', 'optimal'] as const).map((allocator) => allocate({ model, allocator, budget, options, memory: { format: 'native' }, costs: costs() }))
    for (const r of results) {
      expect(r.bitsPerWeight).toBeLessThanOrEqual(4.5)
      expect(r.bitsPerWeight).toBeGreaterThan(4.0) // the 3-bit RTN g32 floor is 4 bpw (fp16 scale and min per 32)
      const entries = resolvePlanFor(model, r.plan, 'allocated')
      expect(memoryModel(model, entries, { format: 'native' }).planned).toBe(r.bytes.planned)
      expect(Object.values(r.counts).reduce((a, b) => a + b, 0)).toBe(entries.length)
    }
    expect(results[1]!.predictedKld!).toBeLessThanOrEqual(results[0]!.predictedKld! + 1e-15)
    expect(results[1]!.exact).toBe(true)
  })

  it('LSAQ with importance; --all-tensors plans embeddings too (greedy)', () => {
    const r = allocate({ model, allocator: 'lsaq', budget: parseBudget('4.6bpw'), options, memory: { format: 'native' }, importance: [0.2, 0.8, 0.4, 0.6] })
    expect(r.highLayers!.length).toBeGreaterThan(0)
    expect(r.highLayers!.length).toBeLessThan(4)
    expect(r.highLayers).toEqual([1, 3, 2].slice(0, r.highLayers!.length).sort())
    const all = allocate({ model, allocator: 'greedy', budget: parseBudget('4.6bpw'), options, memory: { format: 'native' }, costs: costs(), allTensors: true })
    expect(all.plan.tensors['model.embed_tokens.weight']).toBeTypeOf('object')
    expect(() => allocate({ model, allocator: 'lsaq', budget: parseBudget('4.6bpw'), options, memory: { format: 'native' }, importance: [1, 2, 3, 4], allTensors: true })).toThrow(/LSAQ allocates per decoder block/)
  })

  it('an infeasible byte budget names the smallest feasible size: the all-3-bit plan with the KV reserve', () => {
    const memory = { format: 'native' as const, kv: { ctx: 256, batch: 2 } }
    const smallest = memoryModel(model, resolvePlanFor(model, planFromSpec(model, options[1]!.spec), 's'), memory).total
    expect(() => allocate({ model, allocator: 'optimal', budget: { kind: 'bytes', bytes: smallest - 1, text: `${smallest - 1}` }, options, memory, costs: costs() })).toThrow(
      new RegExp(`infeasible with these options: the smallest feasible size is ${smallest} bytes`),
    )
    const ok = allocate({ model, allocator: 'optimal', budget: { kind: 'bytes', bytes: smallest, text: `${smallest}` }, options, memory, costs: costs() })
    expect(ok.bytes.total).toBe(smallest)
    expect(() => allocate({ model, allocator: 'greedy', budget: parseBudget('3bpw'), options, memory, costs: costs() })).toThrow(/the smallest feasible is 4 bpw/)
  })

  it('GGUF layout: ggml options with embeddings (tied) and a byte budget; the plan measures what the allocator counted', () => {
    const ggml = parseOptionSpecs('ggml:type=Q8_0;ggml:type=Q4_0;keep')
    const memory = { format: 'gguf' as const }
    const targets = allocationTargets(model, true)
    const c = new Map(targets.map((t, i) => [t.name, new Map([[ggml[0]!.spec, 0.001], [ggml[1]!.spec, 0.01 * (1 + (i % 4))]])]))
    const all8 = memoryModel(model, resolvePlanFor(model, { ...planFromSpec(model, ggml[0]!.spec), tensors: Object.fromEntries(targets.map((t) => [t.name, { method: 'ggml', params: { type: 'Q8_0' } }])) }, 's'), memory).total
    const r = allocate({ model, allocator: 'optimal', budget: { kind: 'bytes', bytes: all8 - 1, text: 'just under all-Q8_0' }, options: ggml, memory, costs: c, allTensors: true })
    expect(r.bytes.total).toBeLessThanOrEqual(all8 - 1)
    expect(r.counts[ggml[1]!.spec]).toBeGreaterThanOrEqual(1)
    expect(memoryModel(model, resolvePlanFor(model, r.plan, 'allocated'), memory).total).toBe(r.bytes.total)
  })
})
