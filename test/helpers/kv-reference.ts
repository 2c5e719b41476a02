/**
 * An independent float64 decoder forward with WKVQuant's KV fake quantization, written from
 * the definitions (papers.md §4, kv-quant.ts): per-token (per kv head, per group) asymmetric
 * min–max codes ⌊(x − min)/s + ½⌋, optional static smoothing (x − δ)/σ, past-only (own
 * key/value full precision) or naive attention; optional activation fake-quant of every
 * decoder linear's input. Loops only; shared by the eval-graph and generation tests.
 */
import type { RefConfig } from './reference-forward'

export interface KvRef {
  bits: number
  group: number | null
  pastOnly: boolean
  smooth?: { key: { shift: Float32Array; scale: Float32Array }[]; value: { shift: Float32Array; scale: Float32Array }[] }
}

export interface RefOut {
  logits: Float64Array[]
  /** Per layer, K after RoPE and V of every token, [t][Hkv·d] (full precision and dequantised). */
  k: number[][][]
  v: number[][][]
  kq: number[][][]
  vq: number[][][]
  /** Smallest distance of any (x − min)/step to a rounding boundary (float32 vs float64 safety). */
  margin: number
}

function linear(w: Float64Array, x: number[], out: number, inp: number, b?: Float64Array): number[] {
  const y = new Array<number>(out)
  for (let o = 0; o < out; o++) {
    let s = b ? b[o]! : 0
    for (let i = 0; i < inp; i++) s += w[o * inp + i]! * x[i]!
    y[o] = s
  }
  return y
}

function rmsNorm(x: number[], w: Float64Array, eps: number): number[] {
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length
  return x.map((v, i) => (v / Math.sqrt(ms + eps)) * w[i]!)
}

/** A decoder forward with KV fake quantization, float64, loops only. */
export function kvReference(cfg: RefConfig, w: Map<string, Float64Array>, tokens: number[], kv: KvRef | null, act?: (row: number[]) => number[]): RefOut {
  const aq = act ?? ((r: number[]) => r)
  const get = (n: string): Float64Array => w.get(n)!
  const H = cfg.hidden
  const d = H / cfg.heads
  const Hkv = cfg.kvHeads
  const G = cfg.heads / Hkv
  const T = tokens.length
  const half = d / 2
  let margin = Infinity
  const rope = (vec: number[], heads: number, pos: number): number[] => {
    const out = vec.slice()
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const a = pos * Math.pow(cfg.theta, (-2 * i) / d)
        const [x1, x2] = [vec[h * d + i]!, vec[h * d + half + i]!]
        out[h * d + i] = x1 * Math.cos(a) - x2 * Math.sin(a)
        out[h * d + half + i] = x2 * Math.cos(a) + x1 * Math.sin(a)
      }
    }
    return out
  }
  const quant = (row: number[], aff: { shift: Float32Array; scale: Float32Array } | undefined): number[] => {
    if (!kv) return row
    const levels = 2 ** kv.bits - 1
    const gs = kv.group ?? d
    const x = row.map((v, c) => (aff ? (v - aff.shift[c]!) / aff.scale[c]! : v))
    const out = new Array<number>(x.length)
    for (let g0 = 0; g0 < x.length; g0 += gs) {
      const grp = x.slice(g0, g0 + gs)
      const lo = Math.min(...grp)
      const step = Math.max((Math.max(...grp) - lo) / levels, 1.1754943508222875e-38)
      for (let i = 0; i < gs; i++) {
        const u = (grp[i]! - lo) / step
        if (Math.max(...grp) > lo) margin = Math.min(margin, Math.abs(u - Math.floor(u) - 0.5))
        const code = Math.min(levels, Math.max(0, Math.floor(u + 0.5)))
        const c = g0 + i
        out[c] = aff ? (code * step + lo) * aff.scale[c]! + aff.shift[c]! : code * step + lo
      }
    }
    return out
  }
  let x: number[][] = tokens.map((t) => Array.from(get('model.embed_tokens.weight').subarray(t * H, (t + 1) * H)))
  const res: RefOut = { logits: [], k: [], v: [], kq: [], vq: [], margin: Infinity }
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}`
    const bias = (n: string): Float64Array | undefined => (cfg.bias ? get(`${p}.self_attn.${n}_proj.bias`) : undefined)
    const h = x.map((r) => aq(rmsNorm(r, get(`${p}.input_layernorm.weight`), cfg.eps)))
    const q = h.map((r, t) => rope(linear(get(`${p}.self_attn.q_proj.weight`), r, cfg.heads * d, H, bias('q')), cfg.heads, t))
    const k = h.map((r, t) => rope(linear(get(`${p}.self_attn.k_proj.weight`), r, Hkv * d, H, bias('k')), Hkv, t))
    const v = h.map((r) => linear(get(`${p}.self_attn.v_proj.weight`), r, Hkv * d, H, bias('v')))
    const kq = k.map((r) => quant(r, kv?.smooth?.key[l]))
    const vq = v.map((r) => quant(r, kv?.smooth?.value[l]))
    res.k.push(k)
    res.v.push(v)
    res.kq.push(kq)
    res.vq.push(vq)
    const attn = q.map((qt, t) => {
      const row = new Array<number>(cfg.heads * d).fill(0)
      for (let hq = 0; hq < cfg.heads; hq++) {
        const hk = Math.floor(hq / G)
        // key/value of position s as query t sees it
        const keyAt = (s: number): number[] => (kv && !(kv.pastOnly && s === t) ? kq[s]! : k[s]!)
        const valAt = (s: number): number[] => (kv && !(kv.pastOnly && s === t) ? vq[s]! : v[s]!)
        const scores: number[] = []
        for (let s = 0; s <= t; s++) {
          let dot = 0
          for (let i = 0; i < d; i++) dot += qt[hq * d + i]! * keyAt(s)[hk * d + i]!
          scores.push(dot / Math.sqrt(d))
        }
        const m = Math.max(...scores)
        const e = scores.map((sc) => Math.exp(sc - m))
        const z = e.reduce((a, b) => a + b, 0)
        for (let s = 0; s <= t; s++) for (let i = 0; i < d; i++) row[hq * d + i]! += (e[s]! / z) * valAt(s)[hk * d + i]!
      }
      return row
    })
    x = x.map((r, t) => {
      const o = linear(get(`${p}.self_attn.o_proj.weight`), aq(attn[t]!), H, cfg.heads * d)
      return r.map((val, i) => val + o[i]!)
    })
    x = x.map((r) => {
      const h2 = aq(rmsNorm(r, get(`${p}.post_attention_layernorm.weight`), cfg.eps))
      const gt = linear(get(`${p}.mlp.gate_proj.weight`), h2, cfg.intermediate, H)
      const up = linear(get(`${p}.mlp.up_proj.weight`), h2, cfg.intermediate, H)
      const act = gt.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]!)
      const down = linear(get(`${p}.mlp.down_proj.weight`), aq(act), H, cfg.intermediate)
      return r.map((val, i) => val + down[i]!)
    })
  }
  const head = cfg.tied ? get('model.embed_tokens.weight') : get('lm_head.weight')
  res.logits = x.map((r) => Float64Array.from(linear(head, rmsNorm(r, get('model.norm.weight'), cfg.eps), cfg.vocab, H)))
  res.margin = margin
  return res
}

export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}
export const flat = (rows: ArrayLike<number>[]): number[] => rows.flatMap((r) => Array.from(r))

