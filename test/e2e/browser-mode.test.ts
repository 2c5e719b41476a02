/**
 * End to end, browser mode in Chromium: the host as `npm start` runs it, a small llama-shaped
 * model, and the real engine. Open a bad file (readable error), open the model (overview),
 * compute the layer grid, click a tensor (histogram rendered, summary numbers equal to the
 * engine's and to a float64 reference). Screenshots go to test-artifacts/.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { BrowserContext, Page } from 'playwright-core'
import { launchChromiumPage } from '../helpers/chromium-page'
import WebSocket from 'ws'
import type { ServerMessage, TensorStats } from '../../worker/api/contract'
import { startHostProcess, type HostProcess } from '../helpers/browser-host-process'
import { float64Stats } from '../helpers/stats-float64'
import { encode, gaussian, llamaSpecs, writeTinyLlama } from '../helpers/tiny-llama'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'

const ARTIFACTS = resolve(import.meta.dirname, '..', '..', 'test-artifacts')
const TENSOR = 'model.layers.1.mlp.down_proj.weight'
/** Input channel of TENSOR scaled up, as LLM down projections often have one. */
const OUTLIER_CHANNEL = 37
const SIZES = { hidden: 64, layers: 4, heads: 4, kvHeads: 2, intermediate: 160, vocab: 128 }

/**
 * A small llama HF folder: BF16 linears and embeddings, F32 norms, one outlier input channel
 * in TENSOR. Returns the exact values stored (after BF16 rounding) for the reference.
 */
async function writeModel(dir: string): Promise<Map<string, Float64Array>> {
  await mkdir(dir, { recursive: true })
  const specs = llamaSpecs({ ...SIZES, dtype: 'BF16', tied: false, modelType: 'llama', seed: 7 }).map((s) =>
    s.shape.length === 1 ? { ...s, dtype: 'F32' } : s,
  )
  const values = new Map<string, Float64Array>()
  await writeSafetensorsFile(join(dir, 'model.safetensors'), specs, (spec, i) => {
    const n = spec.shape.reduce((a, b) => a * b, 1)
    const v = spec.shape.length === 1 ? Float64Array.from({ length: n }, (_, j) => 1 + 0.01 * j) : gaussian(n, 7000 + i, 0.05)
    if (spec.name === TENSOR) {
      const cols = spec.shape[1]!
      for (let r = 0; r < spec.shape[0]!; r++) v[r * cols + OUTLIER_CHANNEL]! *= 12
    }
    const bytes = encode(spec.dtype, v)
    values.set(spec.name, decodeStored(spec.dtype, bytes))
    return bytes
  })
  await writeFile(
    join(dir, 'config.json'),
    JSON.stringify({
      architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: SIZES.hidden, intermediate_size: SIZES.intermediate,
      num_hidden_layers: SIZES.layers, num_attention_heads: SIZES.heads, num_key_value_heads: SIZES.kvHeads, vocab_size: SIZES.vocab,
      rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 512, tie_word_embeddings: false, torch_dtype: 'bfloat16',
    }),
  )
  return values
}

/** Decodes F32/BF16 bytes independently of the engine (BF16 = top half of an F32). */
function decodeStored(dtype: string, bytes: Uint8Array): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const width = dtype === 'F32' ? 4 : 2
  const out = new Float64Array(bytes.byteLength / width)
  const f = new Float32Array(1)
  const u = new Uint32Array(f.buffer)
  for (let i = 0; i < out.length; i++) {
    u[0] = dtype === 'F32' ? dv.getUint32(i * 4, true) : dv.getUint16(i * 2, true) << 16
    out[i] = f[0]!
  }
  return out
}

let dir: string
let modelDir: string
let badFile: string
let values: Map<string, Float64Array>
let host: HostProcess
let browser: BrowserContext
let page: Page
/** Uncaught exceptions and console errors of the page (CSP violations show up here too). */
const pageProblems: string[] = []

/** One API call over the host's WebSocket, as the page makes it (token + own Origin). */
async function engineCall<T>(method: string, params: unknown): Promise<T> {
  const ws = new WebSocket(`ws://127.0.0.1:${host.port}/api/ws?token=${encodeURIComponent(host.token)}`, { origin: host.origin })
  try {
    await new Promise<void>((res, rej) => {
      ws.once('open', () => res())
      ws.once('error', rej)
    })
    return await new Promise<T>((res, rej) => {
      ws.on('message', (data) => {
        const msg = JSON.parse(data.toString()) as ServerMessage
        if (msg.kind !== 'response' || msg.id !== 1) return
        if (msg.ok) res(msg.result as T)
        else rej(new Error(msg.error.message))
      })
      ws.send(JSON.stringify({ id: 1, method, params }))
    })
  } finally {
    ws.close()
  }
}

