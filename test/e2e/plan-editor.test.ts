/**
 * End to end, browser mode in Chromium on the embedded default model: the layer grid as a
 * plan editor. Select the q column by its header, give it 3-bit RTN; the size shown equals
 * worker/plan/size.ts on the plan the page exports (and the byte count written out by hand);
 * save the plan, reload, load it back, import the exported file; compare two methods on one weight in the inspector
 * (levels drawn, two metric rows with different MSE); colour the grid by the plan's error;
 * cancel a calibrated comparison; evaluate the plan (ppl and KLD) on 2 windows into the runs table under the
 * plan's name, and generate with the base and the plan side by side.
 * Screenshots: test-artifacts/plan-*.png.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { BrowserContext, Page } from 'playwright-core'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { classifyTensor } from '../../worker/model/logical-model'
import { resolvePlanFor } from '../../worker/plan/apply'
import { modelFingerprint, parsePlan, type Plan } from '../../worker/plan/plan'
import { planSize } from '../../worker/plan/size'
import { launchChromiumPage } from '../helpers/chromium-page'
import { startHostProcess, type HostProcess } from '../helpers/browser-host-process'

const ROOT = resolve(import.meta.dirname, '..', '..')
const ARTIFACTS = join(ROOT, 'test-artifacts')
const MODEL = join(ROOT, 'resources', 'models', 'default')
const PLAN_NAME = 'q-rtn3'

let dir: string
let host: HostProcess
let browser: BrowserContext
let page: Page
let model: OpenedModel
let qNames: string[]
/** The size the page showed for the 3-bit q plan. */
let shownBytes = 0
/** The plan file the page exported. */
let exportedPath = ''
const pageProblems: string[] = []

async function sizeShown(): Promise<number> {
  await page.waitForSelector('[data-testid="plan-size"][data-pending="false"]:not([data-bytes=""])', { timeout: 30_000 })
  return Number(await page.getAttribute('[data-testid="plan-size"]', 'data-bytes'))
}

async function cellBits(): Promise<Record<string, number>> {
  return page.$$eval('[data-testid^="plan-cell-"]', (els) => Object.fromEntries(els.map((e) => [e.getAttribute('data-tensor')!, Number(e.getAttribute('data-bits'))])))
}

async function selectionCount(): Promise<number> {
  return Number(await page.getAttribute('[data-testid="plan-selection"]', 'data-count'))
}

async function centre(testid: string): Promise<{ x: number; y: number }> {
  const box = (await page.locator(`[data-testid="${testid}"]`).boundingBox())!
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 }
}

/** Drag, shift-click, a block header and the keyboard select and set cells; everything is kept again at the end. */
async function selectionGestures(): Promise<void> {
  const from = await centre('plan-cell-0-gate')
  const to = await centre('plan-cell-1-down')
  await page.mouse.move(from.x, from.y)
  await page.mouse.down()
  await page.mouse.move(to.x, to.y, { steps: 6 })
  await page.mouse.up()
  // Blocks 0–1 × gate, up, down; a drag selects without changing bits.
  expect(await selectionCount()).toBe(6)
  await page.click('[data-testid="plan-cell-3-k"]', { modifiers: ['Shift'] })
  // From the drag's first cell (block 0 · gate) to block 3 · k: 4 blocks × k v o gate.
  expect(await selectionCount()).toBe(16)
  await page.click('[data-testid="plan-row-5"]')
  expect(await selectionCount()).toBe(7)
  expect(Object.values(await cellBits()).every((b) => b === 16)).toBe(true)

  // A click cycles 16 → 8; Enter goes on to 4; k keeps the cell again.
  await page.click('[data-testid="plan-cell-0-q"]')
  expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'data-bits')).toBe('8')
  await page.keyboard.press('Enter')
  expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'data-bits')).toBe('4')
  await page.keyboard.press('k')
  expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'data-bits')).toBe('16')
  // Arrows move the focus, shift+arrows extend the selection, digits set bits.
  await page.keyboard.press('ArrowRight')
  await page.keyboard.press('Shift+ArrowDown')
  expect(await selectionCount()).toBe(2)
  await page.keyboard.press('2')
  expect(await page.getAttribute('[data-testid="plan-cell-0-k"]', 'data-bits')).toBe('2')
  expect(await page.getAttribute('[data-testid="plan-cell-1-k"]', 'data-bits')).toBe('2')
  expect(await page.getAttribute('[data-testid="plan-cell-1-k"]', 'aria-label')).toMatch(/^block 1 k: 2 bits, rtn g128/)
  // Another method for the selection keeps the width where it can: llama.cpp's 2-bit block type.
  await page.selectOption('[data-testid="plan-method"]', 'ggml')
  expect(await page.getAttribute('[data-testid="plan-cell-1-k"]', 'aria-label')).toMatch(/^block 1 k: 2 bits, ggml Q2_K/)
  await page.focus('[data-testid="plan-cell-1-k"]')
  await page.keyboard.press('3')
  expect(await page.getAttribute('[data-testid="plan-cell-0-k"]', 'aria-label')).toMatch(/^block 0 k: 3 bits, ggml Q3_K/)
  await page.keyboard.press('k')
  await page.keyboard.press('Escape')
  expect(await selectionCount()).toBe(0)
  expect(Object.values(await cellBits()).every((b) => b === 16)).toBe(true)
}

