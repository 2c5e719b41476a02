/**
 * End to end, browser mode in Chromium on the embedded default model: the Importance tab runs
 * LSAQ and cosine on 2 windows of the held-out text and draws 8 bars per method; its Spearman ρ
 * equals the importance CLI's for the same settings (a separate process); sorting by LSAQ puts
 * the CLI's most LSAQ-important block first; clicking that column's bar selects the block's
 * weights in the layer grid. Screenshot: test-artifacts/importance.png. Then the local error
 * proxy ticked beside them: 8 local bars, and its ρ against LSAQ equals the CLI's
 * `--method local` with the spec the form shows.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Page } from 'playwright-core'
import { IMPORTANCE_GRID } from '../../renderer/src/charts/importance-bars'
import type { HostProcess } from '../helpers/browser-host-process'
import { ARTIFACTS, DEFAULT_MODEL as MODEL, REPO_ROOT as ROOT, openE2eSession, type E2eSession } from '../helpers/e2e-session'

const HELDOUT = join(ROOT, 'resources', 'eval', 'heldout.txt')

const run = promisify(execFile)

let host: HostProcess
let page: Page
let pageProblems: string[] = []
let session: E2eSession | undefined

interface CliReport {
  layers: { layer: number; importance: number }[]
  spearman: Record<string, number | null>
}

/** The CLI's LSAQ (k 10, final norm) and Spearman ρ for the same text and windows (or another method's, with its flags). */
async function cliImportance(method = 'lsaq', extra: string[] = []): Promise<CliReport> {
  const { stdout } = await run(
    process.execPath,
    ['--import', 'tsx', join(ROOT, 'worker', 'cli', 'main.ts'), 'importance', MODEL, '--text', HELDOUT, '--method', method, '--max-windows', '2', ...extra, '--json'],
    { cwd: ROOT, maxBuffer: 1 << 20 },
  )
  return JSON.parse(stdout.trim().split('\n').pop()!) as CliReport
}

describe('Importance tab end to end', () => {
  beforeAll(async () => {
    session = await openE2eSession('importance')
    ;({ host, page, problems: pageProblems } = session)
  })

  afterAll(async () => {
    await session?.close()
  })

  it('runs LSAQ + cosine on 2 windows: 8 bars per method, ρ as the CLI, a bar selects its block in the grid', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-importance"]')
    await page.waitForSelector('[data-testid="importance-view"]')
    expect(page.url()).toContain('tab=importance')
    expect(await page.isChecked('[data-testid="importance-text-heldout"]')).toBe(true)
    expect(await page.isChecked('[data-testid="importance-method-lsaq"]')).toBe(true)
    expect(await page.isChecked('[data-testid="importance-method-cosine"]')).toBe(true)
    expect(await page.isChecked('[data-testid="importance-method-sensitivity"]')).toBe(false)
    expect(await page.inputValue('[data-testid="importance-k"]')).toBe('10')
    expect(await page.isChecked('[data-testid="importance-final-norm"]')).toBe(true)
    await page.fill('[data-testid="importance-windows"]', '2')

    await page.click('[data-testid="importance-run"]')
    const result = page.locator('[data-testid="importance-result"]')
    await result.waitFor({ timeout: 60_000 })
    expect(await result.getAttribute('data-bars')).toBe('lsaq:8,cosine:8')
    await page.waitForSelector('[data-testid="importance-chart"] .echart[data-rendered="true"]', { timeout: 10_000 })

    const cli = await cliImportance()
    const rhoCell = page.locator('[data-testid="importance-rho-lsaq-cosine"]')
    const rho = Number(await rhoCell.getAttribute('data-value'))
    expect(rho).toBeCloseTo(cli.spearman['lsaq~cosine']!, 12)
    expect(Math.abs(rho)).toBeLessThanOrEqual(1)
    expect(await rhoCell.innerText()).toMatch(/^-?\d\.\d{3}$|^-?0$|^1$/)

    // Sorted by LSAQ, largest first: the CLI's order.
    await page.click('[data-testid="importance-sort-lsaq"]')
    const cliOrder = [...cli.layers].sort((a, b) => b.importance - a.importance || a.layer - b.layer).map((l) => l.layer)
    await page.waitForFunction((want) => document.querySelector('[data-testid="importance-result"]')?.getAttribute('data-order') === want, cliOrder.join(','))
    await page.waitForSelector('[data-testid="importance-chart"] .echart[data-rendered="true"]', { timeout: 10_000 })
    await page.screenshot({ path: join(ARTIFACTS, 'importance.png'), fullPage: true })

    // The first column (the most important block), on its LSAQ bar: the tallest of the series (normalised to 1).
    const box = (await page.locator('[data-testid="importance-chart"]').boundingBox())!
    const plotWidth = box.width - IMPORTANCE_GRID.left - IMPORTANCE_GRID.right
    const column = plotWidth / 8
    const x = box.x + IMPORTANCE_GRID.left + column * 0.3
    const y = box.y + box.height - IMPORTANCE_GRID.bottom - 20
    await page.mouse.move(x, y)
    await page.mouse.click(x, y)

    const top = cliOrder[0]!
    await page.waitForSelector('[data-testid="layer-grid"]', { timeout: 10_000 })
    expect(page.url()).toContain('tab=grid')
    const selected = await page.locator('[data-testid^="plan-cell-"][aria-selected="true"]').evaluateAll((els) => els.map((e) => e.getAttribute('data-testid')))
    expect(selected.length).toBe(7)
    expect(selected.every((id) => id!.startsWith(`plan-cell-${top}-`))).toBe(true)
    expect(pageProblems).toEqual([])
  })

  it('the local error proxy beside LSAQ and cosine: 8 bars, its ρ as the CLI\'s --method local', async () => {
    await page.click('[data-testid="tab-importance"]')
    await page.waitForSelector('[data-testid="importance-view"]')
    expect(await page.isChecked('[data-testid="importance-method-local"]')).toBe(false)
    await page.check('[data-testid="importance-method-local"]')
    const spec = (await page.locator('[data-testid="importance-quant-spec"]').innerText()).trim()
    expect(spec).toMatch(/^rtn:bits=3,group=128/)
    await page.click('[data-testid="importance-run"]')
    // The calibration capture (64 windows of the calibration text) may not be cached yet.
    await page.waitForFunction(() => document.querySelector('[data-testid="importance-result"]')?.getAttribute('data-bars') === 'lsaq:8,cosine:8,local:8', undefined, { timeout: 300_000 })
    const cli = await cliImportance('local', ['--quant', spec])
    const rho = Number(await page.locator('[data-testid="importance-rho-lsaq-local"]').getAttribute('data-value'))
    expect(rho).toBeCloseTo(cli.spearman['lsaq~local']!, 12)
    expect(cli.layers.length).toBe(8)
    await page.screenshot({ path: join(ARTIFACTS, 'importance-local.png'), fullPage: true })
    expect(pageProblems).toEqual([])
  }, 600_000)
})
