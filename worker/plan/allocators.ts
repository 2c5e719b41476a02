/**
 * Bit allocation as pure problems over per-tensor choices: each item (a tensor) has options
 * (a method spec each), every option a size in bytes and a cost (measured ΔKLD when that tensor
 * alone is quantized with it — an additive proxy of the whole plan's damage). Pick one option
 * per item so the bytes fit `capacity` and:
 * - lsaq: the paper's rule (arXiv 2412.18135) — rank layers by importance, the n most
 *   important at the high option, the rest at the low one, the largest n that fits;
 * - greedy: start at the smallest option everywhere and take, again and again, the upgrade
 *   with the largest cost decrease per extra byte that still fits (ExLlamaV3's optimiser rule);
 * - optimal: the multiple-choice knapsack minimising the summed cost, by dynamic programming
 *   over bytes (see solveOptimal for when it is exact).
 * No model, no I/O: allocate.ts builds the items from a model and a memory model.
 */

/** One option of one item; null where the option does not apply to the tensor (shape). */
export interface AllocChoice {
  bytes: number
  cost: number
}

export interface AllocItem {
  name: string
  /** Decoder block, or null (embeddings, lm_head): needed by lsaq. */
  layer: number | null
  /** Indexed like the option list. */
  choices: readonly (AllocChoice | null)[]
}

export interface AllocSolution {
  /** Option index per item. */
  picks: number[]
  bytes: number
  cost: number
  /** optimal: whether the DP ran on the exact byte sizes (else sizes were rounded up to `gridBytes`). */
  exact?: boolean
  gridBytes?: number
  /** lsaq: blocks at the high option. */
  highLayers?: number[]
}

/** No choice fits the capacity; `smallest` is the fewest bytes any choice of this allocator takes. */
export class InfeasibleError extends Error {
  constructor(
    readonly smallest: number,
    readonly capacity: number,
  ) {
    super(`the smallest allocation takes ${smallest} bytes, more than the ${capacity} available`)
    this.name = 'InfeasibleError'
  }
}

function available(item: AllocItem): number[] {
  const out: number[] = []
  item.choices.forEach((c, j) => {
    if (c) out.push(j)
  })
  if (out.length === 0) throw new Error(`tensor '${item.name}': none of the options applies to it`)
  return out
}

/** The smallest option of an item (ties: the lower cost, then the first). */
function smallestChoice(item: AllocItem): number {
  let best = -1
  for (const j of available(item)) {
    const c = item.choices[j]!
    const b = best < 0 ? null : item.choices[best]!
    if (!b || c.bytes < b.bytes || (c.bytes === b.bytes && c.cost < b.cost)) best = j
  }
  return best
}

function total(items: readonly AllocItem[], picks: readonly number[]): { bytes: number; cost: number } {
  let bytes = 0
  let cost = 0
  items.forEach((it, i) => {
    const c = it.choices[picks[i]!]!
    bytes += c.bytes
    cost += c.cost
  })
  return { bytes, cost }
}

/** Fewest bytes any choice takes: every item at its smallest option. */
export function smallestBytes(items: readonly AllocItem[]): number {
  return items.reduce((a, it) => a + it.choices[smallestChoice(it)]!.bytes, 0)
}

function checkCosts(items: readonly AllocItem[]): void {
  for (const it of items) for (const c of it.choices) if (c && !Number.isFinite(c.cost)) throw new Error(`tensor '${it.name}': cost ${c.cost} is not a finite number`)
}

/** Upgrades from `picks` by the best cost decrease per extra byte while one fits (mutates picks). */
function greedyUpgrades(items: readonly AllocItem[], picks: number[], capacity: number): void {
  let used = total(items, picks).bytes
  for (;;) {
    let bestI = -1
    let bestJ = -1
    let bestRatio = -Infinity
    let bestExtra = Infinity
    for (let i = 0; i < items.length; i++) {
      const cur = items[i]!.choices[picks[i]!]!
      items[i]!.choices.forEach((c, j) => {
        if (!c || c.cost >= cur.cost) return
        const extra = c.bytes - cur.bytes
        if (used + extra > capacity) return
        const ratio = extra <= 0 ? Infinity : (cur.cost - c.cost) / extra
        if (ratio > bestRatio || (ratio === bestRatio && extra < bestExtra)) {
          bestRatio = ratio
          bestExtra = extra
          bestI = i
          bestJ = j
        }
      })
    }
    if (bestI < 0) return
    used += items[bestI]!.choices[bestJ]!.bytes - items[bestI]!.choices[picks[bestI]!]!.bytes
    picks[bestI] = bestJ
  }
}

export function solveGreedy(items: readonly AllocItem[], capacity: number): AllocSolution {
  checkCosts(items)
  const picks = items.map(smallestChoice)
  const smallest = total(items, picks).bytes
  if (smallest > capacity) throw new InfeasibleError(smallest, capacity)
  greedyUpgrades(items, picks, capacity)
  return { picks, ...total(items, picks) }
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b]
  return a
}

