import { describe, it, expect, beforeAll } from 'vitest'
import { readFileSync, openSync, readSync, closeSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Tokenizer } from '@huggingface/tokenizers'
import { parseQuantSpec } from '../../worker/quant/spec'

/**
 * Consistency of test/fixtures/reference/quant-reference.json, the PyTorch fake-quant
 * perplexities made by resources/models/train/make_quant_reference.py on the GPU machine.
 * No Python here: the fixture is checked against reference.json (same baseline), against the
 * shipped files (tensor shapes from the safetensors header, calibration texts and their token
 * counts), against a storage rule re-derived here for every method, and for orderings any sound
 * set of quantizers shows. Whether the TS engine lands near these numbers is the quantizer
 * wiring's test, not this one.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const REF_DIR = join(ROOT, 'test/fixtures/reference')
const MODEL_DIR = join(ROOT, 'resources/models/default')

interface MethodRef {
  spec: string
  ppl: number
  nll: number
  windows: number
  bitsPerWeight: number
  storageBytes: Record<'codes' | 'scales' | 'zeros' | 'tables' | 'outliers', number>
  weightMse: number
  windowNllFirst16: number[]
  calibration: string
  definition: string
  kmeansMaxIterations?: number
  pplOtherSeeds?: Record<string, number>
  pplSeeds?: { mean: number; min: number; max: number; seeds: number[] }
  awqAlpha?: Record<string, number>
}
interface QuantRef {
  smoke: boolean
  versions: Record<string, string>
  decoder_linear_weights: number
  windows: number
  seed: number
  spread_seeds: number[]
  fp32: { ppl: number; nll: number; reference_json_ppl: number }
  int4_rtn_g128_fp32_params: { ppl: number; nll: number; reference_json_ppl: number }
  calibration: { any4: { file: string; tokens: number }; gptq_awq: { file: string; sha256: string; windows: number; tokens: number } }
  methods: Record<string, MethodRef>
}

/** Every method the acceptance names, by fixture key → spec in the CLI syntax. */
const EXPECTED_SPECS: Record<string, string> = {
  rtn4_g128: 'rtn:bits=4,group=128,sym=false',
  rtn3_g128: 'rtn:bits=3,group=128,sym=false',
  nf4_g64: 'nf4:group=64',
  fp4_g128: 'fp4:group=128',
  any4_g128_weights: 'any4:group=128,weighting=weights',
  any4_g128_activations: 'any4:group=128,weighting=activations',
  'any4_g128_activations-scale': 'any4:group=128,weighting=activations-scale',
  'any3_g128_activations-scale': 'any3:group=128',
  kmeans4_row: 'kmeans:bits=4,per=row',
  'kmeans4_row_outliers0.005': 'kmeans:bits=4,per=row,outliers=0.005',
  kmeans3_row: 'kmeans:bits=3,per=row',
  'kmeans3_row_outliers0.005': 'kmeans:bits=3,per=row,outliers=0.005',
  gptq4_g128: 'gptq:bits=4,group=128',
  gptq3_g128: 'gptq:bits=3,group=128',
  awq4_g128: 'awq:bits=4,group=128',
  awq3_g128: 'awq:bits=3,group=128',
}

/** 3-bit method → its 4-bit counterpart. */
const THREE_VS_FOUR: [string, string][] = [
  ['rtn3_g128', 'rtn4_g128'],
  ['any3_g128_activations-scale', 'any4_g128_activations-scale'],
  ['kmeans3_row', 'kmeans4_row'],
  ['kmeans3_row_outliers0.005', 'kmeans4_row_outliers0.005'],
  ['gptq3_g128', 'gptq4_g128'],
  ['awq3_g128', 'awq4_g128'],
]

const readJson = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T

/** Shapes of the decoder linear weights, read from the safetensors header (not from the fixture). */
function decoderLinearShapes(): Map<string, [number, number]> {
  const fd = openSync(join(MODEL_DIR, 'model.safetensors'), 'r')
  try {
    const len = Buffer.alloc(8)
    readSync(fd, len, 0, 8, 0)
    const header = Buffer.alloc(Number(len.readBigUInt64LE(0)))
    readSync(fd, header, 0, header.length, 8)
    const entries = JSON.parse(header.toString('utf8')) as Record<string, { shape?: number[] }>
    const linear = /^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/
    const out = new Map<string, [number, number]>()
    for (const [name, e] of Object.entries(entries)) if (linear.test(name)) out.set(name, [e.shape![0]!, e.shape![1]!])
    return out
  } finally {
    closeSync(fd)
  }
}

/**
 * Storage of one [rows, cols] tensor, written from the rule the fixture states (not copied from
 * the script): codes packed over the tensor; fp16 scales, minima, tables and outlier values;
 * integer zeros packed at `bits`; uint16 outlier columns; AWQ's fp16 s per input column.
 */
