import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { BoundedCacheDir } from '../../worker/io/bounded-cache-dir'
import { defaultCacheDir, ensurePrivateDir, PrivateDirError } from '../../worker/io/private-dir'
import { decodeVerifiedEntry, encodeVerifiedEntry } from '../../worker/io/verified-file'
import { parseByteSize, STATS_CACHE_BYTES_ENV, StatsDiskCache, statsCacheBytesFromEnv } from '../../worker/stats/disk-cache'
import { MemoryLru } from '../../worker/stats/memory-cache'
import { StatsService } from '../../worker/stats/stats-service'
import type { StatsOptions } from '../../worker/stats/stats-types'

const OPTS: StatsOptions = { bins: 16, topK: 4, heatmapSize: 8 }
const TENSOR = 'model.layers.0.mlp.up_proj.weight'
const ROWS = 24
const COLS = 40

let dir: string
let modelPath: string
let values: Float32Array

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'quantscope-stats-cache-'))
  modelPath = join(dir, 'model.safetensors')
  values = Float32Array.from({ length: ROWS * COLS }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)))
  await writeSafetensorsFile(modelPath, [{ name: TENSOR, dtype: 'F32', shape: [ROWS, COLS] }], () => new Uint8Array(values.buffer.slice(0)))
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** Min and max computed here, independently of the engine. */
function expectedMinMax(): [number, number] {
  let lo = Infinity
  let hi = -Infinity
  for (const v of values) {
    lo = Math.min(lo, v)
    hi = Math.max(hi, v)
  }
  return [lo, hi]
}

async function entries(folder: string): Promise<string[]> {
  return (await readdir(folder)).filter((f) => f.endsWith('.qsc'))
}

