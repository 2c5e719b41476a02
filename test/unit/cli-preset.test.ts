/**
 * `--preset NAME`, llama.cpp's quantization mixes reaching the CLI: the GGUF export of a preset
 * holds, read back by our GGUF reader, the ggml type llama-quantize gives each tensor; the
 * report names the preset as the plan's source; bad combinations and names fail before work.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { classifyTensor } from '../../worker/model/logical-model'
import { planFromLlamaCppPreset } from '../../worker/plan/llama-cpp-presets'
import { parsePlan } from '../../worker/plan/plan'
import { runCli } from '../helpers/run-cli'

const DEFAULT = 'resources/models/default'

let dir: string
let model: OpenedModel
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-cli-preset-'))
  model = await openModel(DEFAULT)
})
afterAll(async () => {
  await model?.close()
  await rm(dir, { recursive: true, force: true })
})

/** 'layer/role' of a tensor, the same for an HF name and llama.cpp's GGUF name of it. */
const place = (name: string): string => {
  const { layer, role } = classifyTensor(name)
  return `${layer ?? '-'}/${role ?? name}`
}

/** The plan's ggml type per 'layer/role' ('keep' where the preset leaves a tensor as stored). */
function presetTypes(preset: string): Map<string, string> {
  const plan = planFromLlamaCppPreset(model, preset)
  const types = new Map<string, string>()
  for (const [name, entry] of Object.entries(plan.tensors)) {
    types.set(place(name), entry === 'keep' ? 'keep' : String((entry.params as { type: string }).type))
  }
  return types
}

