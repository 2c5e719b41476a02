/**
 * The API's parameter schemas (worker/api/schemas.ts): every method of the table accepts a
 * valid call, refuses each key missing or of the wrong type with a message naming the method
 * and the key, refuses unknown keys at every level, and keeps the limits the transports rely
 * on. Then the transports' edge (dispatchRequest) and the two files read through the schemas.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dispatchRequest } from '../../main/api-dispatcher'
import { RecentModelsFile } from '../../main/recent-models'
import { EvalRunsFile } from '../../main/runs-store'
import type { ApiFunctions, ApiMethod, ApiParams, EvalRun } from '../../worker/api/contract'
import { API_METHOD_NAMES } from '../../worker/api/method-names'
import { API_METHODS, parseApiParams, parseApiRequest } from '../../worker/api/parse-request'
import { apiParamSchemas } from '../../worker/api/schemas'

const PLAN = {
  format: 'quantscope-plan',
  version: 1,
  model: { name: 'tiny', fingerprint: 'abc' },
  tensors: { 'model.layers.0.mlp.down_proj.weight': { method: 'rtn', params: { bits: 4, group: 32 } }, 'model.layers.0.mlp.up_proj.weight': 'keep' },
} as const satisfies ApiParams<'planSize'>['plan']

/** One valid call per method; a method added to the table without one here fails to compile. */
const VALID: { [M in ApiMethod]: ApiParams<M> } = {
  openModel: { path: '/models/tiny' },
  closeModel: { modelId: 'm1' },
  listRecent: {},
  defaultModelPath: {},
  tensorStats: { modelId: 'm1', tensor: 'model.layers.0.mlp.down_proj.weight', jobId: 'j1', options: { bins: 64, topK: 8, heatmapSize: 32 } },
  layerGridStats: { modelId: 'm1', jobId: 'j2' },
  cancelJob: { jobId: 'j1' },
  evaluate: {
    jobId: 'j3',
    modelId: 'm1',
    text: { kind: 'file', path: '/data/wiki.txt' },
    ctx: 256,
    maxWindows: 4,
    backend: 'wasm',
    kld: true,
    variant: { kind: 'model', path: '/models/tiny-q4.onnx' },
  },
  generate: {
    jobId: 'j4',
    modelId: 'm1',
    prompt: 'The capital of France is',
    maxTokens: 16,
    sampling: { kind: 'sample', temperature: 0.7, topP: 0.9, seed: 42 },
    variants: [
      { kind: 'listed', id: 'base' },
      { kind: 'model', path: '/models/tiny-q4.onnx' },
    ],
    backend: 'native',
  },
  listBackends: {},
  listRuns: { modelId: 'm1' },
  deleteRun: { modelId: 'm1', runId: 'r1' },
  listVariants: { modelId: 'm1' },
  listQuantMethods: {},
  planSize: { modelId: 'm1', plan: PLAN },
  quantizePreview: {
    jobId: 'j5',
    modelId: 'm1',
    tensor: 'model.layers.0.mlp.down_proj.weight',
    methods: [{ methodId: 'rtn', params: { bits: 4, group: 32, sym: false } }, { methodId: 'nf4' }],
    row: 3,
    col: 40,
    bins: 64,
    heatmapSize: 32,
    calibrationWindows: 2,
  },
  listPlans: { modelId: 'm1' },
  savePlan: { modelId: 'm1', id: 'p1', name: 'int4 everywhere', plan: PLAN },
  deletePlan: { modelId: 'm1', planId: 'p1' },
  llamaCppPresets: {},
  llamaCppPresetPlan: { modelId: 'm1', preset: 'Q4_K_M' },
  exportFormats: { modelId: 'm1' },
  exportSupport: { modelId: 'm1', plan: PLAN, planName: 'int4', format: 'gguf', dtype: 'fp16', formatOptions: { fallback: 'Q4_K' }, out: '/tmp/tiny.gguf' },
  exportModel: { jobId: 'j6', modelId: 'm1', plan: PLAN, format: 'safetensors', out: '/tmp/tiny-q4', dtype: 'fp32', evaluate: { ctx: 256, maxWindows: 2, backend: 'wasm' } },
  layerImportance: { jobId: 'j7', modelId: 'm1', text: { kind: 'heldout' }, methods: ['lsaq', 'sensitivity'], k: 10, finalNorm: false, ctx: 256, maxWindows: 2, quant: 'rtn:bits=3,group=128', backend: 'wasm' },
  activationView: { jobId: 'j10', modelId: 'm1', layer: 1, bits: 4, outliers: 4, norm: 'absmax-non-outlier', bins: 96, maxWindows: 8, topChannels: 12, backend: 'wasm' },
  kvView: { jobId: 'j11', modelId: 'm1', layer: 0, kvHead: 1, tokens: 128, calibrationWindows: 8, backend: 'wasm' },
  kvSweep: { jobId: 'j12', modelId: 'm1', text: { kind: 'heldout' }, ctx: 256, maxWindows: 4, backend: 'wasm', variant: { kind: 'listed', id: 'base' }, bits: [2, 3, 4] },
  allocatePlan: { jobId: 'j8', modelId: 'm1', budget: '3.5bpw', allocator: 'optimal', options: 'rtn:bits=4,group=128;rtn:bits=3,group=128', allTensors: false, layout: 'native', text: { kind: 'heldout' }, windows: 2, ctx: 256, backend: 'wasm', kv: { ctx: 2048, batch: 1, bits: 16 } },
  paretoSweep: { jobId: 'j9', modelId: 'm1', allocators: ['lsaq', 'optimal'], budgets: ['3bpw', '12MB'], options: 'ggml:type=Q4_K;ggml:type=Q3_K', layout: 'gguf', windows: 2, evalWindows: 4, uniform: true, presets: true },
}

