import { describe, it, expect } from 'vitest'
import { classifyTensor, describeModel } from '../../worker/model/logical-model'
import type { OpenedModel, TensorEntry } from '../../worker/formats/contract'

describe('tensor classification by naming convention', () => {
  it.each([
    ['model.layers.3.self_attn.q_proj.weight', 3, 'q'],
    ['model.layers.3.self_attn.q_proj.bias', 3, 'q_bias'],
    ['model.layers.10.self_attn.k_proj.weight', 10, 'k'],
    ['model.layers.0.self_attn.v_proj.weight', 0, 'v'],
    ['model.layers.0.self_attn.o_proj.weight', 0, 'o'],
    ['model.layers.7.mlp.gate_proj.weight', 7, 'gate'],
    ['model.layers.7.mlp.up_proj.weight', 7, 'up'],
    ['model.layers.7.mlp.down_proj.weight', 7, 'down'],
    ['model.layers.7.input_layernorm.weight', 7, 'attn_norm'],
    ['model.layers.7.post_attention_layernorm.weight', 7, 'mlp_norm'],
    ['model.layers.7.self_attn.q_norm.weight', 7, 'q_norm'],
    ['blk.5.attn_q.weight', 5, 'q'],
    ['blk.5.attn_k.weight', 5, 'k'],
    ['blk.5.attn_v.weight', 5, 'v'],
    ['blk.5.attn_output.weight', 5, 'o'],
    ['blk.5.attn_q_norm.weight', 5, 'q_norm'],
    ['blk.5.attn_qkv.weight', 5, 'qkv'],
    ['blk.5.ffn_gate.weight', 5, 'gate'],
    ['blk.5.ffn_up.weight', 5, 'up'],
    ['blk.5.ffn_down.weight', 5, 'down'],
    ['blk.5.attn_norm.weight', 5, 'attn_norm'],
    ['blk.5.ffn_norm.weight', 5, 'mlp_norm'],
    ['/model/layers.2/attn/q_proj/MatMul', 2, 'q'],
    ['transformer.h.4.attn.c_attn.weight', 4, 'qkv'],
    ['model.embed_tokens.weight', null, 'embed'],
    ['token_embd.weight', null, 'embed'],
    ['lm_head.weight', null, 'lm_head'],
    ['output.weight', null, 'lm_head'],
    ['model.norm.weight', null, 'final_norm'],
    ['output_norm.weight', null, 'final_norm'],
    ['rope_freqs.weight', null, null],
  ])('%s → layer %s, role %s', (name, layer, role) => {
    expect(classifyTensor(name)).toEqual({ layer, role })
  })
})

function fakeModel(names: string[], tie: boolean | undefined, alias: Record<string, string> = {}): OpenedModel {
  const tensors: TensorEntry[] = names.map((name) => ({
    name, dtype: 'F16', shape: name.includes('norm') ? [8] : [8, 8], byteLength: 0, file: '/x', byteOffset: 0, decodable: true, alias: alias[name],
  }))
  return {
    format: 'safetensors', files: ['/x'], architecture: 'llama', metadata: {}, tensors, tokenizerPath: null,
    config: tie === undefined ? null : ({ tieWordEmbeddings: tie } as OpenedModel['config']),
    readRows: async () => new Float32Array(), readRaw: async () => new Uint8Array(), close: async () => {},
  }
}

describe('describeModel', () => {
  it('groups blocks by index with linears and norms, and detects tied embeddings', () => {
    const names = ['model.embed_tokens.weight', 'model.norm.weight']
    for (const l of [1, 0]) {
      for (const r of ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']) {
        names.push(`model.layers.${l}.${r}.weight`)
      }
      names.push(`model.layers.${l}.self_attn.q_proj.bias`, `model.layers.${l}.input_layernorm.weight`)
    }
    const lm = describeModel(fakeModel(names, true))
    expect(lm.blocks.map((b) => b.index)).toEqual([0, 1])
    expect(lm.blocks[1]!.linears).toEqual({
      q: 'model.layers.1.self_attn.q_proj.weight', k: 'model.layers.1.self_attn.k_proj.weight',
      v: 'model.layers.1.self_attn.v_proj.weight', o: 'model.layers.1.self_attn.o_proj.weight',
      gate: 'model.layers.1.mlp.gate_proj.weight', up: 'model.layers.1.mlp.up_proj.weight', down: 'model.layers.1.mlp.down_proj.weight',
    })
    expect(lm.blocks[0]!.norms).toEqual({ attn_norm: 'model.layers.0.input_layernorm.weight' })
    expect(lm.blocks[0]!.others).toEqual(['model.layers.0.self_attn.q_proj.bias'])
    expect(lm.embeddings).toBe('model.embed_tokens.weight')
    expect(lm.finalNorm).toBe('model.norm.weight')
    expect(lm.lmHead).toBeNull()
    expect(lm.tiedEmbeddings).toBe(true)
  })

  it('an unknown naming scheme is a flat list; aliases classify anonymous ONNX initializers', () => {
    const lm = describeModel(fakeModel(['foo', 'bar'], undefined))
    expect(lm.blocks).toEqual([])
    expect(lm.unassigned).toEqual(['foo', 'bar'])
    const onnx = describeModel(fakeModel(['onnx::MatMul_123'], undefined, { 'onnx::MatMul_123': '/model/layers.4/mlp/down_proj/MatMul' }))
    expect(onnx.blocks[0]).toMatchObject({ index: 4, linears: { down: 'onnx::MatMul_123' } })
  })
})
