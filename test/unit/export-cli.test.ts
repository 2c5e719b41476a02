/** The `export` command: one JSON document on stdout with path, bytes per section and seconds; clear errors. */
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../helpers/run-cli'

const cli = runCli

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-cli-export-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('cli export', () => {
  it('--json prints the report: path, files, bytes per section adding up to the files, seconds', async () => {
    const out = join(dir, 'ct')
    const r = await cli(['export', 'resources/models/default', '--quant', 'rtn:bits=4,group=128,sym=true', '--format', 'compressed-tensors', '--out', out, '--json'])
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.path).toBe(out)
    let onDisk = 0
    for (const f of await readdir(out)) onDisk += (await stat(join(out, f))).size
    expect(report.bytes).toBe(onDisk)
    expect(Object.values(report.sections as Record<string, number>).reduce((a, b) => a + b, 0)).toBe(onDisk)
    expect(report.seconds).toBeGreaterThan(0)
    expect(JSON.parse(await readFile(join(dir, 'ct.report.json'), 'utf8')).bytes).toBe(onDisk)
    expect(r.stderr).toContain('note: weight_scale is stored in fp16')
  }, 60_000)

  it('names unknown formats (every named format is built now), and bad flags, in one line', async () => {
    const missing = await cli(['export', 'resources/models/default', '--quant', 'rtn', '--format', 'tflite', '--out', join(dir, 'x')])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/error: .*unknown export format 'tflite' \(formats: gguf, onnx, safetensors, compressed-tensors\)/)
    const dtype = await cli(['export', 'resources/models/default', '--quant', 'rtn', '--format', 'safetensors', '--out', join(dir, 'y'), '--dtype', 'fp8'])
    expect(dtype.code).toBe(2)
    expect(dtype.stderr).toMatch(/--dtype must be bf16, fp16, fp32, got 'fp8'/)
    expect(await readdir(dir)).not.toContain('x')
  }, 60_000)
})
