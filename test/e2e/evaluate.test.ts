/**
 * End to end, browser mode in Chromium on the embedded default model: the Evaluate tab runs
 * perplexity on the held-out text (2 windows), shows progress, then a row in the runs table
 * whose ppl equals the CLI's for the same settings; a long run shows tokens/s and ETA and is
 * cancelled; a too-short text gives a readable error; a KLD run of the base against itself
 * agrees everywhere; greedy generation shows two outputs side by side.
 * Screenshots: test-artifacts/evaluate.png, evaluate-progress.png.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Page } from 'playwright-core'
import type { HostProcess } from '../helpers/browser-host-process'
import { ARTIFACTS, DEFAULT_MODEL as MODEL, REPO_ROOT as ROOT, openE2eSession, type E2eSession } from '../helpers/e2e-session'

const HELDOUT = join(ROOT, 'resources', 'eval', 'heldout.txt')

const run = promisify(execFile)

let dir: string
let host: HostProcess
let page: Page
let pageProblems: string[] = []
let session: E2eSession | undefined

/** The CLI's perplexity for the same settings (a separate process, same engine code). */
async function cliPerplexity(): Promise<number> {
  const { stdout } = await run(
    process.execPath,
    ['--import', 'tsx', join(ROOT, 'worker', 'cli', 'main.ts'), 'eval', MODEL, '--text', HELDOUT, '--ctx', '256', '--max-windows', '2', '--json'],
    { cwd: ROOT, maxBuffer: 1 << 20 },
  )
  return (JSON.parse(stdout.trim().split('\n').pop()!) as { ppl: number }).ppl
}

