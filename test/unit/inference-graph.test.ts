import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import { DecoderSession } from '../../worker/inference/session'
import type { BackendKind } from '../../worker/inference/ort-backend'
import { referenceForward } from '../helpers/reference-forward'
import { randomTokens, writeTinyDecoder, type TinyDecoderOptions } from '../helpers/tiny-decoder'
import { writeTinyGguf } from '../helpers/tiny-gguf'

let root: string
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-inference-graph-'))
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

/** Max |engine − float64 reference| over all logits of `tokens`. */
async function maxLogitError(
  opts: TinyDecoderOptions,
  backend: BackendKind,
  name: string,
  attention: 'gqa' | 'ops' | 'auto' = 'auto',
): Promise<{ err: number; scale: number }> {
  const tiny = await writeTinyDecoder(join(root, name), opts)
  const ids = randomTokens(13, tiny.ref.vocab, 7)
  const ref = referenceForward(tiny.ref, tiny.values, ids)
  const model = await openModel(tiny.dir)
  try {
    const session = await DecoderSession.create(model, { backend, threads: 2, graph: { logits: 'all', maxPositions: 64, attention } })
    if (attention !== 'auto') expect(session.info.attention).toBe(attention)
    const { outputs } = await session.forward({ tokens: ids })
    await session.release()
    const logits = outputs.logits!
    expect(logits.dims).toEqual([1, ids.length, tiny.ref.vocab])
    const data = logits.data as Float32Array
    let err = 0
    let scale = 0
    for (let t = 0; t < ids.length; t++) {
      for (let v = 0; v < tiny.ref.vocab; v++) {
        err = Math.max(err, Math.abs(data[t * tiny.ref.vocab + v]! - ref.logits[t]![v]!))
        scale = Math.max(scale, Math.abs(ref.logits[t]![v]!))
      }
    }
    return { err, scale }
  } finally {
    await model.close()
  }
}

describe('decoder graph vs the float64 reference forward pass', () => {
  // Head size 8 exercises the standard-op attention; 16 onnxruntime's GroupQueryAttention.
  it('llama, GQA (4 heads, 2 kv heads), fp16 weights, separate lm_head — standard-op attention', async () => {
    const { err, scale } = await maxLogitError({ seed: 1 }, 'wasm', 'llama-gqa', 'ops')
    expect(scale).toBeGreaterThan(0.1)
    expect(err).toBeLessThan(5e-6)
  })

  it('llama, head size 16: GroupQueryAttention and standard ops agree with the reference', async () => {
    const opts = { seed: 9, hidden: 64, heads: 4, kvHeads: 2, intermediate: 96 }
    const gqa = await maxLogitError(opts, 'wasm', 'llama-d16-gqa', 'gqa')
    const ops = await maxLogitError(opts, 'wasm', 'llama-d16-ops', 'ops')
    expect(gqa.scale).toBeGreaterThan(0.1)
    expect(gqa.err).toBeLessThan(5e-6)
    expect(ops.err).toBeLessThan(5e-6)
  })

  it('llama, multi-head (kv heads = heads), tied embeddings, bf16', async () => {
    const { err } = await maxLogitError({ seed: 2, kvHeads: 4, tied: true, dtype: 'BF16', hidden: 64 }, 'wasm', 'llama-tied', 'gqa')
    expect(err).toBeLessThan(5e-6)
  })

  it('mistral model_type, 8 heads over 1 kv head, fp32, 3 layers', async () => {
    const { err } = await maxLogitError({ seed: 3, modelType: 'mistral', heads: 8, kvHeads: 1, hidden: 64, layers: 3, dtype: 'F32' }, 'wasm', 'mistral')
    expect(err).toBeLessThan(5e-6)
  })

  it('qwen2 with q/k/v biases and tied embeddings (both attention forms)', async () => {
    expect((await maxLogitError({ seed: 4, bias: true, tied: true, hidden: 64 }, 'wasm', 'qwen2-gqa', 'gqa')).err).toBeLessThan(5e-6)
    expect((await maxLogitError({ seed: 4, bias: true, tied: true }, 'wasm', 'qwen2-ops', 'ops')).err).toBeLessThan(5e-6)
  })

  it('the native backend (onnxruntime-node) runs the same graphs', async () => {
    expect((await maxLogitError({ seed: 5, bias: true, hidden: 64 }, 'native', 'native-gqa', 'gqa')).err).toBeLessThan(5e-6)
    expect((await maxLogitError({ seed: 5, bias: true }, 'native', 'native-ops', 'ops')).err).toBeLessThan(5e-6)
  })
})

