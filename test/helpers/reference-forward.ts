/**
 * An independent float64 forward pass of HF's LlamaForCausalLM / MistralForCausalLM /
 * Qwen2ForCausalLM, written straight from the math of transformers' modeling_llama.py with
 * plain loops (no ONNX, nothing shared with the engine):
 *
 *   RMSNorm(x) = x · rsqrt(mean(x²) + eps) · w
 *   RoPE: inv_freq_i = theta^(−2i/d); q' = q·cos + rotate_half(q)·sin, rotate_half([a, b]) = [−b, a]
 *   attention: softmax(q·kᵀ / √d + causal) · v, kv head of q head h = floor(h / (heads / kvHeads))
 *   MLP: down(silu(gate(x)) · up(x))
 *   logits = lm_head(norm(x)), lm_head = embed_tokens when tied
 *
 * Weights are HF-named float64 arrays (as writeTinyLlama returns them).
 */
export interface RefConfig {
  hidden: number
  layers: number
  heads: number
  kvHeads: number
  intermediate: number
  vocab: number
  eps: number
  theta: number
  tied: boolean
  /** q/k/v biases present (qwen2). */
  bias: boolean
}

export interface RefActivations {
  residIn: number[][][]
  residOut: number[][][]
  attnIn: number[][][]
  oIn: number[][][]
  mlpIn: number[][][]
  downIn: number[][][]
  lmHeadIn: number[][]
}

export interface RefResult {
  /** logits[t][v] */
  logits: Float64Array[]
  activations: RefActivations
}

function linear(w: Float64Array, x: ArrayLike<number>, out: number, inp: number, b?: Float64Array): number[] {
  const y = new Array<number>(out)
  for (let o = 0; o < out; o++) {
    let s = b ? b[o]! : 0
    const row = o * inp
    for (let i = 0; i < inp; i++) s += w[row + i]! * x[i]!
    y[o] = s
  }
  return y
}

function rmsNorm(x: number[], w: Float64Array, eps: number): number[] {
  let ms = 0
  for (const v of x) ms += v * v
  ms /= x.length
  const r = 1 / Math.sqrt(ms + eps)
  return x.map((v, i) => v * r * w[i]!)
}

function applyRope(vec: number[], heads: number, d: number, position: number, theta: number): number[] {
  const out = vec.slice()
  const half = d / 2
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const invFreq = Math.pow(theta, (-2 * i) / d)
      const a = position * invFreq
      const c = Math.cos(a)
      const s = Math.sin(a)
      const x1 = vec[h * d + i]!
      const x2 = vec[h * d + half + i]!
      out[h * d + i] = x1 * c - x2 * s
      out[h * d + half + i] = x2 * c + x1 * s
    }
  }
  return out
}