function expectedStorage(spec: string, rows: number, cols: number): Record<string, number> {
  const [method, rest = ''] = spec.split(':')
  const p = Object.fromEntries(rest.split(',').filter(Boolean).map((kv) => kv.split('='))) as Record<string, string>
  const bits = method === 'any4' || method === 'nf4' || method === 'fp4' ? 4 : method === 'any3' ? 3 : Number(p.bits)
  const group = Number(p.group ?? cols)
  const groups = rows * (cols / group)
  const s = { codes: Math.ceil((rows * cols * bits) / 8), scales: 0, zeros: 0, tables: 0, outliers: 0 }
  switch (method) {
    case 'rtn':
      s.scales = groups * (2 + 2)
      break
    case 'nf4':
    case 'fp4':
      s.scales = groups * 2
      break
    case 'any4':
    case 'any3':
      s.scales = groups * (2 + 2)
      s.tables = rows * 2 ** bits * 2
      break
    case 'kmeans':
      s.tables = rows * 2 ** bits * 2
      s.outliers = rows * Math.ceil(Number(p.outliers ?? 0) * cols - 1e-9) * (2 + 2)
      break
    case 'gptq':
    case 'awq':
      s.scales = groups * 2 + (method === 'awq' ? cols * 2 : 0)
      s.zeros = Math.ceil((groups * bits) / 8)
      break
    default:
      throw new Error(`no storage rule for ${spec}`)
  }
  return s
}

describe('quant-reference.json: the PyTorch fake-quant reference', () => {
  let q: QuantRef
  let ref: { heldout: { windows: number }; models: { default: { ppl: Record<string, number>; mean_nll: Record<string, number>; window_nll: { fp32: number[] } } } }
  let shapes: Map<string, [number, number]>
  beforeAll(() => {
    q = readJson<QuantRef>(join(REF_DIR, 'quant-reference.json'))
    ref = readJson(join(REF_DIR, 'reference.json'))
    shapes = decoderLinearShapes()
  })

  it('is a full run whose fp32 baseline and fp32-parameter int4 RTN reproduce reference.json', () => {
    expect(q.smoke).toBe(false)
    expect(q.windows).toBe(ref.heldout.windows)
    expect(q.fp32.ppl / ref.models.default.ppl.fp32! - 1).toBeCloseTo(0, 9)
    expect(q.fp32.nll).toBeCloseTo(ref.models.default.mean_nll.fp32!, 12)
    expect(q.int4_rtn_g128_fp32_params.ppl / ref.models.default.ppl.int4_rtn_g128! - 1).toBeCloseTo(0, 9)
    // fp16-stored scale and minimum move int4 RTN only slightly from the fp32-parameter figure.
    expect(Math.abs(q.methods.rtn4_g128!.ppl / q.int4_rtn_g128_fp32_params.ppl - 1)).toBeLessThan(1e-3)
  })

  it('lists exactly the methods of the acceptance, each a complete full-run entry', () => {
    expect(Object.keys(q.methods).sort()).toEqual(Object.keys(EXPECTED_SPECS).sort())
    for (const [key, m] of Object.entries(q.methods)) {
      expect(m.spec, key).toBe(EXPECTED_SPECS[key])
      expect(m.windows, key).toBe(q.windows)
      expect(Math.log(m.ppl), key).toBeCloseTo(m.nll, 12)
      expect(m.windowNllFirst16, key).toHaveLength(16)
      // Per window the quantized model stays near the fp32 one (a wrong weight layout would not).
      m.windowNllFirst16.forEach((x, i) => expect(Math.abs(x - ref.models.default.window_nll.fp32[i]!), `${key} window ${i}`).toBeLessThan(0.3))
      expect(m.weightMse, key).toBeGreaterThan(0)
      expect(m.definition.length, key).toBeGreaterThan(40)
    }
  })

  it('writes every spec in the CLI syntax the TS parser accepts', () => {
    for (const m of Object.values(q.methods)) expect(() => parseQuantSpec(m.spec), m.spec).not.toThrow()
  })

  it('counts storage and bits per weight by the stated rule over the default model’s shapes', () => {
    expect(shapes.size).toBe(8 * 7)
    const weights = [...shapes.values()].reduce((a, [r, c]) => a + r * c, 0)
    expect(q.decoder_linear_weights).toBe(weights)
    for (const [key, m] of Object.entries(q.methods)) {
      const total: Record<string, number> = { codes: 0, scales: 0, zeros: 0, tables: 0, outliers: 0 }
      for (const [rows, cols] of shapes.values()) for (const [k, v] of Object.entries(expectedStorage(m.spec, rows, cols))) total[k]! += v
      expect(m.storageBytes, key).toEqual(total)
      const bytes = Object.values(total).reduce((a, b) => a + b, 0)
      expect(m.bitsPerWeight, key).toBeCloseTo((8 * bytes) / weights, 12)
    }
    // Spot values by hand: int4 + one fp16 scale and one fp16 min per 128 weights = 4.25 bits;
    // NF4 at g64 = 4 + 16/64; GPTQ 3-bit = 3 + 16/128 + 3/128.
    expect(q.methods.rtn4_g128!.bitsPerWeight).toBe(4.25)
    expect(q.methods.nf4_g64!.bitsPerWeight).toBe(4.25)
    expect(q.methods.gptq3_g128!.bitsPerWeight).toBeCloseTo(3 + 16 / 128 + 3 / 128, 12)
  })

  it('orders methods as any sound set of quantizers does', () => {
    const ppl = (k: string) => q.methods[k]!.ppl
    for (const m of Object.values(q.methods)) expect(m.ppl, m.spec).toBeGreaterThan(q.fp32.ppl)
    for (const [three, four] of THREE_VS_FOUR) expect(ppl(three), `${three} vs ${four}`).toBeGreaterThan(ppl(four))
    // Calibrated integer grids beat plain RTN at the same bits and group.
    for (const b of [4, 3]) {
      expect(ppl(`gptq${b}_g128`)).toBeLessThan(ppl(`rtn${b}_g128`))
      expect(ppl(`awq${b}_g128`)).toBeLessThan(ppl(`rtn${b}_g128`))
    }
    // Outliers kept exactly lower each row's weight error (the clustered range shrinks).
    expect(q.methods['kmeans4_row_outliers0.005']!.weightMse).toBeLessThan(q.methods.kmeans4_row!.weightMse)
    expect(q.methods['kmeans3_row_outliers0.005']!.weightMse).toBeLessThan(q.methods.kmeans3_row!.weightMse)
  })

  it('gives every k-means method its spread over seeds, the seed-0 figure inside it', () => {
    for (const [key, m] of Object.entries(q.methods)) {
      const kmeans = key.startsWith('any') || key.startsWith('kmeans')
      expect(m.pplSeeds !== undefined, key).toBe(kmeans)
      if (!kmeans) continue
      const all = [m.ppl, ...q.spread_seeds.map((s) => m.pplOtherSeeds![String(s)]!)]
      expect(m.pplSeeds!.seeds).toEqual([q.seed, ...q.spread_seeds])
      expect(m.pplSeeds!.min).toBe(Math.min(...all))
      expect(m.pplSeeds!.max).toBe(Math.max(...all))
      expect(m.pplSeeds!.mean).toBeCloseTo(all.reduce((a, b) => a + b, 0) / all.length, 10)
      expect(m.kmeansMaxIterations!, key).toBeLessThanOrEqual(300)
    }
  })

  it('chose an AWQ α on the grid for every decoder linear', () => {
    for (const key of ['awq4_g128', 'awq3_g128']) {
      const alpha = q.methods[key]!.awqAlpha!
      expect(Object.keys(alpha).sort()).toEqual([...shapes.keys()].sort())
      for (const a of Object.values(alpha)) {
        expect(Math.abs(a * 20 - Math.round(a * 20))).toBeLessThan(1e-9)
        expect(a).toBeGreaterThanOrEqual(0)
        expect(a).toBeLessThan(1)
      }
    }
  })
})

