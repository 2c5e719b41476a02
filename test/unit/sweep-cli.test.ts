/**
 * The `sweep` command end to end (child process, qwen2-tiny, a private cache folder): the JSON
 * contract, points sorted by bytes and each within its budget, an infeasible budget listed as
 * skipped, uniform baselines sized as the memory model sizes `--quant SPEC`, and a budget
 * roomy enough for the larger option everywhere evaluating to exactly the uniform plan's ppl.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { openModel } from '../../worker/formats/open-model'
import { resolvePlanFor } from '../../worker/plan/apply'
import { memoryModel } from '../../worker/plan/memory-model'
import { planFromSpec } from '../../worker/plan/plan'
import { parseOptionSpecs } from '../../worker/plan/allocate'

const run = promisify(execFile)
const TINY = 'resources/models/qwen2-tiny'
const HIGH = 'rtn:bits=4,group=32'
const LOW = 'rtn:bits=3,group=32'
/** The specs as reports spell them (every param). */
const [HIGH_SPEC, LOW_SPEC] = parseOptionSpecs(`${HIGH};${LOW}`).map((o) => o.spec)
let cache: string

beforeAll(async () => {
  cache = await mkdtemp(join(tmpdir(), 'qs-sweep-cli-'))
})
afterAll(async () => {
  await rm(cache, { recursive: true, force: true })
})

interface Point {
  budget: string
  bytes: number
  bitsPerWeight: number
  ppl: number
  kld?: number
  counts: Record<string, number>
}

describe('sweep CLI', () => {
  it('optimal over 4- and 3-bit RTN: sorted, within budget, infeasible skipped, uniform baselines', async () => {
    const budgets = ['5bpw', '4.5bpw', '2bpw', '4.25bpw']
    const { stdout } = await run(
      'npx',
      ['tsx', 'worker/cli/main.ts', 'sweep', TINY, '--allocator', 'optimal', '--budgets', budgets.join(','), '--options', `${HIGH};${LOW}`, '--calib-windows', '1', '--max-windows', '2', '--backend', 'native', '--kld', '--json'],
      { cwd: resolve('.'), env: { ...process.env, XDG_CACHE_HOME: cache }, maxBuffer: 1 << 24 },
    )
    const r = JSON.parse(stdout) as { allocator: string; points: Point[]; uniform: (Point & { option: string; kept: number })[]; skipped: { budget: string; reason: string }[]; windows: number }
    expect(r.allocator).toBe('optimal')
    expect(r.windows).toBe(2)
    // 2 bpw is below uniform 3-bit (4 bpw with its fp16 scale and minimum per 32): skipped, not a point.
    expect(r.skipped.map((s) => s.budget)).toEqual(['2bpw'])
    expect(r.skipped[0]!.reason).toMatch(/infeasible.*smallest feasible is 4 bpw/)
    expect(r.points.map((p) => p.budget)).toEqual(['4.25bpw', '4.5bpw', '5bpw'])
    for (const p of r.points) {
      expect(typeof p.budget).toBe('string')
      expect(Number.isInteger(p.bytes)).toBe(true)
      expect(Number.isFinite(p.ppl) && p.ppl > 1).toBe(true)
      expect(p.kld).toBeGreaterThan(0)
      expect(p.bitsPerWeight).toBeLessThanOrEqual(Number.parseFloat(p.budget))
    }
    for (let i = 1; i < r.points.length; i++) expect(r.points[i]!.bytes).toBeGreaterThan(r.points[i - 1]!.bytes)

    // Uniform baselines: the same bytes as the memory model gives `--quant SPEC`.
    const model = await openModel(TINY)
    try {
      expect(r.uniform.map((u) => u.option)).toEqual([LOW_SPEC, HIGH_SPEC])
      for (const u of r.uniform) {
        const m = memoryModel(model, resolvePlanFor(model, planFromSpec(model, u.option), u.option), { format: 'native', kv: null })
        expect(u.bytes).toBe(m.total)
        expect(u.kept).toBe(0)
      }
    } finally {
      await model.close()
    }
    expect(r.uniform[0]!.bitsPerWeight).toBeCloseTo(4, 10)
    expect(r.uniform[1]!.bitsPerWeight).toBeCloseTo(5, 10)
    // 5 bpw fits every tensor at 4 bits, which costs less ΔKLD than 3 bits: the uniform 4-bit plan.
    const top = r.points.find((p) => p.budget === '5bpw')!
    expect(top.counts).toEqual({ [HIGH_SPEC!]: 28 })
    expect(top.bytes).toBe(r.uniform[1]!.bytes)
    expect(top.ppl).toBe(r.uniform[1]!.ppl)
    expect(top.kld).toBe(r.uniform[1]!.kld)
    // Between the uniform plans in size, and no worse than the 3-bit one it improves on.
    const mid = r.points.find((p) => p.budget === '4.5bpw')!
    expect(mid.bytes).toBeGreaterThan(r.uniform[0]!.bytes)
    expect(mid.bytes).toBeLessThan(r.uniform[1]!.bytes)
  }, 240_000)

  it('refuses a missing --budgets and an unknown allocator (usage, exit 2)', async () => {
    const cli = (args: string[]) => run('npx', ['tsx', 'worker/cli/main.ts', 'sweep', TINY, ...args], { cwd: resolve('.') }).catch((e: { code: number; stderr: string }) => e)
    const none = (await cli(['--allocator', 'optimal'])) as { code: number; stderr: string }
    expect(none.code).toBe(2)
    expect(none.stderr).toMatch(/sweep needs --budgets/)
    const bad = (await cli(['--allocator', 'best', '--budgets', '4bpw'])) as { code: number; stderr: string }
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/sweep needs --allocator lsaq\|greedy\|optimal/)
  }, 60_000)
})
