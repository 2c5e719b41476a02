/**
 * End to end, browser mode in Chromium on the embedded default model: "Start from llama.cpp
 * preset…" in the layer grid's toolbar. With an unsaved edit in the plan, Apply asks first
 * (Cancel keeps the edit); Replace puts llama-quantize's Q4_K_M in the grid — Q6_K for attn_v
 * and ffn_down of the layers use_more_bits picks (0, 3, 6, 7 of 8, written out here), Q4_K for
 * every other weight, the same as the library's preset plan — names the plan after the preset
 * and shows its exact size; an edit from there is a ggml type again and makes Apply ask again.
 * Screenshot: test-artifacts/preset-q4km.png.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { classifyTensor } from '../../worker/model/logical-model'
import { resolvePlanFor } from '../../worker/plan/apply'
import { planFromLlamaCppPreset } from '../../worker/plan/llama-cpp-presets'
import { planSize } from '../../worker/plan/size'
import type { HostProcess } from '../helpers/browser-host-process'
import { ARTIFACTS, DEFAULT_MODEL as MODEL, openE2eSession, type E2eSession } from '../helpers/e2e-session'


let host: HostProcess
let page: Page
let model: OpenedModel
let pageProblems: string[] = []
let session: E2eSession | undefined

interface Cell {
  tensor: string
  bits: number
  method: string
  detail: string
}

async function cells(): Promise<Cell[]> {
  return page.$$eval('[data-testid^="plan-cell-"]', (els) =>
    els.map((e) => ({
      tensor: e.getAttribute('data-tensor')!,
      bits: Number(e.getAttribute('data-bits')),
      method: e.getAttribute('data-method')!,
      detail: e.querySelector('.detail')!.textContent!.trim(),
    })),
  )
}

describe('llama.cpp preset in the plan editor', () => {
  beforeAll(async () => {
    model = await openModel(MODEL)
    session = await openE2eSession('preset')
    ;({ host, page, problems: pageProblems } = session)
  })

  afterAll(async () => {
    await session?.close()
    await model?.close()
  })

  it('replaces an edited plan with Q4_K_M after asking, shows its ggml types per weight, and edits from there', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    await page.click('[data-testid="tab-grid"]')
    await page.waitForSelector('[data-testid="plan-method"] option[value="ggml"]', { state: 'attached', timeout: 30_000 })
    await page.waitForSelector('[data-testid="preset-select"] option[value="Q4_K_M"]', { state: 'attached', timeout: 30_000 })
    // llama-quantize's default mix is preselected; every preset is offered.
    expect(await page.inputValue('[data-testid="preset-select"]')).toBe('Q4_K_M')
    expect(await page.$$eval('[data-testid="preset-select"] option', (os) => os.map((o) => (o as HTMLOptionElement).value))).toEqual(
      expect.arrayContaining(['Q2_K', 'Q3_K_M', 'Q4_K_M', 'Q5_K_M', 'Q8_0']),
    )

    // An unsaved edit: Apply asks, Cancel keeps it.
    await page.click('[data-testid="plan-cell-0-q"]')
    expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'data-bits')).toBe('8')
    await page.click('[data-testid="preset-apply"]')
    await page.waitForSelector('[data-testid="preset-confirm"]', { timeout: 5_000 })
    expect(await page.innerText('[data-testid="preset-confirm"]')).toMatch(/Replace the current plan \(untitled plan, 1 planned weight, unsaved edits\) with llama\.cpp Q4_K_M\?/)
    await page.click('[data-testid="preset-confirm-cancel"]')
    expect(await page.locator('[data-testid="preset-confirm"]').count()).toBe(0)
    expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'data-bits')).toBe('8')
    expect(await page.getAttribute('[data-testid="plan-cell-0-q"]', 'data-method')).toBe('rtn')

    await page.click('[data-testid="preset-apply"]')
    await page.click('[data-testid="preset-confirm-replace"]')
    await page.waitForSelector('[data-testid="preset-applied"][data-preset="Q4_K_M"]', { timeout: 15_000 })

    // llama.cpp's rules written out for 8 blocks: use_more_bits = first and last eighth (0, 7) and every third between (3, 6).
    const bumped = new Set([0, 3, 6, 7])
    const grid = await cells()
    expect(grid.length).toBe(8 * 7)
    const library = planFromLlamaCppPreset(model, 'Q4_K_M')
    for (const c of grid) {
      const { layer, role } = classifyTensor(c.tensor)
      const type = (role === 'v' || role === 'down') && bumped.has(layer!) ? 'Q6_K' : 'Q4_K'
      expect({ tensor: c.tensor, bits: c.bits, method: c.method, detail: c.detail }).toEqual({ tensor: c.tensor, bits: type === 'Q6_K' ? 6 : 4, method: 'ggml', detail: type })
      expect(library.tensors[c.tensor]).toMatchObject({ method: 'ggml', params: { type } })
    }
    expect(grid.filter((c) => c.detail === 'Q6_K').length).toBe(8)
    expect(await page.inputValue('[data-testid="plan-name"]')).toBe('llama.cpp Q4_K_M')
    // The size shown is the exact size of the library's plan (embedding and lm_head included).
    const size = planSize(model, resolvePlanFor(model, library, 'x'))
    const line = await page.innerText('[data-testid="preset-applied"]')
    expect(line).toMatch(/^llama\.cpp Q4_K_M: 49 × Q4_K · 9 × Q6_K \([\d.]+ bits per planned weight\)\./)
    expect(Number(/\(([\d.]+) bits/.exec(line)![1])).toBeCloseTo(size.bitsPerWeight!, 2)
    await page.waitForSelector('[data-testid="plan-size"][data-pending="false"]:not([data-bytes=""])', { timeout: 15_000 })
    const shown = Number(await page.getAttribute('[data-testid="plan-size"]', 'data-bytes'))
    expect(shown).toBe(size.bytes)
    await page.screenshot({ path: join(ARTIFACTS, 'preset-q4km.png'), fullPage: true })

    // Unchanged, the preset can be replaced without asking; edited (Q4_K → Q3_K: the cell stays a ggml type), Apply asks again.
    await page.click('[data-testid="plan-cell-2-q"]')
    expect(await page.getAttribute('[data-testid="plan-cell-2-q"]', 'aria-label')).toMatch(/^block 2 q: 3 bits, ggml Q3_K/)
    await page.click('[data-testid="preset-apply"]')
    await page.waitForSelector('[data-testid="preset-confirm"]', { timeout: 5_000 })
    expect(await page.innerText('[data-testid="preset-confirm"]')).toMatch(/\(llama\.cpp Q4_K_M, 58 planned weights, unsaved edits\)/)
    await page.click('[data-testid="preset-confirm-cancel"]')
    expect(await page.getAttribute('[data-testid="plan-cell-2-q"]', 'data-bits')).toBe('3')
    expect(pageProblems).toEqual([])
  })
})