describe('calibration texts the reference used', () => {
  let q: QuantRef
  let tokenizer: Tokenizer
  beforeAll(() => {
    q = readJson<QuantRef>(join(REF_DIR, 'quant-reference.json'))
    tokenizer = new Tokenizer(readJson(join(MODEL_DIR, 'tokenizer.json')), readJson(join(MODEL_DIR, 'tokenizer_config.json')))
  })
  const count = (file: string) => tokenizer.encode(readFileSync(join(ROOT, file), 'utf8'), { add_special_tokens: false }).ids.length

  it('calibration.txt is the file the fixture names, ≥ 64 windows of 256 tokens', () => {
    const c = q.calibration.gptq_awq
    expect(createHash('sha256').update(readFileSync(join(ROOT, c.file))).digest('hex')).toBe(c.sha256)
    expect(c.windows).toBeGreaterThanOrEqual(64)
    expect(c.tokens).toBe(c.windows * 256)
    expect(Math.floor(count(c.file) / 256)).toBe(c.windows)
  })

  it('calibration.txt shares no 200-character run with heldout.txt', () => {
    const calib = readFileSync(join(ROOT, 'resources/eval/calibration.txt'), 'utf8')
    const heldout = readFileSync(join(ROOT, 'resources/eval/heldout.txt'), 'utf8')
    expect(calib.length).toBeGreaterThan(50_000)
    for (let i = 0; i + 200 <= calib.length; i += 100) expect(heldout.includes(calib.slice(i, i + 200)), `calibration.txt at ${i}`).toBe(false)
  })

  it('any4-prompt.txt fits one 256-token sequence with the token count the fixture states', () => {
    expect(count(q.calibration.any4.file)).toBe(q.calibration.any4.tokens)
    expect(q.calibration.any4.tokens).toBeLessThanOrEqual(256)
  })
})
