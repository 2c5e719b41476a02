/**
 * The dequantised Hugging Face export, measured by its real consumer: on the GPU machine,
 * Hugging Face transformers loaded folders written by `export --format safetensors --dtype fp32`
 * and computed their perplexity on the held-out text
 * (resources/models/train/make_export_reference.py → test/fixtures/reference/export-reference.json).
 *
 * Here the same command must write byte-identical files (so transformers measured exactly what
 * we write), and Quantscope's figures — the plan evaluated in the app, and the written folder
 * reopened — must equal transformers' within 0.1% (the issue's bound; both sides are float32,
 * so the test holds them to 1e-4).
 */
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../helpers/run-cli'

interface ExportReference {
  model: string
  plan_source: string
  files_sha256: Record<string, string>
  windows: number
  ppl: number
  /** NLL of the first 16 windows: what the test evaluates (all 388 take a minute of CPU each). */
  window_nll_prefix: number[]
}

const root = resolve(import.meta.dirname, '..', '..')
const fixture = JSON.parse(await readFile(join(root, 'test/fixtures/reference/export-reference.json'), 'utf8')) as {
  heldout_sha256: string
  exports: Record<string, ExportReference>
}
const HELDOUT = join(root, 'resources/eval/heldout.txt')
const RELATIVE_TOLERANCE = 1e-4

const prefixPpl = (ref: ExportReference): number => Math.exp(ref.window_nll_prefix.reduce((a, b) => a + b, 0) / ref.window_nll_prefix.length)

async function evalPpl(args: string[], windows: number): Promise<{ ppl: number; windows: number }> {
  const r = await runCli(['eval', ...args, '--text', HELDOUT, '--ctx', '256', '--max-windows', String(windows), '--json'])
  expect(r.code, r.stderr).toBe(0)
  return JSON.parse(r.stdout) as { ppl: number; windows: number }
}

describe('dequantised safetensors export vs Hugging Face transformers (GPU reference)', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-export-tf-'))
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('the fixture was made from this held-out text', async () => {
    const sha = createHash('sha256').update(await readFile(HELDOUT)).digest('hex')
    expect(sha).toBe(fixture.heldout_sha256)
  })

  for (const [name, ref] of Object.entries(fixture.exports)) {
    it(`${name}: same bytes as transformers read, and the app's perplexity within 1e-4 of transformers'`, { timeout: 180_000 }, async () => {
      const spec = ref.plan_source.replace(/^spec /, '')
      const model = join(root, 'resources', ref.model)
      const out = join(dir, name)
      const exported = await runCli(['export', model, '--quant', spec, '--format', 'safetensors', '--dtype', 'fp32', '--out', out, '--json'])
      expect(exported.code, exported.stderr).toBe(0)
      for (const [file, sha] of Object.entries(ref.files_sha256)) {
        const got = createHash('sha256').update(await readFile(join(out, file))).digest('hex')
        expect(got, `${name}/${file}`).toBe(sha)
      }
      const windows = ref.window_nll_prefix.length
      const expected = prefixPpl(ref)
      const planned = await evalPpl([model, '--quant', spec], windows)
      const reopened = await evalPpl([out], windows)
      expect(planned.windows).toBe(windows)
      expect(reopened.windows).toBe(windows)
      expect(Math.abs(planned.ppl / expected - 1)).toBeLessThan(RELATIVE_TOLERANCE)
      expect(Math.abs(reopened.ppl / expected - 1)).toBeLessThan(RELATIVE_TOLERANCE)
    })
  }
})
