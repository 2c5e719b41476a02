/**
 * compressed-tensors pack-quantized export and reader on the default model: the written
 * fields follow the published layout (decoded here by hand from the raw bytes), the folder
 * reopens to the plan's dequantised weights bit for bit where the layout represents the plan
 * (symmetric RTN, GPTQ), and to the measured fallback where it does not (asymmetric RTN).
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OpenedModel } from '../../worker/formats/contract'
import { f16ToF32 } from '../../worker/formats/dtypes'
import { openModel } from '../../worker/formats/open-model'
import type { ExportReport } from '../../worker/export/contract'
import { runExport } from '../../worker/export/run-export'
import { createOverrides } from '../../worker/plan/apply'
import type { CalibrationOptions } from '../../worker/plan/calibration'
import { decoderLinearWeights, modelFingerprint, planFromSpec } from '../../worker/plan/plan'

const DEFAULT = resolve('resources/models/default')
let dir: string
let model: OpenedModel

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-export-ct-'))
  model = await openModel(DEFAULT)
})
afterAll(async () => {
  await model.close()
  await rm(dir, { recursive: true, force: true })
})

const CALIBRATION: CalibrationOptions = { maxWindows: 2, cacheDir: null }

async function exportSpec(spec: string, out: string): Promise<ExportReport> {
  return runExport({ model, modelPath: DEFAULT, plan: planFromSpec(model, spec), planSource: `spec ${spec}`, format: 'compressed-tensors', out: join(dir, out), options: { calibration: CALIBRATION } })
}

/** The values the app evaluates for the plan (the evaluation's own weight overrides). */
async function inAppValues(spec: string): Promise<Map<string, Float32Array>> {
  const overrides = await createOverrides(model, { plan: planFromSpec(model, spec), source: 'test', calibration: CALIBRATION })
  const out = new Map<string, Float32Array>()
  for (const t of decoderLinearWeights(model)) out.set(t.name, await (overrides.get(t.name) as (a: number, b: number) => Promise<Float32Array>)(0, t.shape[0]!))
  return out
}

/** ŵ = (q − z)·scale decoded from the raw stored fields, following pack_to_int32 (int4, 8 per int32, low bits first). */
async function handDecode(m: OpenedModel, prefix: string, symmetric: boolean): Promise<Float32Array> {
  const raw = async (s: string) => (await m.readRaw(`${prefix}.${s}`)).slice().buffer
  const shape = new BigInt64Array(await raw('weight_shape'))
  const [rows, cols] = [Number(shape[0]), Number(shape[1])]
  const packed = new Uint32Array(await raw('weight_packed'))
  const scales = new Uint16Array(await raw('weight_scale'))
  const groups = scales.length / rows
  const zp = symmetric ? null : new Uint32Array(await raw('weight_zero_point'))
  const out = new Float32Array(rows * cols)
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g = Math.floor(c / (cols / groups))
      const q = ((packed[r * (cols / 8) + Math.floor(c / 8)]! >>> (4 * (c % 8))) & 15) - 8
      const z = zp ? ((zp[Math.floor(r / 8) * groups + g]! >>> (4 * (r % 8))) & 15) - 8 : 0
      out[r * cols + c] = (q - z) * f16ToF32(scales[r * groups + g]!)
    }
  }
  return out
}

const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))

async function roundTrip(spec: string, out: string, symmetric: boolean, exact: boolean) {
  const report = await exportSpec(spec, out)
  const planned = await inAppValues(spec)
  const reopened = await openModel(join(dir, out))
  let maxDiff = 0
  try {
    for (const [name, values] of planned) {
      const entry = reopened.tensors.find((t) => t.name === name)!
      expect(entry.dtype).toBe('CT_PACKED_INT4')
      const got = await reopened.readRows(name, 0, entry.shape[0]!)
      if (exact) expect(same(got, values), name).toBe(true)
      for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i]! - values[i]!))
    }
    for (const name of ['model.layers.0.self_attn.k_proj.weight', 'model.layers.5.mlp.down_proj.weight']) {
      const got = await reopened.readRows(name, 0, reopened.tensors.find((t) => t.name === name)!.shape[0]!)
      expect(same(got, await handDecode(reopened, name.slice(0, -'.weight'.length), symmetric)), name).toBe(true)
    }
  } finally {
    await reopened.close()
  }
  return { report, maxDiff }
}

