import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { chmod, mkdir, mkdtemp, open, readdir, rm, stat, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { defaultLogprobCacheDir } from '../../worker/inference/kld'
import { cacheBytes } from '../../worker/inference/logprob-cache'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { randomTokens, writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

const CTX = 16
let root: string
let tiny: TinyDecoder
let model: OpenedModel
let ids: number[]

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-logprob-cache-'))
  tiny = await writeTinyDecoder(join(root, 'llama'), { seed: 5, heads: 4, kvHeads: 2 })
  model = await openModel(tiny.dir)
  ids = randomTokens(3 * CTX, tiny.ref.vocab, 5)
})
afterAll(async () => {
  await model.close()
  await rm(root, { recursive: true, force: true })
})

const selfKld = (cacheDir: string) => evaluatePerplexity(model, ids, { ctx: CTX, threads: 1, kld: { cache: 'auto', cacheDir } })
const entries = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith('.qslp'))

describe('KL-divergence base cache', () => {
  it('lives in a private per-user folder by default', () => {
    const dir = defaultLogprobCacheDir()
    expect(dir.startsWith(tmpdir())).toBe(false) // not the shared, predictable temp folder
    expect(dir).toMatch(/quantscope[\\/]logprobs$/)
  })

  it('creates its folder 0700 and writes, then reads back, a verified entry', async () => {
    const dir = join(root, 'fresh', 'logprobs')
    expect((await selfKld(dir)).kld!.baseSource).toBe('cache-write')
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
    const [name] = await entries(dir)
    expect((await stat(join(dir, name!))).size).toBe(cacheBytes(CTX, tiny.ref.vocab, 3))
    const again = await selfKld(dir)
    expect(again.kld!.baseSource).toBe('cache-read')
    expect(again.kld!.mean).toBeLessThan(1e-3)
  })

  it('never trusts a tampered entry: it is dropped and the base recomputed', async () => {
    const dir = join(root, 'tampered')
    await selfKld(dir)
    const [name] = await entries(dir)
    // Overwrite codes in the middle of window 1 — what made a model against itself score KL 7.84.
    const fh = await open(join(dir, name!), 'r+')
    const junk = Buffer.alloc(4096, 0x5a)
    await fh.write(junk, 0, junk.length, 64 + Math.floor(cacheBytes(CTX, tiny.ref.vocab, 3) / 2))
    await fh.close()
    const after = await selfKld(dir)
    expect(after.kld!.baseSource).toBe('cache-write') // recomputed and rewritten, not read
    expect(after.kld!.mean).toBeLessThan(1e-3)
    expect(after.kld!.top1).toBe(1)
  })

  it('refuses a cache folder that is a planted symlink, and still gives the right numbers', async () => {
    const elsewhere = join(root, 'attacker')
    await mkdir(elsewhere)
    const dir = join(root, 'planted')
    await symlink(elsewhere, dir)
    const res = await selfKld(dir)
    expect(res.kld!.baseSource).toBe('recompute')
    expect(res.kld!.mean).toBeLessThan(1e-3)
    expect(await readdir(elsewhere)).toEqual([]) // nothing written through the link
  })

  it('repairs a group/world-readable cache folder to 0700', async () => {
    const dir = join(root, 'loose')
    await mkdir(dir, { mode: 0o755 })
    await chmod(dir, 0o777)
    await selfKld(dir)
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
  })
})
