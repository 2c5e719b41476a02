import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeTinyLlama } from '../helpers/tiny-llama'
import { runCli } from '../helpers/run-cli'

const cli = runCli

let dir: string
let modelDir: string
let ref: Map<string, Float64Array>
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-cli-'))
  modelDir = join(dir, 'tiny')
  ref = await writeTinyLlama(modelDir, { dtype: 'BF16', layers: 2, tied: true })
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('cli inspect', () => {
  it('--json prints exactly the contract object on stdout', async () => {
    const { code, stdout } = await cli(['inspect', modelDir, '--json'])
    expect(code).toBe(0)
    const r = JSON.parse(stdout)
    expect(Object.keys(r).sort()).toEqual(['architecture', 'bytes', 'files', 'format', 'params', 'tensors'])
    expect(r.format).toBe('safetensors')
    expect(r.architecture).toBe('llama')
    const params = [...ref.values()].reduce((s, v) => s + v.length, 0)
    expect(r.params).toBe(params)
    expect(r.bytes).toBe(params * 2)
    expect(r.files[0]).toBe(join(modelDir, 'model.safetensors'))
    const q = r.tensors.find((t: { name: string }) => t.name === 'model.layers.1.self_attn.q_proj.weight')
    expect(q).toEqual({ name: 'model.layers.1.self_attn.q_proj.weight', dtype: 'BF16', shape: [32, 32], bytes: 2048, layer: 1, role: 'q' })
    expect(r.tensors.find((t: { name: string }) => t.name === 'model.embed_tokens.weight')).toMatchObject({ layer: null, role: 'embed' })
  })

  it('--stats adds statistics that match a float64 reference', async () => {
    const { code, stdout } = await cli(['inspect', modelDir, '--stats', '--json'])
    expect(code).toBe(0)
    const r = JSON.parse(stdout)
    for (const name of ['model.layers.0.mlp.down_proj.weight', 'model.layers.1.input_layernorm.weight']) {
      const v = ref.get(name)!
      const n = v.length
      const mean = v.reduce((a, b) => a + b, 0) / n
      const variance = v.reduce((a, b) => a + (b - mean) ** 2, 0) / n
      const m4 = v.reduce((a, b) => a + (b - mean) ** 4, 0) / n
      const s = r.tensors.find((t: { name: string }) => t.name === name).stats
      expect(s.min).toBe(Math.min(...v))
      expect(s.max).toBe(Math.max(...v))
      expect(s.absmax).toBe(Math.max(...v.map(Math.abs)))
      expect(s.mean).toBeCloseTo(mean, 7)
      expect(s.std).toBeCloseTo(Math.sqrt(variance), 7)
      if (variance > 0) expect(s.kurtosis).toBeCloseTo(m4 / variance ** 2, 4)
      expect(s.nan).toBe(0)
      expect(s.inf).toBe(0)
    }
  })

  it('bad input: non-zero exit and one clear line on stderr, nothing on stdout', async () => {
    const bad = join(dir, 'bad.safetensors')
    await writeFile(bad, Buffer.from([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d]))
    for (const [args, pattern] of [
      [['inspect', join(dir, 'nope'), '--json'], /nope: no such file or folder/],
      [['inspect', bad, '--json'], /bad\.safetensors: header length 8 runs past the end of the 10-byte file/],
      [['inspect', modelDir, '--bogus'], /unknown option --bogus/],
    ] as const) {
      const { code, stdout, stderr } = await cli([...args])
      expect(code).not.toBe(0)
      expect(stdout).toBe('')
      expect(stderr.split('\n')[0]).toMatch(pattern)
    }
  })
})
