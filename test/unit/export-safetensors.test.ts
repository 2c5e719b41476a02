/**
 * The export foundation and the dequantised Hugging Face folder, on the default model:
 * values written are the plan's dequantised values bit for bit (fp32), the reopened export
 * evaluates to the in-app perplexity of the plan, bf16 rounding is measured, shards carry an
 * index, and a full disk, a cancel or a destination inside the model leave nothing behind.
 */
import { execFileSync } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OpenedModel } from '../../worker/formats/contract'
import { bf16ToF32 } from '../../worker/formats/dtypes'
import { openModel } from '../../worker/formats/open-model'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'
import type { OutputFile } from '../../worker/io/output-file'
import { openOutputFile } from '../../worker/io/output-file'
import { ExportError, type ExportReport } from '../../worker/export/contract'
import { exportFormat } from '../../worker/export/registry'
import { runExport } from '../../worker/export/run-export'
import { createOverrides, readOrientedWeight, resolvePlanFor } from '../../worker/plan/apply'
import { planFromSpec } from '../../worker/plan/plan'
import { quantizeRtn, rtnSchema } from '../../worker/quant/rtn'
import * as v from 'valibot'

const DEFAULT = resolve('resources/models/default')
const HELDOUT = resolve('resources/eval/heldout.txt')
const SPEC = 'rtn:bits=4,group=128'

let dir: string
let model: OpenedModel

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-export-st-'))
  model = await openModel(DEFAULT)
})
afterAll(async () => {
  await model.close()
  await rm(dir, { recursive: true, force: true })
})

function exportTo(out: string, options = {}, hooks = {}, spec = SPEC): Promise<ExportReport> {
  return runExport({ model, modelPath: DEFAULT, plan: planFromSpec(model, spec), planSource: `spec ${spec}`, format: 'safetensors', out, options }, hooks)
}

/** The weight as the plan quantizes it, computed here from the source rows with the method itself. */
async function plannedValues(name: string): Promise<Float32Array> {
  const entry = resolvePlanFor(model, planFromSpec(model, SPEC), 'test').find((e) => e.tensor.name === name)!
  const w = await readOrientedWeight(model, entry)
  return quantizeRtn(w, entry.rows, entry.cols, v.parse(rtnSchema, { bits: 4, group: 128 })).dequantizeRows(0, entry.rows)
}

describe('dequantised safetensors export', () => {
  it('writes the plan\'s dequantised values bit for bit in fp32 and the rest as stored, with config and tokenizer', async () => {
    const out = join(dir, 'fp32')
    const report = await exportTo(out, { dtype: 'fp32' })
    expect((await readdir(out)).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'])
    expect(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).dtype).toBe('float32')
    const reopened = await openModel(out)
    try {
      for (const name of ['model.layers.0.self_attn.q_proj.weight', 'model.layers.7.mlp.down_proj.weight']) {
        const got = await reopened.readRows(name, 0, reopened.tensors.find((t) => t.name === name)!.shape[0]!)
        expect(Buffer.from(got.buffer).equals(Buffer.from((await plannedValues(name)).buffer))).toBe(true)
      }
      // Kept tensors: the stored bf16 values, widened exactly.
      const embed = await reopened.readRows('model.embed_tokens.weight', 0, 8192)
      expect(Buffer.from(embed.buffer).equals(Buffer.from((await model.readRows('model.embed_tokens.weight', 0, 8192)).buffer))).toBe(true)
    } finally {
      await reopened.close()
    }
    // The report: every tensor once, quantized ones exact, sections summing to the files' bytes.
    expect(report.tensors).toHaveLength(model.tensors.length)
    expect(report.tensors.filter((t) => t.method !== null).every((t) => t.support === 'exact' && t.writtenType === 'F32')).toBe(true)
    expect(Object.values(report.sections).reduce((a, b) => a + b, 0)).toBe(report.bytes)
    const onDisk = JSON.parse(await readFile(join(dir, 'fp32.report.json'), 'utf8')) as ExportReport
    expect(onDisk.plan.source).toBe(`spec ${SPEC}`)
    expect(onDisk.tensors.find((t) => t.name === 'model.layers.0.self_attn.q_proj.weight')).toMatchObject({ method: 'rtn:bits=4,group=128,sym=false,clip=none', bytes: 256 * 256 * 4 })
  })

  it('reopened, evaluates to the in-app perplexity of the plan on the same 4 windows', async () => {
    const out = join(dir, 'fp32')
    const tok = await openTokenizer(model)
    const ids = await tokensOf({ file: HELDOUT }, async () => tok)
    const plan = planFromSpec(model, SPEC)
    const inApp = await evaluatePerplexity(model, ids, { ctx: 256, maxWindows: 4, overrides: await createOverrides(model, { plan, source: 'test' }) })
    const reopened = await openModel(out)
    try {
      const exported = await evaluatePerplexity(reopened, ids, { ctx: 256, maxWindows: 4 })
      const base = await evaluatePerplexity(model, ids, { ctx: 256, maxWindows: 4 })
      expect(Math.abs(exported.ppl - inApp.ppl) / inApp.ppl).toBeLessThanOrEqual(1e-5)
      // …and the plan did change the model (the comparison could not pass by exporting the base).
      expect(Math.abs(base.ppl - inApp.ppl) / inApp.ppl).toBeGreaterThan(1e-3)
    } finally {
      await reopened.close()
    }
  }, 120_000)

  it('bf16 output reports the rounding of the dequantised values, equal to an independent count', async () => {
    const out = join(dir, 'bf16')
    const report = await exportTo(out)
    expect(JSON.parse(await readFile(join(out, 'config.json'), 'utf8')).dtype).toBe('bfloat16')
    const name = 'model.layers.3.mlp.up_proj.weight'
    const planned = await plannedValues(name)
    const reopened = await openModel(out)
    try {
      const got = await reopened.readRows(name, 0, 768)
      let max = 0
      let changed = 0
      let notNearest = 0
      for (let i = 0; i < planned.length; i++) {
        const d = Math.abs(got[i]! - planned[i]!)
        if (d > 0) changed++
        max = Math.max(max, d)
        if (d === 0) continue
        // Nearest bf16: neither bf16 neighbour is closer.
        const bits = new Uint32Array(new Float32Array([got[i]!]).buffer)[0]! >>> 16
        if (Math.abs(bf16ToF32(bits + 1) - planned[i]!) < d || Math.abs(bf16ToF32(bits - 1) - planned[i]!) < d) notNearest++
      }
      expect(notNearest).toBe(0)
      const t = report.tensors.find((x) => x.name === name)!
      expect(changed).toBeGreaterThan(0)
      expect(t).toMatchObject({ support: 'fallback', writtenType: 'BF16', maxAbsError: max })
      expect(t.note).toContain(`${changed} of ${planned.length} changed`)
      expect(report.notes.join(' ')).toContain('--dtype fp32')
    } finally {
      await reopened.close()
    }
  })

  it('shards past the shard limit with an index that reopens to the same tensors', async () => {
    const out = join(dir, 'sharded')
    await exportTo(out, { dtype: 'fp32', shardBytes: 8_000_000 })
    const files = (await readdir(out)).filter((f) => f.startsWith('model'))
    expect(files).toContain('model.safetensors.index.json')
    const shards = files.filter((f) => f.endsWith('.safetensors'))
    expect(shards.length).toBeGreaterThan(3)
    expect(shards[0]).toBe(`model-00001-of-${String(shards.length).padStart(5, '0')}.safetensors`)
    const index = JSON.parse(await readFile(join(out, 'model.safetensors.index.json'), 'utf8'))
    expect(Object.keys(index.weight_map)).toHaveLength(model.tensors.length)
    const single = await openModel(join(dir, 'fp32'))
    const sharded = await openModel(out)
    try {
      for (const t of single.tensors) expect(Buffer.from(await sharded.readRaw(t.name)).equals(Buffer.from(await single.readRaw(t.name))), t.name).toBe(true)
    } finally {
      await single.close()
      await sharded.close()
    }
  })
})

