/**
 * End to end, browser mode in Chromium on the embedded default model: an evaluation with
 * k-means A4 activations (4 outliers per side) and a 3-bit past-only KV cache shows both
 * settings in the runs table; the activation
 * view draws each linear input's histograms with one centroid marker per codebook entry at
 * the centroid values the engine returned; the KV view draws the four K/V heatmaps and the
 * memory chart (the perplexity-vs-KV-bits chart leaves the A4 run out).
 * Screenshots: test-artifacts/actkv.png, actkv-activations.png.
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

describe('activation and KV views end to end', () => {
  beforeAll(async () => {
    session = await openE2eSession('actkv')
    ;({ host, page, problems: pageProblems } = session)
  })

  afterAll(async () => {
    await session?.close()
  })

  it('evaluates with k-means A4 and KV 3-bit past-only: the runs table shows both settings', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-evaluate"]')
    await page.waitForSelector('[data-testid="runs-empty"]', { timeout: 30_000 })
    await page.fill('[data-testid="eval-ctx"]', '128')
    await page.fill('[data-testid="eval-max-windows"]', '2')
    await page.selectOption('[data-testid="eval-act-kind"]', 'kmeans')
    expect(await page.inputValue('[data-testid="eval-act-bits"]')).toBe('4')
    await page.fill('[data-testid="eval-act-outliers"]', '4')
    // 4 calibration windows of 256 tokens instead of the CLI's 32 keep this test short
    expect(await page.inputValue('[data-testid="eval-act-calib-windows"]')).toBe('32')
    await page.fill('[data-testid="eval-act-calib-windows"]', '4')
    expect(await page.innerText('[data-testid="eval-act-note"]')).toMatch(/our choice.*leaves it open[\s\S]*9\.67× speed-up and 229\.5×.*quoted.*not measured/)
    await page.selectOption('[data-testid="eval-kv-bits"]', '3')
    await page.check('[data-testid="eval-kv-past-only"]')
    expect(await page.isChecked('[data-testid="eval-kv-smooth"]')).toBe(false)
    await page.click('[data-testid="eval-run"]')
    await page.locator('[data-testid="run-row"]').first().waitFor({ timeout: 80_000 })
    const rows = page.locator('[data-testid="run-row"]')
    const newest = rows.first()
    expect(await newest.locator('[data-testid="run-act"]').innerText()).toBe('k-means A4 · 4 outl./side')
    expect(await newest.locator('[data-testid="run-act"]').getAttribute('title')).toBe('codebooks fitted on 1024 calibration tokens')
    expect(await newest.locator('[data-testid="run-kv"]').innerText()).toBe('KV3 past-only')
    expect(await newest.locator('[data-testid="run-variant"]').innerText()).toBe('base')
    // a quantized run is no full-precision base for ΔPPL
    expect(await newest.locator('[data-testid="run-delta"]').innerText()).toBe('no base run')
    // Generation with the same settings (the codebooks come from their cache): the echo names both.
    await page.fill('[data-testid="gen-max-tokens"]', '4')
    await page.check('[data-testid="gen-with-quant"]')
    await page.click('[data-testid="gen-run"]')
    await page.waitForSelector('[data-testid="gen-output"][data-done="true"]', { timeout: 60_000 })
    expect(await page.innerText('[data-testid="gen-quant-echo"]')).toBe(' · k-means A4 · 4 outl./side, KV3 past-only')
  }, 180_000)

  it('activation view: histograms with one centroid marker per codebook entry', async () => {
    await page.click('[data-testid="actkv-tab-act"]')
    await page.selectOption('[data-testid="act-layer"]', '2')
    await page.selectOption('[data-testid="act-bits"]', '3')
    await page.fill('[data-testid="act-windows"]', '2')
    await page.click('[data-testid="act-run"]')
    await page.waitForSelector('[data-testid="act-result"]', { timeout: 60_000 })
    const inputs = page.locator('[data-testid="act-input"]')
    expect(await inputs.count()).toBe(4)
    expect(await inputs.first().getAttribute('data-id')).toBe('L2.attn_in')
    for (let i = 0; i < 4; i++) {
      const markers = inputs.nth(i).locator('[data-testid="centroid-marker"]')
      expect(await markers.count()).toBe(8)
      const values = (await markers.evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-value')))))
      for (let j = 1; j < values.length; j++) expect(values[j]!).toBeGreaterThan(values[j - 1]!)
      expect(Math.max(...values.map(Math.abs))).toBeLessThanOrEqual(1)
      const share = Number(await inputs.nth(i).locator('[data-testid="act-outlier-share"]').getAttribute('data-values'))
      expect(share).toBeCloseTo(8 / (i === 3 ? 768 : 256), 12)
    }
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="act-kmeans-chart"]')].every((e) => e.getAttribute('data-rendered') === 'true'), undefined, { timeout: 20_000 })
    await page.locator('[data-testid="activation-view"]').screenshot({ path: join(ARTIFACTS, 'actkv-activations.png') })
  }, 90_000)

  it('KV view: K/V heatmaps raw and smoothed, perplexity against KV bits, memory', async () => {
    await page.click('[data-testid="actkv-tab-kv"]')
    await page.selectOption('[data-testid="kv-layer"]', '1')
    await page.selectOption('[data-testid="kv-head"]', '3')
    await page.fill('[data-testid="kv-tokens"]', '96')
    await page.click('[data-testid="kv-run"]')
    await page.waitForSelector('[data-testid="kv-result"]', { timeout: 60_000 })
    expect(await page.getAttribute('[data-testid="kv-result"]', 'data-head')).toBe('3')
    for (const id of ['k-raw', 'k-smoothed', 'v-raw', 'v-smoothed']) {
      await page.waitForSelector(`[data-testid="kv-heatmap-${id}"][data-rendered="true"]`, { timeout: 20_000 })
    }
    // the perplexity-vs-KV-bits chart takes KV runs without activation quant only (unit-tested in actkv-kv-curve)
    expect(await page.getAttribute('[data-testid="kv-ppl"]', 'data-points')).toBe('0')
    await page.waitForSelector('[data-testid="kv-memory-chart"][data-rendered="true"]', { timeout: 20_000 })
    await page.screenshot({ path: join(ARTIFACTS, 'actkv.png'), fullPage: true })
    expect(pageProblems).toEqual([])
  }, 90_000)
})
