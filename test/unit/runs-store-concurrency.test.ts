import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
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
    const order: number[] = []
    await Promise.all([1, 2, 3].map((i) => withFileLock(file, async () => order.push(i))))
    expect(order.sort()).toEqual([1, 2, 3])
  })
})