describe('plan editor end to end', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-e2e-plan-'))
    await mkdir(ARTIFACTS, { recursive: true })
    model = await openModel(MODEL)
    qNames = model.tensors.filter((t) => classifyTensor(t.name).role === 'q' && t.shape.length === 2).map((t) => t.name)
    host = await startHostProcess([MODEL, '--state-dir', join(dir, 'state'), '--cache-dir', join(dir, 'cache')])
    ;({ browser, page } = await launchChromiumPage(join(dir, 'chromium'), pageProblems))
  })

  afterAll(async () => {
    await browser?.close().catch(() => {})
    await host?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('plans 3-bit RTN for the q column; the size shown is the engine size of the exported plan', async () => {
    expect(qNames.length).toBe(8)
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-grid"]')
    await page.waitForSelector('[data-testid="plan-method"] option[value="rtn"]', { state: 'attached', timeout: 30_000 })
    // Nothing planned: the model as stored.
    const stored = await sizeShown()
    expect(stored).toBe(model.tensors.reduce((a, t) => a + (t.derivedFrom ? 0 : t.byteLength), 0))

    await selectionGestures()

    await page.click('[data-testid="plan-col-q"]')
    expect(await page.getAttribute('[data-testid="plan-selection"]', 'data-count')).toBe('8')
    await page.selectOption('[data-testid="plan-method"]', 'rtn')
    await page.click('[data-testid="plan-bits-3"]')
    const bits = await cellBits()
    expect(Object.keys(bits).length).toBe(56)
    for (const [t, b] of Object.entries(bits)) expect([t, b]).toEqual([t, qNames.includes(t) ? 3 : 16])
    const label = await page.getAttribute('[data-testid="plan-cell-0-q"]', 'aria-label')
    expect(label).toMatch(/^block 0 q: 3 bits, rtn g128; .*selected$/)

    shownBytes = await sizeShown()
    // The plan the page built, through its JSON export.
    await page.fill('[data-testid="plan-name"]', PLAN_NAME)
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid="plan-export"]')])
    exportedPath = join(dir, 'exported.plan.json')
    await download.saveAs(exportedPath)
    const plan: Plan = parsePlan(await readFile(exportedPath, 'utf8'), 'exported plan')
    expect(plan.model.fingerprint).toBe(modelFingerprint(model))
    expect(Object.keys(plan.tensors).sort()).toEqual([...qNames].sort())
    for (const e of Object.values(plan.tensors)) expect(e).toMatchObject({ method: 'rtn', params: { bits: 3, group: 128, sym: false } })
    const size = planSize(model, resolvePlanFor(model, plan, 'exported plan'))
    expect(shownBytes).toBe(size.bytes)
    // By hand: each q weight is 256 × 256; 3-bit codes packed, an fp16 scale and min per 128 columns.
    const q = model.tensors.find((t) => t.name === qNames[0])!
    expect(q.shape).toEqual([256, 256])
    const perTensor = (256 * 256 * 3) / 8 + 256 * 2 * 4
    expect(shownBytes).toBe(stored - 8 * q.byteLength + 8 * perTensor)
    expect(Number(await page.getAttribute('[data-testid="plan-bpw"]', 'data-value'))).toBeCloseTo((8 * perTensor) / (256 * 256), 9)
    expect(await page.innerText('[data-testid="plan-size-bytes"]')).toMatch(/MiB$/)
    await page.screenshot({ path: join(ARTIFACTS, 'plan-grid.png'), fullPage: true })
  })

  it('saves the plan, and loads it back after a reload', async () => {
    await page.click('[data-testid="plan-save"]')
    await page.waitForSelector(`[data-testid="plan-saved-row"]:has-text("${PLAN_NAME}")`, { timeout: 15_000 })
    await page.reload()
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.waitForSelector('[data-testid="plan-grid"]', { timeout: 30_000 })
    // A fresh page starts with nothing planned.
    expect(Object.values(await cellBits()).every((b) => b === 16)).toBe(true)
    const row = page.locator('[data-testid="plan-saved-row"]', { hasText: PLAN_NAME })
    await row.waitFor({ timeout: 15_000 })
    await row.locator('[data-testid="plan-load"]').click()
    const bits = await cellBits()
    for (const [t, b] of Object.entries(bits)) expect([t, b]).toEqual([t, qNames.includes(t) ? 3 : 16])
    expect(await page.inputValue('[data-testid="plan-name"]')).toBe(PLAN_NAME)
    expect(await sizeShown()).toBe(shownBytes)

    // Import: the exported file gives the same plan; a plan of another model is refused.
    await page.click('[data-testid="plan-clear"]')
    expect(Object.values(await cellBits()).every((b) => b === 16)).toBe(true)
    await page.setInputFiles('[data-testid="plan-import-file"]', exportedPath)
    await page.waitForSelector('[data-testid="plan-cell-7-q"][data-bits="3"]', { timeout: 10_000 })
    expect(await page.inputValue('[data-testid="plan-name"]')).toBe('exported')
    for (const [t, b] of Object.entries(await cellBits())) expect([t, b]).toEqual([t, qNames.includes(t) ? 3 : 16])
    expect(await sizeShown()).toBe(shownBytes)
    const other = JSON.parse(await readFile(exportedPath, 'utf8')) as Plan
    other.model = { name: 'other', fingerprint: 'f00' }
    await page.setInputFiles('[data-testid="plan-import-file"]', { name: 'other.plan.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(other)) })
    await page.waitForSelector('[data-testid="plan-import-error"]', { timeout: 10_000 })
    expect(await page.innerText('[data-testid="plan-import-error"]')).toMatch(/^other\.plan\.json: made for another model \('other', fingerprint f00\)/)
    await page.click(`[data-testid="plan-saved-row"]:has-text("${PLAN_NAME}") [data-testid="plan-load"]`)
    expect(await page.inputValue('[data-testid="plan-name"]')).toBe(PLAN_NAME)
    expect(await page.locator('[data-testid="plan-import-error"]').count()).toBe(0)
  })

  it('colours the grid by the weight error of the plan', async () => {
    await page.click('[data-testid="grid-stat-plan-error"]')
    await page.waitForFunction(() => document.querySelectorAll('[data-testid^="plan-cell-"][data-bits="3"] .value').length === 8 && [...document.querySelectorAll('[data-testid^="plan-cell-"][data-bits="3"] .value')].every((e) => e.textContent!.trim() !== ''), undefined, { timeout: 60_000 })
    expect(await page.getAttribute('[data-testid="grid-chart"]', 'data-colour-map')).toBe('sequential')
    // Only planned cells carry an error; kept ones stay uncoloured.
    const keptValues = await page.locator('[data-testid^="plan-cell-"][data-bits="16"] .value').allTextContents()
    expect(keptValues.length).toBe(48)
    expect(keptValues.every((v) => v.trim() === '')).toBe(true)
    await page.locator('[data-testid="layer-grid"]').screenshot({ path: join(ARTIFACTS, 'plan-grid-error.png') })
  })

  it('compares two methods on one weight in the inspector', async () => {
    await page.click('[data-testid="plan-cell-2-q"]', { modifiers: ['Control'] })
    await page.keyboard.press('i')
    await page.waitForSelector('[data-testid="quant-compare"]', { timeout: 15_000 })
    expect(await page.innerText('[data-testid="inspector-name"]')).toBe(qNames.find((n) => n.includes('layers.2.'))!)
    expect(await page.locator('[data-testid="compare-choice"]').count()).toBe(2)
    // The plan's own setting for this weight is one click away.
    expect(await page.innerText('[data-testid="compare-add-planned"]')).toBe("Add the plan's setting (3-bit rtn g128)")
    await page.click('[data-testid="compare-run"]')
    const rows = page.locator('[data-testid="compare-metrics-row"]')
    await rows.nth(1).waitFor({ timeout: 60_000 })
    expect(await rows.count()).toBe(2)
    const mse = (await rows.evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-mse'))))) as number[]
    expect(mse.every((m) => m > 0 && Number.isFinite(m))).toBe(true)
    expect(mse[0]).not.toBe(mse[1])
    expect(await rows.evaluateAll((els) => els.map((e) => e.getAttribute('data-method')))).toEqual(['rtn', 'nf4'])
    await page.waitForSelector('[data-testid="levels-chart"][data-rendered="true"] canvas', { timeout: 30_000 })
    // 4-bit RTN and NF4 each give a group 16 levels.
    expect(await page.getAttribute('[data-testid="levels-chart"]', 'data-levels')).toBe('16,16')
    await rows.nth(1).click()
    await page.waitForSelector('[data-testid="error-heatmap-chart"][data-rendered="true"] canvas', { timeout: 30_000 })
    await page.waitForSelector('[data-testid="error-histogram-chart"][data-rendered="true"] canvas', { timeout: 30_000 })
    await page.locator('[data-testid="quant-compare"]').screenshot({ path: join(ARTIFACTS, 'plan-compare.png') })

    // A calibrated method's job shows progress and stops on Cancel.
    await page.selectOption('[data-testid="compare-method"]', 'gptq')
    await page.click('[data-testid="compare-add"]')
    expect(await page.locator('[data-testid="compare-choice"]').count()).toBe(3)
    await page.click('[data-testid="compare-run"]')
    const progress = page.locator('[data-testid="quant-compare"] [data-testid="progress"]')
    await progress.waitFor({ timeout: 10_000 })
    await progress.locator('button', { hasText: 'Cancel' }).click()
    await page.waitForSelector('[data-testid="job-cancelled"]', { timeout: 30_000 })
    expect(await page.innerText('[data-testid="job-cancelled"]')).toMatch(/with 3 methods: cancelled/)
    expect(await progress.count()).toBe(0)
    // The last finished comparison stays on screen.
    expect(await rows.count()).toBe(2)
  })

  it('evaluates the plan on 2 windows into the runs table under its name', async () => {
    await page.click('[data-testid="tab-evaluate"]')
    await page.waitForSelector('[data-testid="runs-empty"]', { timeout: 30_000 })
    // ctx beyond the model's 512 trained positions is flagged before running.
    await page.fill('[data-testid="eval-ctx"]', '1024')
    expect(await page.innerText('[data-testid="eval-ctx-warning"]')).toMatch(/max_position_embeddings \(512\)/)
    await page.fill('[data-testid="eval-ctx"]', '256')
    expect(await page.locator('[data-testid="eval-ctx-warning"]').count()).toBe(0)

    const index = await page.$eval('[data-testid="eval-variant"]', (s) => [...(s as HTMLSelectElement).options].findIndex((o) => o.dataset.testid === 'eval-variant-plan'))
    await page.selectOption('[data-testid="eval-variant"]', { index })
    await page.fill('[data-testid="eval-max-windows"]', '2')
    await page.check('[data-testid="eval-kld"]')
    await page.click('[data-testid="eval-run"]')
    const row = page.locator('[data-testid="run-row"]').first()
    await row.waitFor({ timeout: 90_000 })
    // 3-bit q weights move the next-token distribution: KLD above 0, top-1 agreement below 100 %.
    const kld = Number(await row.locator('[data-testid="run-kld"]').getAttribute('data-value'))
    expect(kld).toBeGreaterThan(1e-4)
    expect(kld).toBeLessThan(5)
    expect(await row.locator('td').allInnerTexts()).not.toContain('100.00 %')
    expect(await row.locator('[data-testid="run-variant"]').innerText()).toBe(PLAN_NAME)
    expect(Number(await row.locator('[data-testid="run-size"]').getAttribute('data-bytes'))).toBe(shownBytes)
    expect(Number(await row.locator('[data-testid="run-ppl"]').getAttribute('data-value'))).toBeGreaterThan(1)
    expect(await row.locator('td').nth(2).innerText()).toBe('256 × 2')

    // Generation: the base against the plan, side by side.
    await page.click('[data-testid="gen-base-vs-plan"]')
    await page.fill('[data-testid="gen-max-tokens"]', '8')
    await page.click('[data-testid="gen-run"]')
    await page.waitForSelector('[data-testid="gen-output"][data-done="true"] >> nth=1', { timeout: 90_000, state: 'attached' })
    const outputs = page.locator('[data-testid="gen-output"]')
    expect(await outputs.locator('[data-testid="gen-output-label"]').allInnerTexts()).toEqual(['base', PLAN_NAME])
    for (const t of await outputs.locator('[data-testid="gen-output-text"]').allInnerTexts()) expect(t.length).toBeGreaterThan(0)
    await page.screenshot({ path: join(ARTIFACTS, 'plan-evaluate.png'), fullPage: true })
    expect(pageProblems).toEqual([])
  })
})
