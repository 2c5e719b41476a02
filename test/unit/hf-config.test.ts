import { describe, it, expect } from 'vitest'
import { parseHfConfig } from '../../worker/formats/hf/config'

const base = {
  hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24, num_attention_heads: 14,
  num_key_value_heads: 2, vocab_size: 151936, rms_norm_eps: 1e-6, max_position_embeddings: 32768,
}

describe('Hugging Face config.json across transformers versions', () => {
  it('qwen2 with top-level rope_theta and torch_dtype (transformers 4.4x)', () => {
    const c = parseHfConfig({ ...base, model_type: 'qwen2', rope_theta: 1000000, torch_dtype: 'bfloat16', tie_word_embeddings: true }, 'config.json')
    expect(c).toMatchObject({ architecture: 'qwen2', headDim: 64, numKvHeads: 2, ropeTheta: 1e6, dtype: 'bfloat16', tieWordEmbeddings: true, attentionBias: true, ropeScaling: null })
  })

  it('llama with rope_parameters and dtype (transformers 5)', () => {
    const c = parseHfConfig({
      ...base, model_type: 'llama', dtype: 'float16', attention_bias: false,
      rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    }, 'config.json')
    expect(c.ropeTheta).toBe(500000)
    expect(c.dtype).toBe('float16')
    expect(c.attentionBias).toBe(false)
    expect(c.tieWordEmbeddings).toBe(false)
    expect(c.ropeScaling).toMatchObject({ rope_type: 'llama3', factor: 32 })
  })

  it('rope_parameters of the default type is plain RoPE', () => {
    const c = parseHfConfig({ ...base, model_type: 'llama', rope_parameters: { rope_type: 'default', rope_theta: 10000 } }, 'config.json')
    expect(c.ropeScaling).toBeNull()
    expect(c.ropeTheta).toBe(10000)
  })

  it('mistral with head_dim null and no num_key_value_heads defaults sensibly', () => {
    const { num_key_value_heads: _drop, ...noKv } = base
    const c = parseHfConfig({ ...noKv, model_type: 'mistral', head_dim: null }, 'config.json')
    expect(c.numKvHeads).toBe(14)
    expect(c.headDim).toBe(64)
    expect(c.ropeTheta).toBe(10000)
  })

  it('explicit head_dim that differs from hidden/heads is kept (e.g. Qwen3-style)', () => {
    const c = parseHfConfig({ ...base, model_type: 'llama', head_dim: 128 }, 'config.json')
    expect(c.headDim).toBe(128)
  })

  it('multimodal wrapper: language model under text_config', () => {
    const c = parseHfConfig({ model_type: 'mistral3', text_config: { ...base, model_type: 'mistral' } }, 'config.json')
    expect(c.architecture).toBe('mistral')
    expect(c.numLayers).toBe(24)
  })

  it('architectures is the fallback for a missing model_type', () => {
    expect(parseHfConfig({ ...base, architectures: ['Qwen2ForCausalLM'] }, 'c.json').architecture).toBe('qwen2')
  })

  it('bad configs name the file and the field', () => {
    expect(() => parseHfConfig([], '/m/config.json')).toThrow(/\/m\/config\.json: config\.json is not a JSON object/)
    expect(() => parseHfConfig({ ...base }, '/m/config.json')).toThrow(/neither model_type nor architectures/)
    expect(() => parseHfConfig({ ...base, model_type: 'llama', hidden_size: 'big' }, '/m/config.json')).toThrow(/'hidden_size' = "big" is not a positive integer/)
    expect(() => parseHfConfig({ ...base, model_type: 'llama', num_key_value_heads: 3 }, '/m/config.json')).toThrow(/\/m\/config\.json: config\.json 'num_attention_heads' 14 is not a multiple of 'num_key_value_heads' 3/)
    const { vocab_size: _v, ...noVocab } = base
    expect(() => parseHfConfig({ ...noVocab, model_type: 'llama' }, '/m/config.json')).toThrow(/lacks 'vocab_size'/)
  })

  it('invalid values are refused up front, naming the file and the key, never replaced', () => {
    const bad = (patch: Record<string, unknown>) => () => parseHfConfig({ ...base, model_type: 'llama', ...patch }, '/m/config.json')
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ rms_norm_eps: -1 }, /\/m\/config\.json: config\.json 'rms_norm_eps' = -1 is not a positive number/],
      [{ rms_norm_eps: 0 }, /'rms_norm_eps' = 0 is not a positive number/],
      [{ rms_norm_eps: '1e-6' }, /'rms_norm_eps' = "1e-6" is not a positive number/],
      [{ rope_theta: 0 }, /'rope_theta' = 0 is not a positive number/],
      [{ rope_theta: -10000 }, /'rope_theta' = -10000 is not a positive number/],
      [{ rope_theta: 'big' }, /'rope_theta' = "big" is not a positive number/],
      [{ rope_parameters: { rope_type: 'default', rope_theta: 0 } }, /'rope_parameters\.rope_theta' = 0 is not a positive number/],
      [{ rope_scaling: { rope_type: 'linear', factor: 0 } }, /'rope_scaling\.factor' = 0 is not a positive number/],
      [{ rope_scaling: 'linear' }, /'rope_scaling' = "linear" is not an object/],
      [{ hidden_size: 896.5 }, /'hidden_size' = 896\.5 is not a positive integer/],
      [{ num_hidden_layers: 0 }, /'num_hidden_layers' = 0 is not a positive integer/],
      [{ intermediate_size: -4864 }, /'intermediate_size' = -4864 is not a positive integer/],
      [{ vocab_size: 2 ** 60 }, /'vocab_size' = \d+ is not a positive integer/],
      [{ num_attention_heads: 13, num_key_value_heads: 13 }, /'hidden_size' 896 is not divisible by 'num_attention_heads' 13/],
      [{ num_key_value_heads: 4 }, /'num_attention_heads' 14 is not a multiple of 'num_key_value_heads' 4/],
      [{ max_position_embeddings: -1 }, /'max_position_embeddings' = -1 is not a positive integer/],
    ]
    for (const [patch, message] of cases) expect(bad(patch), JSON.stringify(patch)).toThrow(message)
    // Absent (or null) values take the documented defaults; only present ones are judged.
    const { rms_norm_eps: _e, max_position_embeddings: _m, ...bare } = base
    const c = parseHfConfig({ ...bare, model_type: 'llama', rope_theta: null }, '/m/config.json')
    expect([c.rmsNormEps, c.ropeTheta, c.maxPositionEmbeddings]).toEqual([1e-6, 10000, null])
  })
})