describe('GGUF models of the same families', () => {
  async function ggufError(opts: TinyDecoderOptions, arch: 'llama' | 'qwen2', q8: boolean, name: string): Promise<number> {
    const tiny = await writeTinyDecoder(join(root, name), opts)
    const file = join(root, `${name}.gguf`)
    const stored = await writeTinyGguf(file, tiny.ref, tiny.values, { architecture: arch, q8 })
    const ids = randomTokens(11, tiny.ref.vocab, 3)
    const ref = referenceForward(tiny.ref, stored, ids)
    const model = await openModel(file)
    try {
      expect(model.format).toBe('gguf')
      const session = await DecoderSession.create(model, { backend: 'wasm', threads: 2, graph: { logits: 'all', maxPositions: 32 } })
      expect(session.spec.qkPermuted).toBe(arch === 'llama')
      const logits = (await session.forward({ tokens: ids })).outputs.logits!.data as Float32Array
      await session.release()
      let err = 0
      for (let t = 0; t < ids.length; t++) for (let v = 0; v < tiny.ref.vocab; v++) err = Math.max(err, Math.abs(logits[t * tiny.ref.vocab + v]! - ref.logits[t]![v]!))
      return err
    } finally {
      await model.close()
    }
  }

  it('llama GGUF: q/k rows permuted by llama.cpp are put back (F32)', async () => {
    expect(await ggufError({ seed: 11, hidden: 64 }, 'llama', false, 'gguf-llama')).toBeLessThan(5e-6)
  })

  it('llama GGUF with Q8_0 linears runs on the dequantised weights', async () => {
    expect(await ggufError({ seed: 12, tied: true }, 'llama', true, 'gguf-q8')).toBeLessThan(5e-6)
  })

  it('qwen2 GGUF (biases, NEOX layout: no permutation)', async () => {
    expect(await ggufError({ seed: 13, bias: true }, 'qwen2', false, 'gguf-qwen2')).toBeLessThan(5e-6)
  })
})

describe('graph building fails clearly', () => {
  it('names an unsupported architecture', async () => {
    const dir = join(root, 'gpt2')
    await writeTinyDecoder(dir, { seed: 6 })
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, model_type: 'gpt2', architectures: ['GPT2LMHeadModel'] }))
    const model = await openModel(dir)
    await expect(DecoderSession.create(model, { graph: { logits: 'all', maxPositions: 8 } })).rejects.toThrow(
      /architecture 'gpt2' is not supported by the inference engine \(supported: llama, mistral, qwen2\)/,
    )
    await model.close()
  })

  it('names the missing tensor and the block', async () => {
    const dir = join(root, 'missing')
    await writeTinyDecoder(dir, { seed: 7 })
    const model = await openModel(dir)
    // Simulate a checkpoint without block 1's k projection.
    model.tensors = model.tensors.filter((t) => t.name !== 'model.layers.1.self_attn.k_proj.weight')
    await expect(DecoderSession.create(model, { graph: { logits: 'all', maxPositions: 8 } })).rejects.toThrow(/missing tensor: block 1 has no 'k' projection/)
    await model.close()
  })

  it('names a tensor whose shape contradicts the config', async () => {
    const dir = join(root, 'shape')
    await writeTinyDecoder(dir, { seed: 8 })
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 48 }))
    const model = await openModel(dir)
    await expect(DecoderSession.create(model, { graph: { logits: 'all', maxPositions: 8 } })).rejects.toThrow(
      /model\.layers\.0\.mlp\.gate_proj\.weight': shape \[64, 32\] does not match the config, which implies \[48, 32\]/,
    )
    await model.close()
  })

  it('names an override for a tensor the model lacks, and one of the wrong size', async () => {
    const dir = join(root, 'overrides')
    await writeTinyDecoder(dir, { seed: 10 })
    const model = await openModel(dir)
    const graph = { logits: 'all' as const, maxPositions: 8 }
    await expect(DecoderSession.create(model, { graph, overrides: new Map([['model.layers.9.mlp.up_proj.weight', new Float32Array(4)]]) })).rejects.toThrow(
      /tensor 'model\.layers\.9\.mlp\.up_proj\.weight': override names a tensor the model does not have/,
    )
    await expect(DecoderSession.create(model, { graph, overrides: new Map([['model.layers.0.mlp.up_proj.weight', new Float32Array(4)]]) })).rejects.toThrow(
      /tensor 'model\.layers\.0\.mlp\.up_proj\.weight': override has 4 values; the tensor \[64, 32\] has 2048/,
    )
    const progress: number[] = []
    const s = await DecoderSession.create(model, { graph, onLoadProgress: (done, total) => progress.push(done / total) })
    await s.release()
    expect(progress.at(-1)).toBe(1)
    await model.close()
  })
})
