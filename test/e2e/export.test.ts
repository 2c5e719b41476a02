/**
 * End to end, browser mode in Chromium on the embedded default model: the Export dialog.
 * Plan llama.cpp's Q8_0 for the q column in the layer grid, open the Export dialog, pick GGUF
 * (8 tensors written exactly), export to a temporary path with the evaluation on 2 windows,
 * see the progress and then the report with a perplexity — equal to the inference service's
 * perplexity of the written GGUF, computed here independently — and open the export in
 * Quantscope: its summary (a GGUF file, its tensors) and its path in the URL.
 * Screenshots: test-artifacts/export-*.png.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import { evalPerplexity } from '../../worker/inference/inference-service'
import type { HostProcess } from '../helpers/browser-host-process'
import { ARTIFACTS, DEFAULT_MODEL as MODEL, REPO_ROOT as ROOT, openE2eSession, type E2eSession } from '../helpers/e2e-session'

const HELDOUT = join(ROOT, 'resources', 'eval', 'heldout.txt')

let dir: string
let outDir: string
let host: HostProcess
let page: Page
let pageProblems: string[] = []
let session: E2eSession | undefined

describe('Export dialog end to end', () => {
  beforeAll(async () => {
    session = await openE2eSession('export')
    ;({ dir, host, page, problems: pageProblems } = session)
    outDir = join(dir, 'out')
    await mkdir(outDir)
  })

  afterAll(async () => {
    await session?.close()
  })

  it('exports a Q8_0 plan to GGUF with progress, shows the measured perplexity, and opens the export', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-grid"]')
    await page.waitForSelector('[data-testid="plan-method"] option[value="ggml"]', { state: 'attached', timeout: 30_000 })
    await page.click('[data-testid="plan-col-q"]')
    await page.selectOption('[data-testid="plan-method"]', 'ggml')
    await page.click('[data-testid="plan-bits-8"]')
    expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'aria-label')).toMatch(/^block 0 q: 8 bits, ggml Q8_0/)
    await page.fill('[data-testid="plan-name"]', 'q8')

    await page.click('[data-testid="export-open"]')
    await page.waitForSelector('[data-testid="export-dialog"]')
    // The formats arrive from the engine a moment after the dialog opens.
    await page.waitForSelector('[data-testid="export-format-compressed-tensors"]', { timeout: 10_000 })
    // Every format is listed; one this build lacks is greyed.
    const formats = await page.$$eval('[data-testid^="export-format-"]', (els) => els.map((e) => [e.getAttribute('data-testid'), (e as HTMLButtonElement).disabled]))
    expect(formats.map(([id]) => id)).toEqual(['export-format-gguf', 'export-format-onnx', 'export-format-safetensors', 'export-format-compressed-tensors'])
    expect(formats.find(([id]) => id === 'export-format-gguf')![1]).toBe(false)
    await page.click('[data-testid="export-format-gguf"]')
    // ggml types are GGUF's own blocks: the 8 q weights are written exactly.
    await page.waitForSelector('[data-testid="export-support"][data-exact="8"][data-fallback="0"][data-unsupported="0"]', { timeout: 15_000 })
    // The default destination sits beside the source model; a relative path is refused; then a free temporary path.
    await page.waitForFunction(() => (document.querySelector('[data-testid="export-destination"]') as HTMLInputElement).value.endsWith('default-q8-gguf.gguf'), undefined, { timeout: 10_000 })
    await page.fill('[data-testid="export-destination"]', 'relative.gguf')
    await page.waitForSelector('[data-testid="export-destination-problem"]:has-text("must be an absolute path")', { timeout: 10_000 })
    const out = join(outDir, 'default-q8.gguf')
    await page.fill('[data-testid="export-destination"]', out)
    await page.waitForSelector('[data-testid="export-destination-problem"]', { state: 'detached', timeout: 10_000 })
    await page.fill('[data-testid="export-eval-windows"]', '2')
    await page.dispatchEvent('[data-testid="export-eval-windows"]', 'change')
    expect(await page.isChecked('[data-testid="export-evaluate"]')).toBe(true)
    await page.waitForSelector('[data-testid="export-start"]:not([disabled])', { timeout: 10_000 })
    await page.click('[data-testid="export-start"]')

    await page.waitForSelector('[data-testid="export-progress"]', { timeout: 10_000 })
    const report = await page.waitForSelector('[data-testid="export-report"]', { timeout: 90_000 })
    await page.screenshot({ path: join(ARTIFACTS, 'export-report.png'), fullPage: true })
    expect(await report.getAttribute('data-path')).toBe(out)
    expect((await readdir(outDir)).sort()).toEqual(['default-q8.gguf', 'default-q8.report.json'])
    const shownPpl = Number(await page.getAttribute('[data-testid="export-evaluation"]', 'data-ppl'))
    const shownKld = Number(await page.getAttribute('[data-testid="export-evaluation"]', 'data-kld'))
    expect(shownKld).toBeGreaterThan(0)
    // The written GGUF, evaluated here on its own: the same perplexity the dialog shows.
    const direct = await evalPerplexity(out, { file: HELDOUT }, { ctx: 256, maxWindows: 2, backend: 'wasm', threads: 2 })
    expect(Math.abs(shownPpl - direct.ppl) / direct.ppl).toBeLessThan(1e-9)
    expect(await page.innerText('[data-testid="export-ppl"]')).toMatch(/^\d+\.\d+$/)
    // The report beside the export carries the same figures.
    const onDisk = JSON.parse(await readFile(join(outDir, 'default-q8.report.json'), 'utf8')) as { evaluation: { ppl: number }; tensors: { writtenType: string; method: string | null }[] }
    expect(onDisk.evaluation.ppl).toBe(shownPpl)
    expect(onDisk.tensors.filter((t) => t.method !== null).map((t) => t.writtenType)).toEqual(Array(8).fill('Q8_0'))

    await page.click('[data-testid="export-open-model"]')
    await page.waitForSelector('[data-testid="overview-name"]:has-text("default-q8.gguf")', { timeout: 60_000 })
    expect(await page.locator('[data-testid="export-dialog"]').count()).toBe(0)
    expect(decodeURIComponent(new URL(page.url()).hash)).toContain(`model=${out}`)
    expect(await page.innerText('footer.status')).toMatch(/gguf/)
    await page.screenshot({ path: join(ARTIFACTS, 'export-opened.png'), fullPage: true })
    expect(pageProblems).toEqual([])
  })
})