function rejection(method: ApiMethod, params: unknown): string {
  try {
    parseApiParams(method, params)
  } catch (err) {
    expect((err as Error).name).toBe('BadRequest')
    return (err as Error).message
  }
  return 'accepted'
}

function isOptional(method: ApiMethod, key: string): boolean {
  const entries = (apiParamSchemas[method] as unknown as { entries: Record<string, { type: string }> }).entries
  return entries[key]!.type === 'optional'
}

describe('the method table', () => {
  it('has exactly the methods the preload exposes', () => {
    expect([...API_METHODS].sort()).toEqual([...API_METHOD_NAMES].sort())
    expect(Object.keys(VALID).sort()).toEqual([...API_METHODS].sort())
  })
})

describe.each(API_METHODS.map((m) => [m] as const))('%s', (method) => {
  const valid = VALID[method] as Record<string, unknown>

  it('accepts a valid call and returns an equal, separate copy', () => {
    const out = parseApiParams(method, structuredClone(valid))
    expect(out).toEqual(valid)
    expect(out).not.toBe(valid)
  })

  it('refuses params that are not an object', () => {
    for (const bad of [42, 'x', [valid], true]) expect(rejection(method, bad)).toBe(`${method}: params must be an object`)
  })

  it('refuses an unknown key instead of dropping it', () => {
    expect(rejection(method, { ...valid, colour: 'red' })).toBe(`${method}: unknown key 'colour'`)
  })

  it('names each missing required key and each key of the wrong type', () => {
    for (const key of Object.keys(valid)) {
      const { [key]: _dropped, ...without } = valid
      if (isOptional(method, key)) expect(rejection(method, without)).toBe('accepted')
      else expect(rejection(method, without)).toBe(`${method}: '${key}' is missing`)
      // 0.5 is no string, integer, boolean, object, list or enum value: wrong for every key.
      expect(rejection(method, { ...valid, [key]: 0.5 })).toMatch(new RegExp(`^${method}: '${key}' (must|is)`))
    }
  })
})