describe('statistics disk cache', () => {
  it('creates the folder with mode 0700 and entries with 0600, whatever the umask', async () => {
    const cacheDir = join(dir, 'fresh', 'stats')
    const old = process.umask(0o000)
    const svc = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    try {
      await svc.computeTensorStats(modelPath, TENSOR, OPTS)
    } finally {
      process.umask(old)
      await svc.close()
    }
    expect((await stat(cacheDir)).mode & 0o777).toBe(0o700)
    // Missing parents are created private too.
    expect((await stat(join(dir, 'fresh'))).mode & 0o777).toBe(0o700)
    const [name] = await entries(cacheDir)
    expect((await stat(join(cacheDir, name!))).mode & 0o777).toBe(0o600)
  })

  it('ignores a tampered or truncated entry and recomputes it, never trusting it', async () => {
    const cacheDir = join(dir, 'tamper')
    const first = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    const original = await first.computeTensorStats(modelPath, TENSOR, OPTS).finally(() => first.close())
    const [lo, hi] = expectedMinMax()
    expect([original.min, original.max]).toEqual([lo, hi])
    const [name] = await entries(cacheDir)
    const file = join(cacheDir, name!)

    // Edit the payload the way an attacker would: a plausible result with a different max.
    const text = await readFile(file, 'latin1')
    const edited = text.replace(`"max":${hi}`, `"max":${hi * 1000}`)
    expect(edited).not.toBe(text)
    await writeFile(file, edited, 'latin1')
    const second = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    try {
      const again = await second.computeTensorStats(modelPath, TENSOR, OPTS)
      expect(again.max).toBe(hi)
      expect(again).toEqual(original)
      expect(second.counters).toMatchObject({ diskHits: 0, computed: 1 })
      expect(second.diskCache!.counters.rejected).toBe(1)
    } finally {
      await second.close()
    }

    // The recomputed entry was written back whole; now truncate it.
    const whole = await readFile(file)
    await writeFile(file, whole.subarray(0, whole.length - 10))
    const third = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    try {
      expect(await third.computeTensorStats(modelPath, TENSOR, OPTS)).toEqual(original)
      expect(third.counters).toMatchObject({ diskHits: 0, computed: 1 })
    } finally {
      await third.close()
    }

    // A whole, valid entry is trusted (the check above is not simply "never read the disk").
    const fourth = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    try {
      expect(await fourth.computeTensorStats(modelPath, TENSOR, OPTS)).toEqual(original)
      expect(fourth.counters).toMatchObject({ diskHits: 1, computed: 0 })
    } finally {
      await fourth.close()
    }
  })

  it('round-trips non-finite numbers, and a tensor named "NaN"', async () => {
    const path = join(dir, 'nonfinite.safetensors')
    const v = Float32Array.from([1, Infinity, -2, NaN, -Infinity, 3])
    await writeSafetensorsFile(path, [{ name: 'NaN', dtype: 'F32', shape: [2, 3] }], () => new Uint8Array(v.buffer))
    const cacheDir = join(dir, 'nonfinite-cache')
    const first = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    const fresh = await first.computeTensorStats(path, 'NaN', OPTS).finally(() => first.close())
    expect([fresh.nan, fresh.inf]).toEqual([1, 2])
    const second = new StatsService({ threads: 1, cacheDir, diskMinTensorBytes: 0 })
    try {
      expect(await second.computeTensorStats(path, 'NaN', OPTS)).toEqual(fresh)
      expect(second.counters).toMatchObject({ diskHits: 1, computed: 0 })
    } finally {
      await second.close()
    }

    // Statistics hold no non-finite numbers today; a future one that does keeps them.
    const disk = new StatsDiskCache(join(dir, 'nonfinite-direct'))
    const synthetic = { ...fresh, tensor: 'x', kurtosis: NaN, absmax: Infinity, min: -Infinity }
    await disk.set('k', synthetic)
    expect(await disk.get('k', 'x')).toEqual(synthetic)
    // Not for another tensor, even under the same key.
    expect(await disk.get('k', 'y')).toBeNull()
  })

  it('refuses a cache folder that is a symlink: computes without it and writes nothing through it', async () => {
    const target = join(dir, 'elsewhere')
    await mkdir(target)
    const link = join(dir, 'planted-link')
    await symlink(target, link)
    const warnings: string[] = []
    const warn = console.warn
    console.warn = (msg: string) => void warnings.push(msg)
    const svc = new StatsService({ threads: 1, cacheDir: link, diskMinTensorBytes: 0 })
    try {
      const s = await svc.computeTensorStats(modelPath, TENSOR, OPTS)
      expect([s.min, s.max]).toEqual(expectedMinMax())
      expect(svc.diskCache!.disabledReason).toMatch(/symbolic link/)
    } finally {
      console.warn = warn
      await svc.close()
    }
    expect(await readdir(target)).toEqual([])
    expect((await lstat(link)).isSymbolicLink()).toBe(true)
    expect(warnings.join('\n')).toMatch(/planted-link.*symbolic link/)
  })

  it('repairs a group/world-writable folder of ours to 0700; refuses one owned by another user', async () => {
    const open = join(dir, 'too-open')
    await mkdir(open)
    await chmod(open, 0o777)
    await ensurePrivateDir(open)
    expect((await stat(open)).mode & 0o777).toBe(0o700)

    await expect(ensurePrivateDir(modelPath)).rejects.toThrow(/not a folder/)
    if (process.getuid?.() !== 0) return // only root can give a folder to another user
    const foreign = join(dir, 'foreign')
    await mkdir(foreign, { mode: 0o700 })
    await chown(foreign, 65534, 65534)
    await expect(ensurePrivateDir(foreign)).rejects.toThrow(PrivateDirError)
    await expect(ensurePrivateDir(foreign)).rejects.toThrow(/owned by user id 65534/)
  })

  it('keeps the total under the bound and evicts the least recently used first', async () => {
    const folder = join(dir, 'bounded')
    const payload = (c: number) => new Uint8Array(1000).fill(c)
    const entrySize = encodeVerifiedEntry({ kind: 't', version: 1, key: 'k0' }, payload(0)).length
    // Room for three entries, not four.
    const maxBytes = Math.floor(3.5 * entrySize)
    const cache = new BoundedCacheDir(folder, { kind: 't', version: 1, maxBytes })
    const names: string[] = []
    for (const k of ['k0', 'k1', 'k2']) {
      await cache.set(k, payload(k.charCodeAt(1)))
      names.push((await entries(folder)).find((n) => !names.includes(n))!)
    }
    // Distinct recency even on a coarse clock: k0 oldest, k2 newest; then use k0.
    const t0 = Date.now() / 1000 - 100
    for (let i = 0; i < 3; i++) await utimes(join(folder, names[i]!), t0 + i, t0 + i)
    const cache2 = new BoundedCacheDir(folder, { kind: 't', version: 1, maxBytes })
    expect(await cache2.get('k0')).toEqual(payload(48))
    await cache2.set('k3', payload(51))

    const left = await entries(folder)
    let total = 0
    for (const n of left) total += (await stat(join(folder, n))).size
    expect(total).toBeLessThanOrEqual(maxBytes)
    expect(cache2.totalBytes).toBe(total)
    // k1 was the least recently used (k0 was read after it): it went first.
    expect(await cache2.get('k1')).toBeNull()
    expect(await cache2.get('k0')).toEqual(payload(48))
    expect(await cache2.get('k3')).toEqual(payload(51))
    expect(cache2.counters.evicted).toBeGreaterThanOrEqual(1)
  })

  it('never counts or deletes files that are not its entries', async () => {
    const folder = join(dir, 'shared-folder')
    await mkdir(folder, { mode: 0o700 })
    await writeFile(join(folder, 'notes.txt'), 'x'.repeat(5000))
    const cache = new BoundedCacheDir(folder, { kind: 't', version: 1, maxBytes: 2500 })
    await cache.set('a', new Uint8Array(1000))
    await cache.set('b', new Uint8Array(1000))
    expect(await readFile(join(folder, 'notes.txt'), 'utf8')).toHaveLength(5000)
    expect(await cache.get('b')).not.toBeNull()
  })

  it('verifies kind, version, key, length and checksum of every entry', () => {
    const id = { kind: 'tensor-stats', version: 2, key: '["k"]' }
    const bytes = encodeVerifiedEntry(id, Buffer.from('{"a":1}'))
    expect(decodeVerifiedEntry(bytes, id)).toMatchObject({ status: 'ok' })
    expect(decodeVerifiedEntry(bytes, { ...id, key: '["other"]' })).toMatchObject({ status: 'invalid', reason: /another key/ })
    expect(decodeVerifiedEntry(bytes, { ...id, version: 3 })).toMatchObject({ status: 'invalid', reason: /version/ })
    expect(decodeVerifiedEntry(bytes, { ...id, kind: 'logprobs' })).toMatchObject({ status: 'invalid', reason: /kind/ })
    expect(decodeVerifiedEntry(bytes.subarray(0, bytes.length - 1), id)).toMatchObject({ status: 'invalid', reason: /truncated/ })
    const flipped = Uint8Array.from(bytes)
    flipped[flipped.length - 2] ^= 1
    expect(decodeVerifiedEntry(flipped, id)).toMatchObject({ status: 'invalid', reason: /checksum/ })
  })

  it(`reads its bound from ${STATS_CACHE_BYTES_ENV}; the default root follows XDG_CACHE_HOME`, () => {
    expect(statsCacheBytesFromEnv({})).toBeUndefined()
    expect(statsCacheBytesFromEnv({ [STATS_CACHE_BYTES_ENV]: '1048576' })).toBe(1048576)
    expect(statsCacheBytesFromEnv({ [STATS_CACHE_BYTES_ENV]: '512M' })).toBe(512 * 1024 * 1024)
    expect(parseByteSize('1.5GiB')).toBe(1.5 * 2 ** 30)
    expect(() => statsCacheBytesFromEnv({ [STATS_CACHE_BYTES_ENV]: 'lots' })).toThrow(new RegExp(`${STATS_CACHE_BYTES_ENV}=lots`))
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/x/cache' })).toBe('/x/cache/quantscope')
    // A relative XDG_CACHE_HOME is invalid per the XDG spec and ignored.
    expect(defaultCacheDir({ XDG_CACHE_HOME: 'rel' })).toMatch(/\.cache[/\\]quantscope$/)
  })

  it('memory LRU evicts by bytes, least recently used first', () => {
    const lru = new MemoryLru<number[]>(100, (v) => v.length * 10)
    lru.set('a', [1, 2, 3]) // 30
    lru.set('b', [1, 2, 3]) // 60
    lru.set('c', [1, 2, 3]) // 90
    lru.get('a')
    lru.set('d', [1, 2]) // 110 → b goes
    expect([lru.get('b'), lru.bytes, lru.size]).toEqual([undefined, 80, 3])
    expect(lru.get('a')).toEqual([1, 2, 3])
  })
})
