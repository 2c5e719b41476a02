import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { EvalRunsFile } from '../../main/runs-store'
import { withFileLock } from '../../worker/io/file-lock'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-runs-lock-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

function appender(file: string, model: string, prefix: string, count: number): Promise<void> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, ['--import', 'tsx', resolve('test/helpers/append-runs.ts'), file, model, prefix, String(count)], { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    child.stderr.on('data', (c: Buffer) => (err += c.toString()))
    child.on('exit', (code) => (code === 0 ? res() : rej(new Error(`appender ${prefix} exited ${code}: ${err}`))))
  })
}

describe('runs file shared by processes', () => {
  it('two processes appending 150 runs each keep all 300', async () => {
    const file = join(dir, 'eval-runs.json')
    const model = join(dir, 'model')
    await Promise.all([appender(file, model, 'a', 150), appender(file, model, 'b', 150)])
    const runs = await new EvalRunsFile(file, 10_000).list(model)
    expect(runs).toHaveLength(300)
    expect(new Set(runs.map((r) => r.id)).size).toBe(300)
  }, 120_000)

  it("takes over a lock left by a process that is gone, and orders writers in one process", async () => {
    const file = join(dir, 'stale.json')
    await writeFile(`${file}.lock`, '999999999') // no such pid
    let inside = 0
    let most = 0
    await Promise.all(
      [1, 2, 3].map((i) =>
        withFileLock(file, async () => {
          most = Math.max(most, ++inside)
          await new Promise((r) => setTimeout(r, 5 * i))
          inside--
        }),
      ),
    )
    expect(most).toBe(1) // never two holders at once
  })
})

describe('a runs file that cannot be used is never overwritten', () => {
  const run = (id: string, model: string) => ({
    id, modelPath: model, createdAt: Date.now(), variant: { kind: 'listed' as const, id: 'base' }, variantLabel: 'base',
    text: { kind: 'heldout' as const }, textLabel: 'held-out text', ctx: 256, maxWindows: 1, windows: 1, tokens: 256,
    textTokens: 1000, backend: 'wasm' as const, threads: 1, ppl: 30, nll: Math.log(30), kld: null, seconds: 1, tokensPerSecond: 256,
  })

  it('moves a newer-version file aside before the next write, keeping its bytes', async () => {
    const file = join(dir, 'future.json')
    const future = JSON.stringify({ version: 2, models: { '/m': [{ something: 'new' }] } })
    await writeFile(file, future)
    const warnings: string[] = []
    const store = new EvalRunsFile(file, 200, (l) => warnings.push(l))
    expect(await store.list('/m')).toEqual([])
    await store.add(run('r1', '/m'))
    const aside = (await readdir(dir)).filter((n) => n.startsWith('future.json.bad-'))
    expect(aside).toHaveLength(1)
    expect(await readFile(join(dir, aside[0]!), 'utf8')).toBe(future)
    expect((await store.list('/m')).map((r) => r.id)).toEqual(['r1'])
    expect(warnings.some((w) => w.includes('moved it aside'))).toBe(true)
  })

  it('writes back a record that fails the schema unchanged beside the new one', async () => {
    const file = join(dir, 'mixed.json')
    const broken = { id: 'old', modelPath: '/m', ppl: 'not a number' }
    await writeFile(file, JSON.stringify({ version: 1, models: { '/m': [broken] } }))
    const store = new EvalRunsFile(file, 200, () => {})
    await store.add(run('r2', '/m'))
    const doc = JSON.parse(await readFile(file, 'utf8'))
    expect(doc.models['/m']).toContainEqual(broken)
    expect(doc.models['/m'].map((r: { id: string }) => r.id)).toEqual(['r2', 'old'])
  })
})