function wsStatus(url: string, origin: string): Promise<number> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, { origin })
    ws.once('open', () => {
      ws.close()
      res(101)
    })
    ws.once('unexpected-response', (_req, r) => {
      res(r.statusCode ?? 0)
      ws.terminate()
    })
    ws.once('error', rej)
  })
}

async function dataValue(testId: string): Promise<number> {
  const v = await page.getAttribute(`[data-testid="${testId}"]`, 'data-value')
  if (v === null) throw new Error(`${testId} has no data-value`)
  return Number(v)
}

describe('browser mode end to end', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-e2e-'))
    modelDir = join(dir, 'tiny-llama-e2e')
    values = await writeModel(modelDir)
    // A safetensors file whose header claims more bytes than the file has.
    badFile = join(dir, 'bad.safetensors')
    const header = Buffer.alloc(8)
    header.writeBigUInt64LE(1_000_000n)
    await writeFile(badFile, Buffer.concat([header, Buffer.from('{"x":')]))
    await mkdir(ARTIFACTS, { recursive: true })

    // Started like `npm start -- PATH`: the page opens that model by itself.
    const startup = join(dir, 'startup-model')
    await writeTinyLlama(startup, { hidden: 16, layers: 1, intermediate: 32, vocab: 32 })
    host = await startHostProcess([startup, '--state-dir', join(dir, 'state'), '--cache-dir', join(dir, 'cache')])
    ;({ browser, page } = await launchChromiumPage(join(dir, 'chromium'), pageProblems))
  })

  afterAll(async () => {
    await browser?.close().catch(() => {})
    await host?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('rejects WebSockets without the token or from a foreign origin', async () => {
    const base = `ws://127.0.0.1:${host.port}/api/ws`
    expect(await wsStatus(base, host.origin)).toBe(401)
    expect(await wsStatus(`${base}?token=${encodeURIComponent(host.token)}`, 'http://evil.example')).toBe(403)
    expect(await wsStatus(`${base}?token=${encodeURIComponent(host.token)}`, host.origin)).toBe(101)
  })

  it('opens the start-up model, then shows a readable error for a bad model file', async () => {
    await page.goto(host.url)
    await page.waitForSelector('.conn.open', { timeout: 30_000 })
    // Start-up done (the embedded default model, once it exists, is open by then).
    await page.waitForSelector('.app[data-ready="true"]', { timeout: 60_000 })
    expect(await page.innerText('[data-testid="overview-name"]')).toBe('startup-model')
    // The token left the address bar once the page stored it.
    expect(page.url()).not.toContain('token=')
    await page.fill('[data-testid="model-path"]', badFile)
    await page.click('[data-testid="open-model"]')
    const panel = page.locator('[data-testid="error-panel"]')
    await panel.waitFor({ timeout: 30_000 })
    const text = await panel.innerText()
    expect(text).toContain('This model cannot be read')
    expect(text).toContain(badFile)
    await page.screenshot({ path: join(ARTIFACTS, 'browser-mode-error.png') })
  })

  it('opens a model and shows the overview', async () => {
    await page.fill('[data-testid="model-path"]', modelDir)
    await page.click('[data-testid="open-model"]')
    await page.waitForSelector('[data-testid="overview-name"]:has-text("tiny-llama-e2e")', { timeout: 30_000 })
    let params = 0
    let bytes = 0
    for (const [name, v] of values) {
      params += v.length
      bytes += v.length * (name.endsWith('norm.weight') ? 4 : 2)
    }
    expect(await dataValue('overview-params')).toBe(params)
    expect(await dataValue('overview-bytes')).toBe(bytes)
    expect(await page.innerText('[data-testid="overview-architecture"]')).toBe('llama')
    expect(await page.innerText('[data-testid="overview-blocks"]')).toBe('4')
    const dtypes = await page.innerText('[data-testid="overview-dtypes"]')
    expect(dtypes).toContain('BF16')
    expect(dtypes).toContain('F32')
    expect(await page.locator('[data-testid="error-panel"]').count()).toBe(0)
    await page.screenshot({ path: join(ARTIFACTS, 'browser-mode-overview.png') })

    // The model is now among the recent models, and the tree search finds tensors.
    await page.click('[data-testid="recent-toggle"]')
    expect(await page.innerText('.recent-menu')).toContain(modelDir)
    await page.keyboard.press('Escape')
    await page.fill('[data-testid="tree-search"]', 'down_proj')
    expect(await page.locator('[data-testid="tree-tensor"]').count()).toBe(4)
    await page.fill('[data-testid="tree-search"]', '')
  })

  it('computes the layer grid', async () => {
    await page.click('[data-testid="tab-grid"]')
    // The grid is HTML: coloured once the statistics arrive.
    await page.waitForSelector('[data-testid="grid-chart"][data-colour-by="absmax"]:not([data-colour-map="none"])', { timeout: 60_000 })
    await page.click('[data-testid="grid-stat-kurtosis"]')
    await page.waitForSelector('[data-testid="grid-chart"][data-colour-by="kurtosis"]:not([data-colour-map="none"])', { timeout: 30_000 })
    await page.screenshot({ path: join(ARTIFACTS, 'browser-mode-grid.png') })
  })

  it('inspects a tensor: histogram rendered, summary equal to the engine and a float64 reference', async () => {
    await page.click('[data-testid="tree-block"]:has-text("Block 1")')
    await page.click(`[data-testid="tree-tensor"][data-name="${TENSOR}"]`)
    await page.waitForSelector('[data-testid="histogram-chart"][data-rendered="true"] canvas', { timeout: 60_000 })
    await page.waitForSelector('[data-testid="channel-chart"][data-rendered="true"] canvas', { timeout: 30_000 })
    await page.waitForSelector('[data-testid="heatmap-chart"][data-rendered="true"] canvas', { timeout: 30_000 })
    const canvas = await page.$eval('[data-testid="histogram-chart"] canvas', (c) => ({ w: (c as HTMLCanvasElement).width, h: (c as HTMLCanvasElement).height }))
    expect(canvas.w).toBeGreaterThan(100)
    expect(canvas.h).toBeGreaterThan(100)

    const { modelId } = await engineCall<{ modelId: string }>('openModel', { path: modelDir })
    const engine = await engineCall<TensorStats>('tensorStats', { modelId, tensor: TENSOR, jobId: 'e2e-check' })
    for (const key of ['count', 'min', 'max', 'mean', 'std', 'absmax', 'kurtosis', 'zeros', 'nan', 'inf'] as const) {
      expect(await dataValue(`stat-${key}`), key).toBe(engine[key])
    }

    const v = values.get(TENSOR)!
    const ref = float64Stats(v, 64, 160, { bins: 256, topK: 32, heatmapSize: 128 })
    expect(await dataValue('stat-count')).toBe(ref.count)
    expect(await dataValue('stat-absmax')).toBe(ref.absmax)
    expect(await dataValue('stat-min')).toBe(ref.min)
    expect(await dataValue('stat-max')).toBe(ref.max)
    // WASM kernel contract (stats-kernels.test): moments within 1e-6 relative of float64.
    expect(Math.abs((await dataValue('stat-mean')) - ref.mean)).toBeLessThan(1e-6 * ref.std)
    expect(Math.abs((await dataValue('stat-std')) - ref.std) / ref.std).toBeLessThan(1e-6)
    expect(Math.abs((await dataValue('stat-kurtosis')) - ref.kurtosis) / ref.kurtosis).toBeLessThan(1e-6)

    await page.screenshot({ path: join(ARTIFACTS, 'browser-mode.png') })

    // The injected input channel is flagged as an outlier.
    await page.click('[data-testid="channel-axis-cols"]')
    await page.waitForSelector('[data-testid="channel-chart"][data-rendered="true"]', { timeout: 30_000 })
    const outliers = await page.innerText('[data-testid="outlier-summary"]')
    expect(outliers).toMatch(/^1 outlier channel /)
    expect(outliers).toContain(`#${OUTLIER_CHANNEL} `)
    await page.screenshot({ path: join(ARTIFACTS, 'browser-mode-outliers.png') })

  })

  it('redraws the histogram with linear counts and jumps from a grid cell to its tensor', async () => {
    await page.click('[data-testid="channel-axis-rows"]')
    await page.click('[data-testid="log-counts"]')
    await page.waitForSelector('[data-testid="histogram-chart"][data-rendered="true"]', { timeout: 30_000 })
    expect(await page.isChecked('[data-testid="log-counts"]')).toBe(false)

    // Select the grid cell of block 2 · q (ctrl-click: no bit change) and press i: the inspector opens on that tensor.
    await page.click('[data-testid="tab-grid"]')
    await page.click('[data-testid="plan-cell-2-q"]', { modifiers: ['Control'] })
    await page.keyboard.press('i')
    await page.waitForSelector('[data-testid="inspector-name"]:has-text("model.layers.2.self_attn.q_proj.weight")', { timeout: 30_000 })
    await page.waitForSelector('[data-testid="histogram-chart"][data-rendered="true"]', { timeout: 60_000 })
    expect(pageProblems).toEqual([])
  })
})
