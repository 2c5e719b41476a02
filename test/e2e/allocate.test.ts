/**
 * End to end, browser mode in Chromium on the embedded default model: "Allocate under a budget"
 * in the layer grid. LSAQ over 4- and 3-bit RTN (g128): moving the budget slider re-allocates,
 * the grid takes the plan (cells at 4 and 3 bits, coloured by bits, the mix following the
 * budget) and the memory bar's total is the plan editor's exact size; the bar's weights plus
 * the KV reserve for a context of 1024 is its total, and a budget in MB bounds that total; an infeasible budget shows the smallest
 * feasible size; a two-budget Pareto sweep on two windows draws its points and clicking the
 * uniform 3-bit point puts that plan in the grid. Screenshots: test-artifacts/allocate.png, allocate-lsaq-3.5bpw.png.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import type { HostProcess } from '../helpers/browser-host-process'
import { ARTIFACTS, openE2eSession, type E2eSession } from '../helpers/e2e-session'


let host: HostProcess
let page: Page
let pageProblems: string[] = []
let session: E2eSession | undefined

interface Cell {
  tensor: string
  bits: number
  method: string
  background: string
}

async function cells(): Promise<Cell[]> {
  return page.$$eval('[data-testid^="plan-cell-"]', (els) =>
    els.map((e) => ({
      tensor: e.getAttribute('data-tensor')!,
      bits: Number(e.getAttribute('data-bits')),
      method: e.getAttribute('data-method')!,
      background: (e as HTMLElement).style.background,
    })),
  )
}

/** Waits for an allocation of `budget` to be in the grid and the plan editor's size to be settled. */
async function allocated(budget: string): Promise<void> {
  await page.waitForFunction((b) => document.querySelector('[data-testid="allocate-result"]')?.textContent?.includes(`lsaq ${b}`) === true, budget, { timeout: 60_000 })
  await page.waitForSelector('[data-testid="plan-size"][data-pending="false"]:not([data-bytes=""])')
}

async function attr(selector: string, name: string): Promise<string> {
  return (await page.getAttribute(selector, name)) ?? ''
}