describe('Evaluate tab end to end', () => {
  beforeAll(async () => {
    session = await openE2eSession('eval')
    ;({ dir, host, page, problems: pageProblems } = session)
  })

  afterAll(async () => {
    await session?.close()
  })

  it('runs perplexity on the held-out text: progress, then a row equal to the CLI', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    expect(await page.innerText('[data-testid="overview-name"]')).toBe('default')
    await page.click('[data-testid="tab-evaluate"]')
    await page.waitForSelector('[data-testid="runs-empty"]', { timeout: 30_000 })
    // Backends are listed; WASM is always there and selected.
    await page.waitForSelector('[data-testid="eval-backend"] option[value="native"]', { state: 'attached', timeout: 30_000 })
    expect(await page.inputValue('[data-testid="eval-backend"]')).toBe('wasm')
    expect(await page.inputValue('[data-testid="eval-ctx"]')).toBe('256')
    expect(await page.isChecked('[data-testid="eval-text-heldout"]')).toBe(true)

    await page.fill('[data-testid="eval-max-windows"]', '2')
    await page.click('[data-testid="eval-run"]')
    await page.waitForSelector('[data-testid="eval-progress"]', { timeout: 10_000 })
    expect(await page.isDisabled('[data-testid="eval-run"]')).toBe(true)
    const row = page.locator('[data-testid="run-row"]')
    await row.first().waitFor({ timeout: 60_000 })
    expect(await page.locator('[data-testid="eval-progress"]').count()).toBe(0)
    expect(await row.count()).toBe(1)

    const shown = await row.first().locator('[data-testid="run-ppl"]').innerText()
    const value = Number(await row.first().locator('[data-testid="run-ppl"]').getAttribute('data-value'))
    const cli = await cliPerplexity()
    expect(Number.isFinite(cli)).toBe(true)
    expect(shown).toBe(cli.toFixed(3))
    expect(Math.abs(value / cli - 1)).toBeLessThan(1e-6)
    const cells = await row.first().locator('td').allInnerTexts()
    expect(cells[0]).toBe('base')
    expect(cells[1]).toBe('held-out text')
    expect(cells[2]).toBe('256 × 2')
    expect(cells).toContain('512')
    expect(cells.some((c) => /^wasm · \d+t$/.test(c))).toBe(true)
  })

  it('shows tokens/s and ETA on a long run, and cancels it', async () => {
    // Every window of the held-out text (minutes): cancelled once the rate shows.
    await page.fill('[data-testid="eval-max-windows"]', '')
    await page.click('[data-testid="eval-run"]')
    const rate = page.locator('[data-testid="eval-progress"] [data-testid="rate"]')
    await rate.waitFor({ timeout: 30_000 })
    expect(await rate.innerText()).toMatch(/^\d+(\.\d)? tokens\/s · ETA \d/)
    expect(await page.getAttribute('[data-testid="eval-progress"]', 'data-stage')).toBe('evaluating')
    await page.locator('[data-testid="eval-progress"]').screenshot({ path: join(ARTIFACTS, 'evaluate-progress.png') })
    await page.click('[data-testid="eval-cancel"]')
    await page.waitForSelector('[data-testid="eval-progress"]', { state: 'detached', timeout: 15_000 })
    expect(await page.locator('[data-testid="error-panel"]').count()).toBe(0)
    expect(await page.locator('[data-testid="run-row"]').count()).toBe(1)
    await page.fill('[data-testid="eval-max-windows"]', '2')
  })

  it('explains a text shorter than one window', async () => {
    const short = join(dir, 'short.txt')
    await writeFile(short, 'print("hello")\n')
    await page.check('[data-testid="eval-text-file"]')
    await page.fill('[data-testid="eval-text-path"]', short)
    await page.click('[data-testid="eval-run"]')
    const panel = page.locator('[data-testid="error-panel"]')
    await panel.waitFor({ timeout: 30_000 })
    expect(await panel.innerText()).toMatch(/the text has \d+ tokens, fewer than one window of ctx = 256 tokens/)
    expect(await page.locator('[data-testid="run-row"]').count()).toBe(1)
    await panel.locator('button', { hasText: 'Dismiss' }).click()
    await page.check('[data-testid="eval-text-heldout"]')
  })

  it('measures KLD against the base: the base against itself agrees everywhere', async () => {
    await page.check('[data-testid="eval-kld"]')
    await page.click('[data-testid="eval-run"]')
    await page.waitForSelector('[data-testid="run-row"] >> nth=1', { timeout: 60_000 })
    const newest = page.locator('[data-testid="run-row"]').first()
    const kld = Number(await newest.locator('[data-testid="run-kld"]').getAttribute('data-value'))
    // Exactly 0 when the base runs beside the variant; ~1e-6 when its log-probs come from the
    // engine's 16-bit disk cache (a previous run of this test wrote it).
    expect(Math.abs(kld)).toBeLessThan(1e-4)
    const cells = await newest.locator('td').allInnerTexts()
    expect(cells).toContain('100.00 %')
    // Same windows, same weights: the same perplexity as the first run.
    const ppls = await page.locator('[data-testid="run-ppl"]').allInnerTexts()
    expect(ppls[0]).toBe(ppls[1])
  })

  it('generates greedily with two variants side by side', async () => {
    await page.fill('[data-testid="gen-prompt"]', 'The built-in function')
    await page.fill('[data-testid="gen-max-tokens"]', '8')
    expect(await page.getAttribute('[data-testid="gen-greedy"]', 'aria-checked')).toBe('true')
    await page.click('[data-testid="gen-run"]')
    await page.waitForSelector('[data-testid="gen-output"][data-done="true"] >> nth=1', { timeout: 60_000, state: 'attached' })
    await page.waitForSelector('[data-testid="gen-progress"]', { state: 'detached', timeout: 60_000 })
    const outputs = page.locator('[data-testid="gen-output"]')
    expect(await outputs.count()).toBe(2)
    const texts = await outputs.locator('[data-testid="gen-output-text"]').allInnerTexts()
    expect(texts[0]!.length).toBeGreaterThan(0)
    // Both sides are the base model, greedy: the same continuation.
    expect(texts[1]).toBe(texts[0])
    const metas = await outputs.locator('[data-testid="gen-output-meta"]').allInnerTexts()
    for (const m of metas) expect(m).toMatch(/^\d+ tokens · \d+(\.\d)? tokens\/s$/)
    await page.screenshot({ path: join(ARTIFACTS, 'evaluate.png'), fullPage: true })
  })

  it('lists the kept run again after a reload', async () => {
    await page.reload()
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-evaluate"]')
    await page.locator('[data-testid="run-row"] >> nth=1').waitFor({ timeout: 30_000 })
    expect(await page.locator('[data-testid="run-row"]').count()).toBe(2)
    expect(pageProblems).toEqual([])
  })
})
