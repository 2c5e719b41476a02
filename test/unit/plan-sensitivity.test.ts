/**
 * Per-tensor ΔKLD: each figure is the KLD of the model with that tensor alone quantized (equal
 * to evaluating the one-tensor plan), it is cached and read back, a tampered entry is
 * recomputed, options that do not fit a shape are skipped, and a cancel stops the loop.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { createOverrides } from '../../worker/plan/apply'
import { allocationTargets, parseOptionSpecs } from '../../worker/plan/allocate'
import { measureSensitivity, type SensitivityProgress } from '../../worker/plan/sensitivity'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION } from '../../worker/plan/plan'

let dir: string
let model: OpenedModel
let ids: number[]

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-sens-'))
  model = await openModel('resources/models/qwen2-tiny')
  ids = (await tokensOf({ file: 'resources/eval/calibration.txt' }, () => openTokenizer(model))).slice(0, 256)
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('measureSensitivity', () => {
  // group=256 divides neither of qwen2-tiny's row lengths (128, 384): never measured.
  const options = parseOptionSpecs('rtn:bits=2,group=32;rtn:bits=4,group=128;rtn:bits=4,group=256;keep')
  const request = () => ({ model, tensors: allocationTargets(model, false).filter((t) => t.name.includes('layers.1.')).slice(0, 2), options, ids, ctx: 128, maxWindows: 2, cacheDir: join(dir, 'sens'), logprobCacheDir: join(dir, 'lp') })

  it('measures each tensor alone, caches it, and recomputes a tampered entry', async () => {
    const seen: SensitivityProgress[] = []
    const first = await measureSensitivity(request(), { onProgress: (p) => seen.push(p) })
    const [t0] = request().tensors
    const spec = options[0]!.spec
    // Independently: the one-tensor plan evaluated with KLD on the same windows.
    const plan = { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, tensors: { [t0!.name]: { method: 'rtn', params: { bits: 2, group: 32 } } } } as const
    const overrides = await createOverrides(model, { plan, source: 'one tensor' })
    const direct = await evaluatePerplexity(model, ids, { ctx: 128, maxWindows: 2, overrides, kld: { cacheDir: join(dir, 'lp') } })
    expect(first.get(t0!.name)!.get(spec)).toBe(direct.kld!.mean)
    expect(first.get(t0!.name)!.get('keep')).toBe(0)
    expect(first.get(t0!.name)!.has(options[2]!.spec)).toBe(false)
    // 2-bit costs more than 4-bit on each tensor.
    for (const row of first.values()) expect(row.get(spec)!).toBeGreaterThan(row.get(options[1]!.spec)!)
    expect(seen.every((p) => !p.cached)).toBe(true)
    expect(seen.at(-1)).toMatchObject({ done: 4, total: 4 })

    seen.length = 0
    const again = await measureSensitivity(request(), { onProgress: (p) => seen.push(p) })
    expect(seen.every((p) => p.cached)).toBe(true)
    expect([...again].map(([k, v]) => [k, [...v]])).toEqual([...first].map(([k, v]) => [k, [...v]]))

    const files = (await readdir(join(dir, 'sens'))).filter((f) => f.endsWith('.qsc'))
    expect(files.length).toBe(4)
    await writeFile(join(dir, 'sens', files[0]!), 'QSCACHE1\n{"kind":"sensitivity","version":1}\n{"kld":123}')
    seen.length = 0
    const third = await measureSensitivity(request(), { onProgress: (p) => seen.push(p) })
    expect(seen.filter((p) => !p.cached).length).toBe(1)
    expect([...third].map(([k, v]) => [k, [...v]])).toEqual([...first].map(([k, v]) => [k, [...v]]))
  }, 60_000)

  it('stops when cancelled', async () => {
    const controller = new AbortController()
    controller.abort()
    await expect(measureSensitivity({ ...request(), cacheDir: null }, { signal: controller.signal })).rejects.toThrow(/abort/i)
  })
})