describe('allocation under a budget in the layer grid', () => {
  beforeAll(async () => {
    session = await openE2eSession('allocate')
    ;({ host, page, problems: pageProblems } = session)
  })

  afterAll(async () => {
    await session?.close()
  })

  it('slider → grid and memory bar; infeasible budget; Pareto sweep point → grid', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-grid"]')
    await page.waitForSelector('[data-testid="plan-method"] option[value="rtn"]', { state: 'attached', timeout: 30_000 })
    await page.click('[data-testid="allocate-toggle"]')
    await page.click('[data-testid="allocator-lsaq"]')
    await page.fill('[data-testid="allocate-windows"]', '1')

    // Move the slider: 3.5 bits per weight over 4.25- and 3.25-bit options (a fp16 scale and zero per 128).
    await page.locator('[data-testid="budget-slider"]').fill('3.5')
    await allocated('3.5bpw')
    const at35 = await cells()
    expect(at35.length).toBe(56)
    expect(new Set(at35.map((c) => c.bits))).toEqual(new Set([4, 3]))
    expect(at35.every((c) => c.method === 'rtn')).toBe(true)
    // LSAQ moves whole blocks: each block's 7 linears share their bits.
    const byBlock = new Map<string, Set<number>>()
    for (const c of at35) {
      const block = /layers\.(\d+)\./.exec(c.tensor)![1]!
      byBlock.set(block, (byBlock.get(block) ?? new Set()).add(c.bits))
    }
    expect([...byBlock.values()].every((s) => s.size === 1)).toBe(true)
    // The grid colours by bits now: 4- and 3-bit cells differ in colour, equal bits share one.
    expect(await attr('[data-testid="grid-chart"]', 'data-colour-by')).toBe('bits')
    const colourOf = (cs: Cell[], bits: number) => new Set(cs.filter((c) => c.bits === bits).map((c) => c.background))
    expect(colourOf(at35, 4).size).toBe(1)
    expect(colourOf(at35, 3).size).toBe(1)
    expect([...colourOf(at35, 4)][0]).not.toBe([...colourOf(at35, 3)][0])
    // The memory bar's total (no KV reserve) is the plan's exact size as the plan editor reports it.
    const planBytes = Number(await attr('[data-testid="plan-size"]', 'data-bytes'))
    expect(Number(await attr('[data-testid="memory-bar"]', 'data-total'))).toBe(planBytes)
    expect(Number(await attr('[data-testid="memory-bar"]', 'data-kv'))).toBe(0)
    const parts = await page.$$eval('[data-testid="memory-bar"] .seg', (els) => els.map((e) => Number(e.getAttribute('data-bytes'))))
    expect(parts.reduce((a, b) => a + b, 0)).toBe(planBytes)
    await page.locator('[data-testid="layer-grid"]').screenshot({ path: join(ARTIFACTS, 'allocate-lsaq-3.5bpw.png') })

    // A larger budget: more blocks at 4 bits, and the grid follows.
    await page.locator('[data-testid="budget-slider"]').fill('4')
    await allocated('4bpw')
    const at4 = await cells()
    const high = (cs: Cell[]) => cs.filter((c) => c.bits === 4).length
    expect(high(at4)).toBeGreaterThan(high(at35))
    expect(Number(await attr('[data-testid="memory-bar"]', 'data-total'))).toBe(Number(await attr('[data-testid="plan-size"]', 'data-bytes')))

    // A KV reserve: 2 (K, V) · 8 layers · KV heads · head dim · 1024 tokens · 2 bytes joins the bar.
    await page.fill('[data-testid="kv-ctx"]', '1024')
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="memory-bar"]')?.getAttribute('data-kv')) > 0, undefined, { timeout: 30_000 })
    await page.waitForSelector('[data-testid="plan-size"][data-pending="false"]:not([data-bytes=""])')
    const kv = Number(await attr('[data-testid="memory-bar"]', 'data-kv'))
    expect(Number(await attr('[data-testid="memory-bar"]', 'data-total'))).toBe(Number(await attr('[data-testid="plan-size"]', 'data-bytes')) + kv)
    expect(kv % (2 * 8 * 1024 * 2)).toBe(0)

    // A budget in MB bounds the whole model, KV reserve included.
    const totalAt4 = Number(await attr('[data-testid="memory-bar"]', 'data-total'))
    const mb = Math.round(Math.floor(totalAt4 / 1e4) - 5) / 100
    await page.click('[data-testid="budget-unit-mb"]')
    await page.fill('[data-testid="budget-value"]', String(mb))
    await allocated(`${mb}MB`)
    const totalMb = Number(await attr('[data-testid="memory-bar"]', 'data-total'))
    expect(totalMb).toBeLessThanOrEqual(mb * 1e6)
    expect(totalMb).toBeLessThan(totalAt4)
    expect(totalMb).toBe(Number(await attr('[data-testid="plan-size"]', 'data-bytes')) + kv)
    await page.click('[data-testid="budget-unit-bpw"]')

    // Below the 3-bit plan everywhere: no plan fits, and the message gives the smallest feasible size.
    await page.locator('[data-testid="budget-slider"]').fill('2')
    await page.waitForSelector('[data-testid="allocate-error"]', { timeout: 30_000 })
    const message = (await page.textContent('[data-testid="allocate-error"]')) ?? ''
    expect(message).toContain('No plan fits this budget')
    expect(message).toMatch(/2bpw is infeasible with these options: the smallest feasible is 3\.25\d* bpw/)

    // Pareto sweep: LSAQ at two budgets beside the uniform plans, 2 held-out windows each.
    await page.click('[data-testid="sweep-toggle"]')
    await page.uncheck('[data-testid="sweep-allocator-optimal"]')
    await page.fill('[data-testid="sweep-budgets"]', '3.5bpw, 4bpw')
    await page.fill('[data-testid="sweep-windows"]', '2')
    await page.click('[data-testid="sweep-run"]')
    // The sweep is listed with the other running jobs in the top bar while it runs.
    await page.waitForSelector('[data-testid="job-indicator"][data-job="pareto"]', { timeout: 10_000 })
    await page.waitForSelector('[data-testid="pareto-chart"][data-rendered="true"]', { timeout: 60_000 })
    expect(await page.$('[data-testid="job-indicator"][data-job="pareto"]')).toBeNull()
    const labels = await page.$$eval('[data-testid="sweep-points"] tbody tr', (rows) => rows.map((r) => r.getAttribute('data-label')!))
    expect(labels).toHaveLength(4)
    expect(labels).toEqual(expect.arrayContaining(['lsaq 3.5bpw', 'lsaq 4bpw']))
    const uniform3 = labels.find((l) => l.startsWith('uniform rtn:bits=3'))!
    expect(uniform3).toBeDefined()
    // Sizes grow down the table: uniform 3-bit first, uniform 4-bit last.
    expect(labels[0]).toBe(uniform3)

    // Click the uniform 3-bit point on the chart itself.
    await page.waitForFunction(() => JSON.parse(document.querySelector('[data-testid="pareto-chart"]')?.getAttribute('data-points') ?? '[]').length === 4)
    const points = JSON.parse(await attr('[data-testid="pareto-chart"]', 'data-points')) as { label: string; x: number; y: number }[]
    const target = points.find((p) => p.label === uniform3)!
    await page.locator('[data-testid="pareto-chart"]').click({ position: { x: target.x, y: target.y } })
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid^="plan-cell-"]')].every((e) => e.getAttribute('data-bits') === '3'), undefined, { timeout: 10_000 })
    const after = await cells()
    expect(after.every((c) => c.bits === 3 && c.method === 'rtn')).toBe(true)
    expect(await page.getAttribute(`[data-testid="sweep-points"] tr[data-label="${uniform3}"]`, 'class')).toContain('on')
    await page.screenshot({ path: join(ARTIFACTS, 'allocate.png'), fullPage: true })
    expect(pageProblems).toEqual([])
  })
})
