import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { calibrateKvSmoothing, kvJobOptions } from '../../worker/inference/kv-calibration'
import { parseArgs } from '../../worker/cli/args'
import { kvFlags } from '../../worker/cli/eval'
import { fitActivationCodebooks } from '../../worker/plan/act-codebooks'
import { decodeStats, encodeStats } from '../../worker/inference/calibration-stats-cache'
import { parseActivationSpec, type KMeansActParams } from '../../worker/quant/activations/spec'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

/**
 * The disk cache of KV smoothing statistics and k-means activation codebooks
 * (calibration-stats-cache.ts): a second call with the same model files, calibration tokens
 * and settings is served from the folder with bit-identical numbers; other tokens, other
 * parameters, changed weights or a damaged entry are computed again.
 */

let root: string
let tiny: TinyDecoder
let model: OpenedModel
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-stats-cache-'))
  tiny = await writeTinyDecoder(join(root, 'qwen2'), { seed: 5, bias: true, hidden: 64, heads: 4, kvHeads: 2, layers: 2, dtype: 'F32' })
  model = await openModel(tiny.dir)
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

const bytesOf = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength)

describe('KV smoothing statistics cache', () => {
  it('second call hits with identical values; other calibration tokens miss; null folder never caches', async () => {
    const dir = join(root, 'kv')
    const calib = randomTokens(3 * 16, tiny.ref.vocab, 1)
    const first = await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir })
    const second = await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir })
    expect(first.cached).toBe(false)
    expect(second.cached).toBe(true)
    expect([second.tokens, second.windows]).toEqual([first.tokens, first.windows])
    for (let l = 0; l < 2; l++) {
      for (const side of ['key', 'value'] as const) {
        expect(bytesOf(second.smoothing[side][l]!.shift).equals(bytesOf(first.smoothing[side][l]!.shift))).toBe(true)
        expect(bytesOf(second.smoothing[side][l]!.scale).equals(bytesOf(first.smoothing[side][l]!.scale))).toBe(true)
      }
    }
    const other = await calibrateKvSmoothing(model, randomTokens(3 * 16, tiny.ref.vocab, 2), { ctx: 16, threads: 2, cacheDir: dir })
    expect(other.cached).toBe(false)
    expect(bytesOf(other.smoothing.key[0]!.shift).equals(bytesOf(first.smoothing.key[0]!.shift))).toBe(false)
    // fewer windows of the same tokens: another key
    expect((await calibrateKvSmoothing(model, calib, { ctx: 16, maxWindows: 2, threads: 2, cacheDir: dir })).cached).toBe(false)
    expect((await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: null })).cached).toBe(false)
    // overrides without a name for them are never cached (the key could not tell the weights apart)
    const overrides = new Map([['model.layers.0.self_attn.k_proj.weight', new Float32Array(tiny.values.get('model.layers.0.self_attn.k_proj.weight')!)]])
    expect((await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir, overrides })).cached).toBe(false)
    expect((await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir, overrides })).cached).toBe(false)
  })

  it('a damaged entry is recomputed, not trusted', async () => {
    const dir = join(root, 'kv-damaged')
    const calib = randomTokens(2 * 16, tiny.ref.vocab, 3)
    const first = await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir })
    const [name] = (await readdir(dir)).filter((n) => n.endsWith('.qsc'))
    const bytes = await readFile(join(dir, name!))
    bytes[bytes.length - 3]! ^= 0x40
    await writeFile(join(dir, name!), bytes)
    const again = await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir })
    expect(again.cached).toBe(false)
    expect(bytesOf(again.smoothing.value[1]!.scale).equals(bytesOf(first.smoothing.value[1]!.scale))).toBe(true)
    expect((await calibrateKvSmoothing(model, calib, { ctx: 16, threads: 2, cacheDir: dir })).cached).toBe(true)
  })

  it('changed weights (same path) miss', async () => {
    const dir = join(root, 'kv-weights')
    const other = await writeTinyDecoder(join(root, 'qwen2-b'), { seed: 6, bias: true, hidden: 64, heads: 4, kvHeads: 2, layers: 2, dtype: 'F32' })
    const calib = randomTokens(2 * 16, tiny.ref.vocab, 4)
    let m = await openModel(other.dir)
    const a = await calibrateKvSmoothing(m, calib, { ctx: 16, threads: 2, cacheDir: dir })
    await m.close()
    await writeTinyDecoder(join(root, 'qwen2-b'), { seed: 7, bias: true, hidden: 64, heads: 4, kvHeads: 2, layers: 2, dtype: 'F32' })
    m = await openModel(other.dir)
    const b = await calibrateKvSmoothing(m, calib, { ctx: 16, threads: 2, cacheDir: dir })
    await m.close()
    expect(b.cached).toBe(false)
    expect(bytesOf(a.smoothing.key[1]!.shift).equals(bytesOf(b.smoothing.key[1]!.shift))).toBe(false)
  })
})