/** Largest DP table (items × cells) held at once, one byte per cell. */
const MAX_TABLE_CELLS = 64e6

/**
 * Multiple-choice knapsack by DP over the bytes above each item's smallest option.
 *
 * Exactness: sizes are integers. With g the gcd of every item's extra bytes (option − its
 * smallest), every selection's extra bytes are a multiple of g, so "extra ≤ slack" is the same
 * as "extra/g ≤ ⌊slack/g⌋": the DP over ⌊slack/g⌋ + 1 cells of g bytes is the exact optimum.
 * When that is more than `maxCells` cells, sizes are rounded *up* to a coarser grid: every
 * selection the DP allows still fits (it counts each size at least whole), so the result is
 * feasible, optimal among selections that fit the rounded sizes, and marked exact: false; the
 * bytes rounding left unused are then spent by greedy upgrades.
 */
export function solveOptimal(items: readonly AllocItem[], capacity: number, maxCells = 200_000): AllocSolution {
  checkCosts(items)
  const base = items.map(smallestChoice)
  const baseBytes = total(items, base).bytes
  if (baseBytes > capacity) throw new InfeasibleError(baseBytes, capacity)
  const slack = capacity - baseBytes
  let g = 0
  for (let i = 0; i < items.length; i++) {
    const min = items[i]!.choices[base[i]!]!.bytes
    for (const c of items[i]!.choices) if (c && c.bytes > min) g = gcd(c.bytes - min, g)
  }
  if (g === 0) return { picks: base, ...total(items, base), exact: true, gridBytes: 1 }
  const limit = Math.max(1, Math.min(maxCells, Math.floor(MAX_TABLE_CELLS / Math.max(1, items.length)) - 1))
  let unit = g
  let exact = true
  if (Math.floor(slack / g) > limit) {
    unit = Math.ceil(slack / limit)
    exact = false
  }
  const cells = Math.floor(slack / unit)
  const width = cells + 1
  const choice = new Uint8Array(items.length * width)
  let prev = new Float64Array(width)
  let next = new Float64Array(width)
  const weights = items.map((it, i) => it.choices.map((c) => (c ? Math.ceil((c.bytes - it.choices[base[i]!]!.bytes) / unit) : -1)))
  for (let i = 0; i < items.length; i++) {
    const it = items[i]!
    const w = weights[i]!
    next.fill(Infinity)
    for (let j = 0; j < it.choices.length; j++) {
      const c = it.choices[j]
      if (!c || w[j]! < 0) continue
      const wj = w[j]!
      const cost = c.cost
      const row = i * width
      for (let cap = wj; cap < width; cap++) {
        const v = prev[cap - wj]! + cost
        if (v < next[cap]!) {
          next[cap] = v
          choice[row + cap] = j
        }
      }
    }
    ;[prev, next] = [next, prev]
  }
  const picks = new Array<number>(items.length)
  let cap = cells
  for (let i = items.length - 1; i >= 0; i--) {
    const j = choice[i * width + cap]!
    picks[i] = j
    cap -= weights[i]![j]!
  }
  if (!exact) greedyUpgrades(items, picks, capacity)
  return { picks, ...total(items, picks), exact, gridBytes: unit }
}

/**
 * LSAQ: `importance[layer]` ranks the blocks (ties: the lower layer first); every item of the n
 * most important blocks takes option `high`, every other item option `low`; the largest n whose
 * bytes fit. Items must all be in blocks and take both options.
 */
export function solveLsaq(items: readonly AllocItem[], importance: readonly number[], high: number, low: number, capacity: number): AllocSolution {
  const layers = [...new Set(items.map((it) => it.layer))]
  for (const it of items) {
    if (it.layer === null) throw new Error(`tensor '${it.name}' is in no decoder block; LSAQ allocates per block`)
    if (!it.choices[high] || !it.choices[low]) throw new Error(`tensor '${it.name}': LSAQ needs both options to apply to every tensor`)
  }
  for (const l of layers as number[]) {
    const v = importance[l]
    if (v === undefined || !Number.isFinite(v)) throw new Error(`importance of layer ${l} is ${v === undefined ? 'missing' : v} (${importance.length} values given)`)
  }
  const order = (layers as number[]).sort((a, b) => importance[b]! - importance[a]! || a - b)
  let smallest = Infinity
  for (let n = order.length; n >= 0; n--) {
    const top = new Set(order.slice(0, n))
    const picks = items.map((it) => (top.has(it.layer!) ? high : low))
    const t = total(items, picks)
    if (t.bytes <= capacity) return { picks, ...t, highLayers: order.slice(0, n).sort((a, b) => a - b) }
    smallest = Math.min(smallest, t.bytes)
  }
  throw new InfeasibleError(smallest, capacity)
}