describe('limits and nested keys', () => {
  const ev = VALID.evaluate
  const gen = VALID.generate
  const ts = VALID.tensorStats

  it('strings: non-empty, at most 4096 characters, no NUL', () => {
    expect(rejection('openModel', { path: '' })).toBe("openModel: 'path' must be a non-empty string")
    expect(rejection('openModel', { path: 'a'.repeat(4096) })).toBe('accepted')
    expect(rejection('openModel', { path: 'a'.repeat(4097) })).toBe("openModel: 'path' is longer than 4096 characters")
    expect(rejection('openModel', { path: '/tmp/a\0b' })).toBe("openModel: 'path' contains a NUL character")
    expect(rejection('evaluate', { ...ev, text: { kind: 'file', path: 'x\0' } })).toBe("evaluate: 'text.path' contains a NUL character")
  })

  it('evaluate: ctx, windows, backend, text and variant', () => {
    expect(rejection('evaluate', { ...ev, ctx: 2 })).toBe('accepted')
    expect(rejection('evaluate', { ...ev, ctx: 32768 })).toBe('accepted')
    for (const ctx of [1, 32769, 25.5, Number.NaN, '256', null]) {
      expect(rejection('evaluate', { ...ev, ctx })).toBe("evaluate: 'ctx' must be an integer in [2, 32768]")
    }
    expect(rejection('evaluate', { ...ev, maxWindows: 0 })).toBe("evaluate: 'maxWindows' must be an integer in [1, 1000000]")
    expect(rejection('evaluate', { ...ev, backend: 'webgpu' })).toBe("evaluate: 'backend' must be 'wasm' or 'native'")
    expect(rejection('evaluate', { ...ev, text: { kind: 'url' } })).toBe("evaluate: 'text.kind' must be 'heldout' or 'file'")
    expect(rejection('evaluate', { ...ev, text: { kind: 'file' } })).toBe("evaluate: 'text.path' is missing")
    expect(rejection('evaluate', { ...ev, text: { kind: 'heldout', path: '/x' } })).toBe("evaluate: unknown key 'text.path'")
    expect(rejection('evaluate', { ...ev, kld: 'yes' })).toBe("evaluate: 'kld' must be a boolean")
    expect(rejection('evaluate', { ...ev, variant: { kind: 'model', path: '/q', x: 1 } })).toBe("evaluate: unknown key 'variant.x'")
  })

  it('generate: prompt length, variant count, sampling ranges', () => {
    expect(rejection('generate', { ...gen, prompt: 'p'.repeat(32768) })).toBe('accepted')
    expect(rejection('generate', { ...gen, prompt: 'p'.repeat(32769) })).toBe("generate: 'prompt' is longer than 32768 characters")
    expect(rejection('generate', { ...gen, prompt: '' })).toBe("generate: 'prompt' must be a non-empty string")
    const listed = { kind: 'listed', id: 'base' }
    expect(rejection('generate', { ...gen, variants: [listed, listed, listed, listed] })).toBe('accepted')
    for (const variants of [[], [listed, listed, listed, listed, listed]]) {
      expect(rejection('generate', { ...gen, variants })).toBe("generate: 'variants' must be a list of 1 to 4 variants")
    }
    expect(rejection('generate', { ...gen, variants: [listed, { kind: 'other' }] })).toBe("generate: 'variants[1].kind' must be 'listed', 'model' or 'plan'")
    expect(rejection('generate', { ...gen, variants: [listed, { kind: 'listed', id: '' }] })).toBe("generate: 'variants[1].id' must be a non-empty string")
    const sample = { kind: 'sample', temperature: 1, topP: 1, seed: 0 }
    expect(rejection('generate', { ...gen, sampling: { ...sample, temperature: 0 } })).toBe("generate: 'sampling.temperature' must be a number in (0, 100]")
    expect(rejection('generate', { ...gen, sampling: { ...sample, temperature: Infinity } })).toBe(
      "generate: 'sampling.temperature' must be a number in (0, 100]",
    )
    expect(rejection('generate', { ...gen, sampling: { ...sample, topP: 1.5 } })).toBe("generate: 'sampling.topP' must be a number in (0, 1]")
    expect(rejection('generate', { ...gen, sampling: { ...sample, seed: 2 ** 32 } })).toBe("generate: 'sampling.seed' must be an integer in [0, 4294967295]")
    expect(rejection('generate', { ...gen, sampling: { kind: 'greedy', seed: 1 } })).toBe("generate: unknown key 'sampling.seed'")
    expect(rejection('generate', { ...gen, maxTokens: 4097 })).toBe("generate: 'maxTokens' must be an integer in [1, 4096]")
  })

  it('tensorStats: each option in its range, unknown options refused', () => {
    expect(rejection('tensorStats', { ...ts, options: {} })).toBe('accepted')
    const cases: [string, number, number][] = [
      ['bins', 2, 4096],
      ['topK', 0, 1024],
      ['heatmapSize', 1, 512],
    ]
    for (const [key, lo, hi] of cases) {
      expect(rejection('tensorStats', { ...ts, options: { [key]: lo } })).toBe('accepted')
      expect(rejection('tensorStats', { ...ts, options: { [key]: hi } })).toBe('accepted')
      for (const bad of [lo - 1, hi + 1, lo + 0.5]) {
        expect(rejection('tensorStats', { ...ts, options: { [key]: bad } })).toBe(`tensorStats: 'options.${key}' must be an integer in [${lo}, ${hi}]`)
      }
    }
    expect(rejection('tensorStats', { ...ts, options: { binz: 8 } })).toBe("tensorStats: unknown key 'options.binz'")
  })

  it('quantization: preview method count and ranges, inline plans checked by the plan schema', () => {
    const qp = VALID.quantizePreview
    const m = { methodId: 'rtn' }
    expect(rejection('quantizePreview', { ...qp, methods: Array(8).fill(m) })).toBe('accepted')
    for (const methods of [[], Array(9).fill(m)]) expect(rejection('quantizePreview', { ...qp, methods })).toBe("quantizePreview: 'methods' must be a list of 1 to 8 methods")
    expect(rejection('quantizePreview', { ...qp, methods: [{ methodId: 'rtn', params: { bits: [4] } }] })).toBe(
      "quantizePreview: 'methods[0].params.bits' must be a number, a boolean or a string",
    )
    expect(rejection('quantizePreview', { ...qp, methods: [{ methodId: 'rtn', bits: 4 }] })).toBe("quantizePreview: unknown key 'methods[0].bits'")
    expect(rejection('quantizePreview', { ...qp, row: -1 })).toBe("quantizePreview: 'row' must be an integer in [0, 2147483648]")
    expect(rejection('quantizePreview', { ...qp, heatmapSize: 513 })).toBe("quantizePreview: 'heatmapSize' must be an integer in [1, 512]")
    expect(rejection('quantizePreview', { ...qp, calibrationWindows: 0 })).toBe("quantizePreview: 'calibrationWindows' must be an integer in [1, 1000000]")
    expect(rejection('planSize', { modelId: 'm1', plan: { ...PLAN, version: 2 } })).toMatch(/^planSize: 'plan\.version' /)
    expect(rejection('planSize', { modelId: 'm1', plan: { ...PLAN, tensors: { t: { method: 'rtn', extra: 1 } } } })).toMatch(/^planSize: /)
    expect(rejection('evaluate', { ...VALID.evaluate, variant: { kind: 'plan', plan: PLAN, name: '' } })).toBe(
      "evaluate: 'variant.name' must be a non-empty string of at most 200 characters",
    )
    expect(rejection('evaluate', { ...VALID.evaluate, variant: { kind: 'plan', plan: PLAN, name: 'int4' } })).toBe('accepted')
    expect(rejection('savePlan', { modelId: 'm1', name: 'x'.repeat(201), plan: PLAN })).toBe("savePlan: 'name' must be a non-empty string of at most 200 characters")
    expect(rejection('deletePlan', { modelId: 'm1' })).toBe("deletePlan: 'planId' is missing")
  })

  it('absent params mean none, for methods that take none', () => {
    expect(parseApiParams('listRecent', undefined)).toEqual({})
    expect(rejection('closeModel', undefined)).toBe("closeModel: 'modelId' is missing")
  })
})

