import type { ModelConfig } from '../formats/contract'

/**
 * RoPE frequencies and cos/sin tables, computed in float64 and cast once, following
 * transformers' modeling_rope_utils (default, linear and llama3 rope types) and llama.cpp's
 * per-frequency factors (`rope_freqs.weight`). Other scalings (dynamic NTK, yarn, longrope)
 * change with the sequence length or the attention scale and are refused with a clear message.
 */
export class UnsupportedRopeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UnsupportedRopeError'
  }
}

/** inv_freq[i] = theta^(-2i/d), i < d/2, with the config's scaling applied. */
export function ropeInverseFrequencies(config: ModelConfig, freqFactors?: ArrayLike<number>): Float64Array {
  const d = config.headDim
  const inv = new Float64Array(d / 2)
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / Math.pow(config.ropeTheta, (2 * i) / d)
  const scaling = config.ropeScaling
  if (!scaling) return inv
  const type = String(scaling.rope_type ?? scaling.type)
  const num = (key: string, fallback?: number): number => {
    const v = scaling[key]
    if (typeof v === 'number' && Number.isFinite(v)) return v
    if (fallback !== undefined) return fallback
    throw new UnsupportedRopeError(`rope scaling '${type}' lacks '${key}'`)
  }
  switch (type) {
    case 'linear': {
      const factor = num('factor')
      return inv.map((f) => f / factor)
    }
    case 'llama3': {
      const factor = num('factor')
      const low = num('low_freq_factor')
      const high = num('high_freq_factor')
      const oldCtx = num('original_max_position_embeddings')
      const lowWavelen = oldCtx / low
      const highWavelen = oldCtx / high
      return inv.map((f) => {
        const wavelen = (2 * Math.PI) / f
        if (wavelen < highWavelen) return f
        if (wavelen > lowWavelen) return f / factor
        const smooth = (oldCtx / wavelen - low) / (high - low)
        return (1 - smooth) * (f / factor) + smooth * f
      })
    }
    case 'freq_factors': {
      if (!freqFactors || freqFactors.length !== d / 2) {
        throw new UnsupportedRopeError(`RoPE frequency factors: expected ${d / 2} values, got ${freqFactors?.length ?? 'none'}`)
      }
      return inv.map((f, i) => f / freqFactors[i]!)
    }
    default:
      throw new UnsupportedRopeError(`RoPE scaling '${type}' is not supported (supported: default, linear, llama3, GGUF frequency factors)`)
  }
}

/** cos and sin of position·inv_freq for positions [0, maxPositions), each [maxPositions, d/2]. */
export function ropeTables(invFreq: Float64Array, maxPositions: number): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length
  const cos = new Float32Array(maxPositions * half)
  const sin = new Float32Array(maxPositions * half)
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * invFreq[i]!
      cos[p * half + i] = Math.cos(a)
      sin[p * half + i] = Math.sin(a)
    }
  }
  return { cos, sin }
}
