/**
 * Runs can be deleted (the runs file and the engine's deleteRun), and recent models are kept
 * as normalised absolute paths: `~` expanded, `..` and trailing slashes resolved, one entry
 * per model, also for files written before paths were normalised.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { EvalRun } from '../../worker/api/contract'
import { EngineService } from '../../worker/api/engine-service'
import { normaliseModelPath, RecentModelsFile } from '../../main/recent-models'
import { EvalRunsFile } from '../../main/runs-store'
import { writeTinyLlama } from '../helpers/tiny-llama'

let dir: string

function run(id: string, modelPath: string, createdAt: number): EvalRun {
  return {
    id, modelPath, createdAt, variant: { kind: 'listed', id: 'base' }, variantLabel: 'base', text: { kind: 'heldout' },
    textLabel: 'held-out text', ctx: 64, maxWindows: 2, windows: 2, tokens: 128, textTokens: 1000, backend: 'wasm',
    threads: 2, ppl: 12.5, nll: Math.log(12.5), kld: null, seconds: 1, tokensPerSecond: 128,
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-runs-recent-'))
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('deleting runs', () => {
  it('removes one run from the runs file and leaves the others', async () => {
    const file = join(dir, 'runs.json')
    const store = new EvalRunsFile(file)
    await store.add(run('a', '/models/x', 1))
    await store.add(run('b', '/models/x', 2))
    await store.add(run('c', '/models/y', 3))
    expect(await store.remove('/models/x', 'a')).toBe(true)
    expect(await store.remove('/models/x', 'a')).toBe(false)
    expect(await store.remove('/models/y', 'b')).toBe(false) // another model's run
    // A fresh reader of the file sees the same.
    const again = new EvalRunsFile(file)
    expect((await again.list('/models/x')).map((r) => r.id)).toEqual(['b'])
    expect((await again.list('/models/y')).map((r) => r.id)).toEqual(['c'])
    expect(await again.remove('/models/y', 'c')).toBe(true)
    expect(JSON.parse(await readFile(file, 'utf8')).models['/models/y']).toBeUndefined()
  })

  it('is an API method of the engine (deleteRun → { deleted })', async () => {
    const modelDir = join(dir, 'tiny')
    await writeTinyLlama(modelDir, { hidden: 16, layers: 1, intermediate: 32, vocab: 32 })
    const runs = new EvalRunsFile(join(dir, 'engine-runs.json'))
    await runs.add(run('r1', modelDir, 1))
    await runs.add(run('r2', modelDir, 2))
    const engine = new EngineService({ statsThreads: 1, runs })
    try {
      const { modelId } = await engine.openModel({ path: modelDir })
      expect((await engine.listRuns({ modelId })).map((r) => r.id)).toEqual(['r2', 'r1'])
      expect(await engine.deleteRun({ modelId, runId: 'r2' })).toEqual({ deleted: true })
      expect(await engine.deleteRun({ modelId, runId: 'r2' })).toEqual({ deleted: false })
      expect((await engine.listRuns({ modelId })).map((r) => r.id)).toEqual(['r1'])
      await expect(engine.deleteRun({ modelId: 'nope', runId: 'r1' })).rejects.toThrow(/no open model/)
    } finally {
      await engine.close()
    }
  })
})

describe('recent models', () => {
  it('stores one normalised absolute path per model, however it was typed', async () => {
    const home = join(dir, 'home')
    const model = join(home, 'models', 'tiny')
    await mkdir(model, { recursive: true })
    const saved = process.env.HOME
    process.env.HOME = home
    try {
      expect(normaliseModelPath('~/models/tiny')).toBe(model)
      expect(normaliseModelPath(`${model}/`)).toBe(model)
      expect(normaliseModelPath(join(home, 'models', 'x', '..', 'tiny'))).toBe(model)
      const file = join(dir, 'recent.json')
      const recent = new RecentModelsFile(file)
      for (const [i, path] of ['~/models/tiny', `${model}/`, join(model, '..', 'tiny'), model].entries()) {
        await recent.add({ path, name: 'tiny', format: 'safetensors', openedAt: i })
      }
      const listed = await recent.list()
      expect(listed.map((r) => r.path)).toEqual([model])
      expect(listed[0]!.openedAt).toBe(3)
      expect(JSON.parse(await readFile(file, 'utf8'))).toHaveLength(1)

      // A file from before normalisation, with two spellings of one model: listed once, newest first.
      await writeFile(file, JSON.stringify([
        { path: `${model}/`, name: 'tiny', format: null, openedAt: 9 },
        { path: '~/models/tiny', name: 'tiny', format: null, openedAt: 5 },
      ]))
      expect((await new RecentModelsFile(file).list()).map((r) => [r.path, r.openedAt])).toEqual([[model, 9]])
    } finally {
      process.env.HOME = saved
    }
  })
})
