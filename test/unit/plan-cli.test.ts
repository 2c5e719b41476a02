/**
 * The `plan` command end to end (child process): LSAQ from an `importance --json` file writes a
 * plan the engine resolves, at the promised size; a bad budget is a usage error (exit 2) and an
 * infeasible one exits 1 naming the smallest feasible size.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { openModel } from '../../worker/formats/open-model'
import { resolvePlanFor } from '../../worker/plan/apply'
import { memoryModel } from '../../worker/plan/memory-model'
import { parsePlan } from '../../worker/plan/plan'

const run = promisify(execFile)
const TINY = 'resources/models/qwen2-tiny'
let dir: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-plan-cli-'))
  await writeFile(join(dir, 'importance.json'), JSON.stringify({ method: 'lsaq', layers: [0.9, 0.1, 0.5, 0.3].map((v, layer) => ({ layer, importance: v })) }))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const cli = (args: string[]) => run('npx', ['tsx', 'worker/cli/main.ts', 'plan', TINY, ...args], { cwd: resolve('.') })

describe('plan CLI', () => {
  it('lsaq with an importance file: the plan resolves and measures what the report says', async () => {
    const importance = join(dir, 'importance.json')
    const out = join(dir, 'plan.json')
    const { stdout } = await cli(['--budget', '4.5bpw', '--allocator', 'lsaq', '--options', 'rtn:bits=4,group=32;rtn:bits=3,group=32', '--importance-file', importance, '--kv-ctx', '512', '--out', out, '--json'])
    const report = JSON.parse(stdout)
    expect(report.highLayers).toEqual([0, 2]) // 4 + 1/2 bpw: two blocks of four at 5 bpw, two at 4
    const model = await openModel(TINY)
    const plan = parsePlan(await readFile(out, 'utf8'), out)
    const m = memoryModel(model, resolvePlanFor(model, plan, out), { format: 'native', kv: { ctx: 512 } })
    expect(report.bytes).toEqual({ planned: m.planned, kept: m.kept, kvCache: m.kvCache, total: m.total })
    await model.close()
  }, 60_000)

  it('refuses a bad budget (usage, exit 2) and an infeasible one (exit 1, smallest feasible size)', async () => {
    const bad = await cli(['--budget', '3XB', '--allocator', 'optimal', '--out', join(dir, 'x.json')]).catch((e: { code: number; stderr: string }) => e)
    expect((bad as { code: number }).code).toBe(2)
    expect((bad as { stderr: string }).stderr).toMatch(/budget '3XB': unknown unit 'XB'/)
    const tight = await cli(['--budget', '100KB', '--allocator', 'lsaq', '--options', 'rtn:bits=4,group=32;rtn:bits=3,group=32', '--importance-file', join(dir, 'importance.json'), '--out', join(dir, 'y.json')]).catch((e: { code: number; stderr: string }) => e)
    expect((tight as { code: number }).code).toBe(1)
    expect((tight as { stderr: string }).stderr).toMatch(/100KB is infeasible with these options: the smallest feasible size is \d+ bytes/)
  }, 60_000)
})
