import { describe, it, expect } from 'vitest'
import type { ModelConfig } from '../../worker/formats/contract'
import { ropeInverseFrequencies, ropeTables } from '../../worker/inference/rope'
import { permuteToGgufRows, unpermuteGgufRows } from '../../worker/inference/gguf-layout'

const base: ModelConfig = {
  architecture: 'llama', hiddenSize: 512, intermediateSize: 1024, numLayers: 1, numHeads: 4, numKvHeads: 4, headDim: 128,
  vocabSize: 10, rmsNormEps: 1e-5, ropeTheta: 500000, maxPositionEmbeddings: 131072, tieWordEmbeddings: false,
  attentionBias: false, dtype: null, ropeScaling: null,
}

describe('RoPE frequencies', () => {
  it('default: theta^(−2i/d)', () => {
    const inv = ropeInverseFrequencies(base)
    expect(inv.length).toBe(64)
    expect(inv[0]).toBe(1)
    expect(inv[10]).toBeCloseTo(500000 ** (-20 / 128), 15)
  })

  it('linear scaling divides every frequency by the factor', () => {
    const inv = ropeInverseFrequencies({ ...base, ropeScaling: { rope_type: 'linear', factor: 4 } })
    expect(inv[10]).toBeCloseTo(500000 ** (-20 / 128) / 4, 15)
  })

  it('llama3 scaling: high frequencies kept, low ones divided by the factor, a smooth ramp between', () => {
    const scaling = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }
    const plain = ropeInverseFrequencies(base)
    const inv = ropeInverseFrequencies({ ...base, ropeScaling: scaling })
    for (let i = 0; i < 64; i++) {
      const wavelen = (2 * Math.PI) / plain[i]!
      if (wavelen < 8192 / 4) expect(inv[i]).toBe(plain[i])
      else if (wavelen > 8192 / 1) expect(inv[i]).toBeCloseTo(plain[i]! / 8, 15)
      else {
        // smooth = (8192 / wavelen − 1) / (4 − 1), between the two ends
        const smooth = (8192 / wavelen - 1) / 3
        expect(inv[i]).toBeCloseTo((1 - smooth) * (plain[i]! / 8) + smooth * plain[i]!, 15)
        expect(inv[i]!).toBeLessThan(plain[i]!)
        expect(inv[i]!).toBeGreaterThan(plain[i]! / 8)
      }
    }
    // all three regimes occur for this config
    const w = Array.from(plain, (f) => (2 * Math.PI) / f)
    expect(w.some((x) => x < 2048) && w.some((x) => x > 8192) && w.some((x) => x >= 2048 && x <= 8192)).toBe(true)
  })

  it('refuses scalings it does not implement, by name', () => {
    expect(() => ropeInverseFrequencies({ ...base, ropeScaling: { rope_type: 'yarn', factor: 4 } })).toThrow(
      "RoPE scaling 'yarn' is not supported (supported: default, linear, llama3, GGUF frequency factors)",
    )
  })

  it('tables hold cos/sin of position × frequency', () => {
    const inv = ropeInverseFrequencies({ ...base, headDim: 8, ropeTheta: 10000 })
    const { cos, sin } = ropeTables(inv, 5)
    expect(cos.length).toBe(20)
    expect(cos[3 * 4 + 1]).toBeCloseTo(Math.cos(3 * 10000 ** (-2 / 8)), 6)
    expect(sin[4 * 4 + 3]).toBeCloseTo(Math.sin(4 * 10000 ** (-6 / 8)), 6)
  })
})

describe('GGUF q/k row layout', () => {
  it('un-permutes a hand-made llama.cpp permutation: stored row h·d + 2i + j = HF row h·d + j·d/2 + i', () => {
    // 2 heads, head dim 4, 1 column: HF rows 0..7 hold their own index.
    const hf = Float32Array.from({ length: 8 }, (_, r) => r)
    const stored = Float32Array.of(0, 2, 1, 3, 4, 6, 5, 7) // per head: rows (0, d/2), (1, d/2 + 1)
    expect(Array.from(permuteToGgufRows(hf, 2, 4, 1))).toEqual(Array.from(stored))
    expect(Array.from(unpermuteGgufRows(stored, 2, 4, 1))).toEqual(Array.from(hf))
  })
})