describe('a wire request', () => {
  it('checks the envelope, then the params', () => {
    expect(parseApiRequest({ id: 3, method: 'closeModel', params: { modelId: 'm1' } })).toEqual({ id: 3, method: 'closeModel', params: { modelId: 'm1' } })
    expect(() => parseApiRequest({ id: -1, method: 'listRecent' })).toThrow("request: 'id' must be a non-negative integer")
    expect(() => parseApiRequest({ id: 1, method: 'toString' })).toThrow("request: unknown method 'toString'")
    expect(() => parseApiRequest({ id: 1, method: 'closeModel', params: { modelId: 7 } })).toThrow("closeModel: 'modelId' must be a non-empty string")
  })

  it('reaches the backend only when valid, with the clean params', async () => {
    const calls: unknown[] = []
    const backend = { closeModel: async (p: unknown) => (calls.push(p), { closed: true }) } as unknown as ApiFunctions
    const bad = await dispatchRequest(backend, { id: 5, method: 'closeModel', params: { modelId: 'm1', extra: true } })
    expect(bad).toEqual({ id: 5, ok: false, error: { name: 'BadRequest', message: "closeModel: unknown key 'extra'" } })
    expect(calls).toEqual([])
    const good = await dispatchRequest(backend, { id: 6, method: 'closeModel', params: { modelId: 'm1' } })
    expect(good).toEqual({ id: 6, ok: true, result: { closed: true } })
    expect(calls).toEqual([{ modelId: 'm1' }])
  })
})