export function referenceForward(cfg: RefConfig, w: Map<string, Float64Array>, tokens: number[]): RefResult {
  const get = (name: string): Float64Array => {
    const v = w.get(name)
    if (!v) throw new Error(`reference: no weight ${name}`)
    return v
  }
  const H = cfg.hidden
  const d = H / cfg.heads
  const G = cfg.heads / cfg.kvHeads
  const T = tokens.length
  const emb = get('model.embed_tokens.weight')
  let x: number[][] = tokens.map((t) => Array.from(emb.subarray(t * H, (t + 1) * H)))
  const acts: RefActivations = { residIn: [], residOut: [], attnIn: [], oIn: [], mlpIn: [], downIn: [], lmHeadIn: [] }
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}`
    acts.residIn.push(x.map((r) => r.slice()))
    const h = x.map((r) => rmsNorm(r, get(`${p}.input_layernorm.weight`), cfg.eps))
    acts.attnIn.push(h)
    const bias = (n: string): Float64Array | undefined => (cfg.bias ? get(`${p}.self_attn.${n}_proj.bias`) : undefined)
    const q = h.map((r, t) => applyRope(linear(get(`${p}.self_attn.q_proj.weight`), r, cfg.heads * d, H, bias('q')), cfg.heads, d, t, cfg.theta))
    const k = h.map((r, t) => applyRope(linear(get(`${p}.self_attn.k_proj.weight`), r, cfg.kvHeads * d, H, bias('k')), cfg.kvHeads, d, t, cfg.theta))
    const v = h.map((r) => linear(get(`${p}.self_attn.v_proj.weight`), r, cfg.kvHeads * d, H, bias('v')))
    const attn: number[][] = []
    for (let t = 0; t < T; t++) {
      const outRow = new Array<number>(cfg.heads * d).fill(0)
      for (let hq = 0; hq < cfg.heads; hq++) {
        const hk = Math.floor(hq / G)
        const scores: number[] = []
        for (let s = 0; s <= t; s++) {
          let dot = 0
          for (let i = 0; i < d; i++) dot += q[t]![hq * d + i]! * k[s]![hk * d + i]!
          scores.push(dot / Math.sqrt(d))
        }
        const m = Math.max(...scores)
        const e = scores.map((s) => Math.exp(s - m))
        const z = e.reduce((a, b) => a + b, 0)
        for (let s = 0; s <= t; s++) {
          const pr = e[s]! / z
          for (let i = 0; i < d; i++) outRow[hq * d + i]! += pr * v[s]![hk * d + i]!
        }
      }
      attn.push(outRow)
    }
    acts.oIn.push(attn)
    const o = attn.map((r) => linear(get(`${p}.self_attn.o_proj.weight`), r, H, cfg.heads * d))
    x = x.map((r, t) => r.map((val, i) => val + o[t]![i]!))
    const h2 = x.map((r) => rmsNorm(r, get(`${p}.post_attention_layernorm.weight`), cfg.eps))
    acts.mlpIn.push(h2)
    const act = h2.map((r) => {
      const g = linear(get(`${p}.mlp.gate_proj.weight`), r, cfg.intermediate, H)
      const u = linear(get(`${p}.mlp.up_proj.weight`), r, cfg.intermediate, H)
      return g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!)
    })
    acts.downIn.push(act)
    const down = act.map((r) => linear(get(`${p}.mlp.down_proj.weight`), r, H, cfg.intermediate))
    x = x.map((r, t) => r.map((val, i) => val + down[t]![i]!))
    acts.residOut.push(x.map((r) => r.slice()))
  }
  const hf = x.map((r) => rmsNorm(r, get('model.norm.weight'), cfg.eps))
  acts.lmHeadIn = hf
  const head = cfg.tied ? get('model.embed_tokens.weight') : get('lm_head.weight')
  const logits = hf.map((r) => Float64Array.from(linear(head, r, cfg.vocab, H)))
  return { logits, activations: acts }
}

/** log-softmax of one logits row in float64. */
export function logSoftmax(row: ArrayLike<number>): Float64Array {
  let m = -Infinity
  for (let i = 0; i < row.length; i++) m = Math.max(m, row[i]!)
  let z = 0
  for (let i = 0; i < row.length; i++) z += Math.exp(row[i]! - m)
  const lse = m + Math.log(z)
  const out = new Float64Array(row.length)
  for (let i = 0; i < row.length; i++) out[i] = row[i]! - lse
  return out
}

/** Perplexity by the project protocol, in float64: windows of ctx tokens, ctx−1 predictions each. */
export function referencePerplexity(cfg: RefConfig, w: Map<string, Float64Array>, ids: number[], ctx: number, maxWindows = Infinity): { ppl: number; nll: number[] } {
  const windows = Math.min(Math.floor(ids.length / ctx), maxWindows)
  const nll: number[] = []
  for (let wi = 0; wi < windows; wi++) {
    const win = ids.slice(wi * ctx, (wi + 1) * ctx)
    const { logits } = referenceForward(cfg, w, win)
    for (let t = 0; t < ctx - 1; t++) nll.push(-logSoftmax(logits[t]!)[win[t + 1]!]!)
  }
  return { ppl: Math.exp(nll.reduce((a, b) => a + b, 0) / nll.length), nll }
}