describe('cli --preset', () => {
  it('export --preset Q4_K_M --format gguf writes llama-quantize’s type for every tensor, and the report says "preset Q4_K_M"', async () => {
    const out = join(dir, 'q4km.gguf')
    const r = await runCli(['export', DEFAULT, '--preset', 'Q4_K_M', '--format', 'gguf', '--out', out, '--json'])
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.plan.source).toBe('preset Q4_K_M')
    expect(JSON.parse(await readFile(join(dir, 'q4km.report.json'), 'utf8')).plan.source).toBe('preset Q4_K_M')

    const want = presetTypes('Q4_K_M')
    const gguf = await openModel(out)
    try {
      const written = new Map(gguf.tensors.map((t) => [place(t.name), t.dtype]))
      // Every matrix the preset plans is in the file at exactly that type …
      for (const [where, type] of want) expect(written.get(where), where).toBe(type === 'keep' ? 'F16' : type)
      // … and nothing else is quantized (norms stay F32).
      for (const [where, dtype] of written) if (!want.has(where)) expect(dtype, where).toBe('F32')
      // llama.cpp's use_more_bits for 8 layers (first and last eighth, every third between):
      // attn_v and ffn_down of layers 0, 3, 6, 7 get Q6_K, the others Q4_K; output.weight Q6_K.
      const q6 = (role: string) => [...written].filter(([w, d]) => w.endsWith(`/${role}`) && d === 'Q6_K').map(([w]) => Number(w.split('/')[0]))
      expect(q6('v')).toEqual([0, 3, 6, 7])
      expect(q6('down')).toEqual([0, 3, 6, 7])
      expect(written.get('-/lm_head')).toBe('Q6_K')
      expect(written.get('2/v')).toBe('Q4_K')
    } finally {
      await gguf.close()
    }
  }, 120_000)

  it('quantize --preset Q2_K --json quantizes each tensor with the preset’s ggml type', async () => {
    const r = await runCli(['quantize', DEFAULT, '--preset', 'Q2_K', '--threads', '1', '--json'])
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout) as { plan: string; tensors: { name: string; spec: string }[] }
    expect(report.plan).toBe('preset Q2_K')
    const want = presetTypes('Q2_K')
    const got = new Map(report.tensors.map((t) => [place(t.name), /type=(\w+)/.exec(t.spec)?.[1]] as const))
    expect(got).toEqual(new Map([...want].filter(([, type]) => type !== 'keep')))
    // Q2_K's own rules: attn_output Q3_K, ffn_down Q3_K, attn_v Q4_K at GQA 2 → Q3_K.
    expect(got.get('0/o')).toBe('Q3_K')
    expect(got.get('5/down')).toBe('Q3_K')
    expect(got.get('4/q')).toBe('Q2_K')
  }, 120_000)

  it('plan --preset Q3_K_M --out writes the preset as a plan file that --plan reads; --budget with it is refused', async () => {
    const out = join(dir, 'q3km.plan.json')
    const r = await runCli(['plan', DEFAULT, '--preset', 'Q3_K_M', '--out', out, '--json'])
    expect(r.code, r.stderr).toBe(0)
    const file = parsePlan(await readFile(out, 'utf8'), out)
    expect(file.tensors).toEqual(planFromLlamaCppPreset(model, 'Q3_K_M').tensors)
    const counts = JSON.parse(r.stdout).counts as Record<string, number>
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(Object.keys(file.tensors).length)
    // The file drives the other commands as the preset itself does: same per-tensor specs.
    const viaFile = await runCli(['quantize', DEFAULT, '--plan', out, '--threads', '1', '--json'])
    expect(viaFile.code, viaFile.stderr).toBe(0)
    const specs = (JSON.parse(viaFile.stdout) as { tensors: { name: string; spec: string }[] }).tensors.map((t) => [place(t.name), /type=(\w+)/.exec(t.spec)?.[1]] as const)
    expect(new Map(specs)).toEqual(new Map([...presetTypes('Q3_K_M')].filter(([, t]) => t !== 'keep')))
    const mixed = await runCli(['plan', DEFAULT, '--preset', 'Q3_K_M', '--budget', '3bpw', '--allocator', 'lsaq', '--out', join(dir, 'mixed.json')])
    expect(mixed.code).toBe(2)
    expect(mixed.stderr).toMatch(/plan --preset writes llama\.cpp's mix as it is; --budget belongs to a budget allocation/)
  }, 120_000)

  it('an unknown preset is a usage error listing the presets; nothing is written', async () => {
    const out = join(dir, 'bad.gguf')
    const r = await runCli(['export', DEFAULT, '--preset', 'Q4_K_X', '--format', 'gguf', '--out', out])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/error: unknown --preset 'Q4_K_X' \(llama\.cpp presets: Q2_K, .*Q4_K_M.*Q8_0\)/)
    expect(await readdir(dir)).not.toContain('bad.gguf')
    const evalBad = await runCli(['eval', DEFAULT, '--text', 'resources/eval/heldout.txt', '--preset', 'q4_k_m'])
    expect(evalBad.code).toBe(2)
    expect(evalBad.stderr).toMatch(/unknown --preset 'q4_k_m'/)
  }, 60_000)

  it('--preset with --quant or --plan is a usage error; --calib alone names all three plan flags', async () => {
    const both = await runCli(['export', DEFAULT, '--preset', 'Q4_K_M', '--quant', 'rtn', '--format', 'gguf', '--out', join(dir, 'both.gguf')])
    expect(both.code).toBe(2)
    expect(both.stderr).toMatch(/error: give one of --quant SPEC, --plan FILE or --preset NAME, not several/)
    const withPlan = await runCli(['quantize', DEFAULT, '--preset', 'Q8_0', '--plan', 'plan.json'])
    expect(withPlan.code).toBe(2)
    expect(withPlan.stderr).toMatch(/not several/)
    const none = await runCli(['export', DEFAULT, '--format', 'gguf', '--out', join(dir, 'none.gguf')])
    expect(none.code).toBe(2)
    expect(none.stderr).toMatch(/export needs --quant SPEC, --plan FILE or --preset NAME/)
    const calibOnly = await runCli(['quantize', DEFAULT, '--calib', 'resources/eval/calibration.txt'])
    expect(calibOnly.code).toBe(2)
    expect(calibOnly.stderr).toMatch(/--calib goes with --quant SPEC, --plan FILE or --preset NAME/)
    expect(await readdir(dir)).not.toContain('both.gguf')
  }, 60_000)
})