describe('compressed-tensors pack-quantized', () => {
  it('RTN 4-bit g128 symmetric: published fields, config, and a bit-exact round trip', async () => {
    const { report, maxDiff } = await roundTrip('rtn:bits=4,group=128,sym=true', 'rtn-sym', true, true)
    expect(maxDiff).toBe(0)
    const config = JSON.parse(await readFile(join(dir, 'rtn-sym', 'config.json'), 'utf8'))
    expect(config.quantization_config).toMatchObject({
      quant_method: 'compressed-tensors',
      format: 'pack-quantized',
      config_groups: { group_0: { targets: ['Linear'], weights: { num_bits: 4, type: 'int', symmetric: true, strategy: 'group', group_size: 128 } } },
      ignore: ['lm_head'],
    })
    const stored = await openModel(join(dir, 'rtn-sym'))
    try {
      const parts = stored.tensors.filter((t) => t.name.startsWith('model.layers.0.mlp.down_proj.'))
      expect(Object.fromEntries(parts.map((t) => [t.name.split('.').at(-1), [t.dtype, t.shape]]))).toEqual({
        weight_packed: ['I32', [256, 96]],
        weight_scale: ['F16', [256, 6]],
        weight_shape: ['I64', [2]],
        weight: ['CT_PACKED_INT4', [256, 768]],
      })
    } finally {
      await stored.close()
    }
    expect(report.tensors.filter((t) => t.method !== null).every((t) => t.support === 'exact' && t.maxAbsError === 0)).toBe(true)
  })

  it('GPTQ 4-bit asymmetric (2 calibration windows): zero points packed along rows, bit-exact round trip', async () => {
    const { report, maxDiff } = await roundTrip('gptq:bits=4,group=128', 'gptq', false, true)
    expect(maxDiff).toBe(0)
    const config = JSON.parse(await readFile(join(dir, 'gptq', 'config.json'), 'utf8'))
    expect(config.quantization_config.config_groups.group_0.weights).toMatchObject({ symmetric: false, group_size: 128 })
    const stored = await openModel(join(dir, 'gptq'))
    try {
      expect(stored.tensors.find((t) => t.name === 'model.layers.0.mlp.gate_proj.weight_zero_point')).toMatchObject({ dtype: 'I32', shape: [96, 2] })
    } finally {
      await stored.close()
    }
    expect(report.tensors.filter((t) => t.support === 'exact')).toHaveLength(56)
  }, 120_000)

  it('RTN 4-bit g128 asymmetric falls back to the layout\'s grid; the reader returns what was written and the report measures it', async () => {
    const { report, maxDiff } = await roundTrip('rtn:bits=4,group=128', 'rtn-asym', false, false)
    const quantized = report.tensors.filter((t) => t.method !== null)
    expect(quantized.every((t) => t.support === 'fallback' && /fp16 group minimum/.test(t.note ?? ''))).toBe(true)
    // The report's largest difference is the one measured here between the reopened export and the in-app plan.
    expect(Math.max(...quantized.map((t) => t.maxAbsError!))).toBe(maxDiff)
    expect(maxDiff).toBeGreaterThan(0)
    expect(report.notes.join(' ')).toMatch(/56 of 56 quantized tensors were re-quantized/)
  })

  it('a reopened pack-quantized folder re-exports as a dequantised folder holding the values it decodes to', async () => {
    const packed = await openModel(join(dir, 'rtn-sym'))
    try {
      const plan = { format: 'quantscope-plan' as const, version: 1 as const, model: { name: 'rtn-sym', fingerprint: modelFingerprint(packed) }, tensors: {} }
      await runExport({ model: packed, modelPath: join(dir, 'rtn-sym'), plan, planSource: 'empty plan', format: 'safetensors', out: join(dir, 'dequantised'), options: { dtype: 'fp32' } })
      const plain = await openModel(join(dir, 'dequantised'))
      try {
        expect(plain.tensors.some((t) => t.name.endsWith('weight_packed'))).toBe(false)
        const name = 'model.layers.2.self_attn.o_proj.weight'
        expect(plain.tensors.find((t) => t.name === name)).toMatchObject({ dtype: 'F32', shape: [256, 256] })
        expect(same(await plain.readRows(name, 0, 256), await packed.readRows(name, 0, 256))).toBe(true)
        expect(JSON.parse(await readFile(join(dir, 'dequantised', 'config.json'), 'utf8')).quantization_config).toBeUndefined()
      } finally {
        await plain.close()
      }
    } finally {
      await packed.close()
    }
  })

  it('refuses methods the layout cannot hold, naming the tensor, before writing anything', async () => {
    await expect(exportSpec('nf4:group=64', 'nf4')).rejects.toThrow(/cannot represent 56 planned tensor\(s\): 'model\.layers\.0\.mlp\.down_proj\.weight' \(nf4\): nf4 is not an integer grid/)
    await expect(exportSpec('rtn:bits=3,group=128,sym=true', 'rtn3')).rejects.toThrow(/3-bit codes/)
    expect((await readdir(dir)).filter((f) => f.startsWith('nf4') || f.startsWith('rtn3'))).toEqual([])
  })
})