describe('cache switch', () => {
  it('--no-calib-cache → the job\'s kv.calibrationCache false → nothing read or stored', async () => {
    const parse = (argv: string[]) => parseArgs(argv, new Set(['kv-smooth', 'no-calib-cache']), new Set(['kv-bits']))
    const off = kvFlags(parse(['generate', 'm', '--kv-bits', '3', '--kv-smooth', '--no-calib-cache']))!
    expect(off).toEqual({ bits: 3, group: null, smooth: true, pastOnly: false, calibrationCache: false })
    expect(kvFlags(parse(['generate', 'm', '--kv-bits', '3']))!.calibrationCache).toBeUndefined()
    const dir = join(root, 'kv-switch')
    const calibrationText = { tokens: randomTokens(2 * 16, tiny.ref.vocab, 21) }
    const noTokenizer = () => Promise.reject(new Error('token ids need no tokenizer'))
    const entries = async () => (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('.qsc')).length
    const a = await kvJobOptions(model, { ...off, calibrationText }, noTokenizer, { ctx: 16, threads: 2, cacheDir: dir })
    expect(await entries()).toBe(0)
    const b = await kvJobOptions(model, { ...off, calibrationText, calibrationCache: undefined }, noTokenizer, { ctx: 16, threads: 2, cacheDir: dir })
    expect(await entries()).toBe(1)
    expect(bytesOf(b.smoothing!.key[0]!.scale).equals(bytesOf(a.smoothing!.key[0]!.scale))).toBe(true)
    expect(a.calibration).toEqual({ source: 'tokens', tokens: 32, windows: 2 })
  })
})

describe('k-means activation codebook cache', () => {
  it('second fit hits with identical codebooks; other calibration tokens or parameters miss', async () => {
    const dir = join(root, 'act')
    const params = parseActivationSpec('kmeans:bits=3,outliers=2').params as KMeansActParams
    const calib = randomTokens(2 * 16, tiny.ref.vocab, 11)
    const first = await fitActivationCodebooks(model, calib, params, { ctx: 16, threads: 2, cacheDir: dir })
    const second = await fitActivationCodebooks(model, calib, params, { ctx: 16, threads: 2, cacheDir: dir })
    expect(first.cached).toBe(false)
    expect(second.cached).toBe(true)
    expect(second.tokens).toBe(first.tokens)
    expect(Object.keys(second.codebooks).sort()).toEqual(Object.keys(first.codebooks).sort())
    expect(Object.keys(first.codebooks)).toHaveLength(8)
    for (const id of Object.keys(first.codebooks)) expect(bytesOf(second.codebooks[id]!).equals(bytesOf(first.codebooks[id]!))).toBe(true)
    const other = await fitActivationCodebooks(model, randomTokens(2 * 16, tiny.ref.vocab, 12), params, { ctx: 16, threads: 2, cacheDir: dir })
    expect(other.cached).toBe(false)
    expect(bytesOf(other.codebooks['L0.attn_in']!).equals(bytesOf(first.codebooks['L0.attn_in']!))).toBe(false)
    const params4 = parseActivationSpec('kmeans:bits=3,outliers=4').params as KMeansActParams
    const k4 = await fitActivationCodebooks(model, calib, params4, { ctx: 16, threads: 2, cacheDir: dir })
    expect(k4.cached).toBe(false)
    expect((await fitActivationCodebooks(model, calib, params4, { ctx: 16, threads: 2, cacheDir: dir })).cached).toBe(true)
  })
})

describe('entry payload', () => {
  it('round-trips meta and arrays bit for bit; a truncated payload is refused', () => {
    const e = { meta: { tokens: 7, note: 'x' }, arrays: { a: Float32Array.from([1.5, -0, NaN, 3e-39]), b: new Float32Array(0), c: Float32Array.from([2]) } }
    const back = decodeStats(encodeStats(e))
    expect(back.meta).toEqual(e.meta)
    for (const k of ['a', 'b', 'c'] as const) expect(bytesOf(back.arrays[k]!).equals(bytesOf(e.arrays[k]))).toBe(true)
    const p = encodeStats(e)
    expect(() => decodeStats(p.subarray(0, p.length - 4))).toThrow(/shorter than its header/)
  })
})