describe('files read through the schemas', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-schemas-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const run = (id: string, over: Record<string, unknown> = {}): Record<string, unknown> => ({
    id,
    modelPath: '/m',
    createdAt: 1000,
    variant: { kind: 'listed', id: 'base' },
    variantLabel: 'base',
    text: { kind: 'heldout' },
    textLabel: 'held-out text',
    ctx: 256,
    maxWindows: null,
    windows: 3,
    tokens: 768,
    textTokens: 1000,
    backend: 'wasm',
    threads: 2,
    ppl: 12.5,
    nll: Math.log(12.5),
    kld: { mean: 0.01, median: 0.005, p99: 0.1, top1: 0.97, basePpl: 12.4, deltaPpl: 0.1, baseSource: 'recompute' },
    seconds: 2,
    tokensPerSecond: 384,
    ...over,
  })

  it('runs file: bad records are skipped with a warning naming them, good ones kept', async () => {
    const file = join(dir, 'eval-runs.json')
    const records = [
      run('good-1'),
      run('no-ppl', { ppl: null }),
      run('bad-variant', { variant: { kind: 'url', id: 'x' } }),
      'not a run',
      run('bad-kld', { kld: { mean: 1 } }),
      run('good-2', { createdAt: 2000, kld: null, future: 'field' }),
    ]
    await writeFile(file, JSON.stringify({ version: 1, models: { '/m': records } }))
    const warnings: string[] = []
    const store = new EvalRunsFile(file, 200, (line) => warnings.push(line))
    const runs = await store.list('/m')
    expect(runs.map((r) => r.id)).toEqual(['good-2', 'good-1'])
    // Unknown fields of a stored record are not carried along.
    expect(runs[0]).not.toHaveProperty('future')
    expect(warnings).toEqual([
      `quantscope: ${file}: skipped run 1 of /m: 'ppl' must be a number`,
      `quantscope: ${file}: skipped run 2 of /m: 'variant.kind' must be 'listed', 'model' or 'plan'`,
      `quantscope: ${file}: skipped run 3 of /m: the run must be an object`,
      `quantscope: ${file}: skipped run 4 of /m: 'kld.median' is missing`,
    ])
    // Adding a run keeps the records it cannot read, unchanged (a newer build may read them), and reading still works.
    await store.add(run('good-3', { createdAt: 3000 }) as unknown as EvalRun)
    expect((await store.list('/m')).map((r) => r.id)).toEqual(['good-3', 'good-2', 'good-1'])
    const stored = JSON.parse(await readFile(file, 'utf8')).models['/m'] as unknown[]
    expect(stored).toHaveLength(7)
    expect(stored.slice(3)).toEqual(records.slice(1, 5))
  })

  it('runs file: a document of the wrong shape or broken JSON lists nothing and warns', async () => {
    const file = join(dir, 'eval-runs-2.json')
    const warnings: string[] = []
    await writeFile(file, JSON.stringify({ version: 1, models: { '/m': { id: 'x' } } }))
    expect(await new EvalRunsFile(file, 200, (l) => warnings.push(l)).list('/m')).toEqual([])
    await writeFile(file, '{"models": {"/m": [ ')
    expect(await new EvalRunsFile(file, 200, (l) => warnings.push(l)).list('/m')).toEqual([])
    expect(warnings).toEqual([expect.stringContaining("is not a runs file of this version: 'models./m' must be a list"), expect.stringContaining('is not valid JSON')])
  })

  it('recent-models file: bad entries are skipped with a warning, good ones kept', async () => {
    const file = join(dir, 'recent-models.json')
    await writeFile(
      file,
      JSON.stringify([
        { path: dir, name: 'here', format: 'safetensors', openedAt: 5 },
        { path: 42, name: 'bad', format: null, openedAt: 4 },
        { path: `${dir}\0x`, name: 'nul', format: null, openedAt: 3 },
        { path: dir, name: 'no time', format: null },
      ]),
    )
    const warnings: string[] = []
    const recent = new RecentModelsFile(file, (l) => warnings.push(l))
    expect(await recent.list()).toEqual([{ path: dir, name: 'here', format: 'safetensors', openedAt: 5 }])
    expect(warnings).toEqual([
      `quantscope: ${file}: skipped entry 1: 'path' must be a non-empty string`,
      `quantscope: ${file}: skipped entry 2: 'path' contains a NUL character`,
      `quantscope: ${file}: skipped entry 3: 'openedAt' is missing`,
    ])
  })
})
