/**
 * Next-token choice from one row of logits: greedy (temperature 0) or sampling with
 * temperature and nucleus (top-p) filtering, as transformers' TemperatureLogitsWarper and
 * TopPLogitsWarper do it, from a seeded generator so a run can be repeated exactly.
 */
export interface SamplingOptions {
  /** 0 = greedy (argmax). */
  temperature: number
  /** Keep the smallest set of most likely tokens whose probability reaches topP (1 = all). */
  topP: number
}

/** mulberry32: small, fast, and the same sequence on every platform. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Index of the largest logit; the first one on ties (torch.argmax). */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i
  return best
}

/**
 * The candidate tokens after temperature and top-p, with their renormalised probabilities,
 * most likely first.
 */
export function nucleus(logits: ArrayLike<number>, options: SamplingOptions): { ids: Int32Array; probs: Float64Array } {
  const n = logits.length
  const inv = 1 / options.temperature
  let max = -Infinity
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i]! * inv)
  const p = new Float64Array(n)
  let z = 0
  for (let i = 0; i < n; i++) {
    p[i] = Math.exp(logits[i]! * inv - max)
    z += p[i]!
  }
  // Tokens that cannot be in the nucleus are dropped before sorting: any set of tokens each
  // below τ = (1 − topP) / 2n holds less than 1 − topP of the mass, so the most likely tokens
  // reaching topP are all above it. Sorting 150k entries per token would dominate otherwise.
  const floor = options.topP < 1 ? ((1 - options.topP) / (2 * n)) * z : 0
  const candidates: number[] = []
  for (let i = 0; i < n; i++) if (p[i]! >= floor) candidates.push(i)
  const order = Int32Array.from(candidates).sort((a, b) => p[b]! - p[a]! || a - b)
  let keep = order.length
  if (options.topP < 1) {
    let cum = 0
    for (let k = 0; k < order.length; k++) {
      cum += p[order[k]!]! / z
      if (cum >= options.topP) {
        keep = k + 1
        break
      }
    }
  }
  const ids = order.slice(0, keep)
  const probs = new Float64Array(keep)
  let kept = 0
  for (let k = 0; k < keep; k++) kept += p[ids[k]!]!
  for (let k = 0; k < keep; k++) probs[k] = p[ids[k]!]! / kept
  return { ids, probs }
}

export function sampleToken(logits: ArrayLike<number>, options: SamplingOptions, random: () => number): number {
  if (options.temperature <= 0) return argmax(logits)
  if (options.topP >= 1) {
    // The full distribution: no ordering needed, one pass in index order.
    const n = logits.length
    const inv = 1 / options.temperature
    let max = -Infinity
    for (let i = 0; i < n; i++) max = Math.max(max, logits[i]! * inv)
    const p = new Float64Array(n)
    let z = 0
    for (let i = 0; i < n; i++) z += p[i] = Math.exp(logits[i]! * inv - max)
    const target = random() * z
    let cum = 0
    for (let i = 0; i < n; i++) {
      cum += p[i]!
      if (target < cum) return i
    }
    return n - 1
  }
  const { ids, probs } = nucleus(logits, options)
  const u = random()
  let cum = 0
  for (let k = 0; k < ids.length; k++) {
    cum += probs[k]!
    if (u < cum) return ids[k]!
  }
  return ids[ids.length - 1]!
}