describe('export safety', () => {
  const leftovers = async (folder: string, name: string) => (await readdir(folder)).filter((f) => f.startsWith(name))

  it('a disk that fills up mid-export leaves no partial output and says why', async () => {
    const folder = join(dir, 'full')
    await mkdir(folder)
    let budget = 5_000_000
    const fullDisk = async (path: string): Promise<OutputFile> => {
      const real = await openOutputFile(path)
      return {
        async write(bytes) {
          if (bytes.length > budget) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' })
          budget -= bytes.length
          await real.write(bytes)
        },
        close: () => real.close(),
      }
    }
    const err = await exportTo(join(folder, 'out'), { dtype: 'fp32' }, { openOutput: fullDisk }).catch((e) => e)
    expect(err).toBeInstanceOf(ExportError)
    expect(err.message).toMatch(/disk full while writing the export \(ENOSPC: no space left on device, write\); the partial output was removed/)
    expect(await readdir(folder)).toEqual([])
  })

  it('a real full file system (1 MB tmpfs) gives the same clean failure', async (ctx) => {
    const mnt = join(dir, 'tmpfs')
    await mkdir(mnt)
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'ignore' })
    } catch {
      ctx.skip() // not root, or no mount permission in this container
    }
    try {
      const err = await exportTo(join(mnt, 'out'), { dtype: 'fp32' }).catch((e) => e)
      expect(err).toBeInstanceOf(ExportError)
      expect(err.message).toMatch(/disk full while writing the export \(ENOSPC: no space left/)
      expect(await readdir(mnt)).toEqual([])
    } finally {
      execFileSync('umount', [mnt])
    }
  })

  it('a cancel mid-export leaves no partial output and says so', async () => {
    const folder = join(dir, 'cancel')
    await mkdir(folder)
    const controller = new AbortController()
    const err = await exportTo(join(folder, 'out'), {}, { signal: controller.signal, onProgress: (p: { stage: string; done: number }) => p.stage === 'writing' && p.done === 10 && controller.abort() }).catch((e) => e)
    expect(err).toBeInstanceOf(ExportError)
    expect(err.message).toMatch(/cancelled/)
    expect(await leftovers(folder, 'out')).toEqual([])
  })

  it('refuses to write into or over the source model, and over an existing export', async () => {
    await expect(exportTo(join(DEFAULT, 'exported'))).rejects.toThrow(/inside the source model's folder/)
    await expect(exportTo(DEFAULT)).rejects.toThrow(/source model/)
    await expect(exportTo(resolve('resources/models'))).rejects.toThrow(/holds the source model's file/)
    await expect(exportTo(join(dir, 'fp32'))).rejects.toThrow(/already exists/)
    expect((await readdir(DEFAULT)).sort()).toEqual(['README.md', 'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'])
  })

  it('every named format is built; unknown formats are clear errors', () => {
    expect(exportFormat('onnx', '/x').id).toBe('onnx')
    expect(() => exportFormat('tflite', '/x')).toThrow(/unknown export format 'tflite'/)
  })
})
