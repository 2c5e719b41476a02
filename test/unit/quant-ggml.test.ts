/**
 * The ggml quantization types against llama.cpp's own `llama-quantize` (fixtures in
 * test/fixtures/ggml/, made from the default model's layer-0 k_proj and down_proj as F16; see
 * the README there): our blocks must be the same bytes, with and without an imatrix.
 */
import { describe, it, expect, beforeAll } from 'vitest'
import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { ggufFormat } from '../../worker/formats/gguf/reader'
import { openSafetensors } from '../../worker/formats/safetensors/reader'
import { roundF16 } from '../../worker/quant/common'
import { QuantParamError } from '../../worker/quant/contract'
import { GGML_QUANT_TYPES, ggmlMethod, ggmlStorage, type GgmlQuantType } from '../../worker/quant/ggml'
import { nearestInt } from '../../worker/quant/ggml-search'
import { parseQuantSpec } from '../../worker/quant/spec'
import { dequantize } from '../../worker/formats/gguf/dequant'
import { ggmlByteSize, ggmlTypeByName } from '../../worker/formats/gguf/ggml-types'

const FIXTURES = resolve('test/fixtures/ggml')
const MODEL = resolve('resources/models/default/model.safetensors')

interface Weight {
  gguf: string
  rows: number
  cols: number
  /** The bf16 weight as llama-quantize saw it: rounded to F16. */
  w: Float32Array
}

const weights: Record<'k' | 'down', Weight> = {} as never
let imatrix: Map<string, Float32Array>

beforeAll(async () => {
  const model = await openSafetensors(MODEL)
  for (const [key, hf, gguf, rows, cols] of [
    ['k', 'model.layers.0.self_attn.k_proj.weight', 'blk.0.attn_k.weight', 128, 256],
    ['down', 'model.layers.0.mlp.down_proj.weight', 'blk.0.ffn_down.weight', 256, 768],
  ] as const) {
    const w = await model.readRows(hf, 0, rows)
    for (let i = 0; i < w.length; i++) w[i] = roundF16(w[i]!)
    weights[key] = { gguf, rows, cols, w }
  }
  await model.close()
  imatrix = readLegacyImatrix(await readFile(join(FIXTURES, 'slice.imatrix.dat')))
})

/**
 * llama.cpp's legacy imatrix file (what common_imatrix_load_legacy reads): int32 entry count;
 * per entry int32 name length, name, int32 ncall, int32 nval, float32 sums[nval]. llama-quantize
 * uses sums / ncall; the fixture's ncall is 1.
 */
function readLegacyImatrix(buf: Uint8Array): Map<string, Float32Array> {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const out = new Map<string, Float32Array>()
  let at = 4
  for (let e = dv.getInt32(0, true); e > 0; e--) {
    const len = dv.getInt32(at, true)
    const name = new TextDecoder().decode(buf.subarray(at + 4, at + 4 + len))
    at += 4 + len
    const ncall = dv.getInt32(at, true)
    const nval = dv.getInt32(at + 4, true)
    at += 8
    const v = new Float32Array(nval)
    for (let i = 0; i < nval; i++) v[i] = Math.fround(dv.getFloat32(at + 4 * i, true) / ncall)
    at += 4 * nval
    out.set(name, v)
  }
  return out
}

/** The tensor's block bytes and type as llama-quantize wrote them. */
async function fixtureBlocks(file: string, tensor: string): Promise<{ type: string; bytes: Uint8Array }> {
  const gguf = await ggufFormat.open(join(FIXTURES, file))
  try {
    const entry = gguf.tensors.find((t) => t.name === tensor)!
    return { type: entry.dtype, bytes: await gguf.readRaw(tensor) }
  } finally {
    await gguf.close()
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  if (a.length !== b.length) return `lengths ${a.length} vs ${b.length}`
  let n = 0
  let first = -1
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      n++
      if (first < 0) first = i
    }
  }
  return n === 0 ? 'identical' : `${n} bytes differ, first at ${first}`
}

function mse(a: Float32Array, b: Float32Array): number {
  let s = 0
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2
  return s / a.length
}

describe('ggml types: byte-identical to llama-quantize', () => {
  for (const type of GGML_QUANT_TYPES) {
    it(`${type}: blocks of k_proj [128, 256] and down_proj [256, 768] equal llama.cpp's`, async () => {
      for (const key of ['k', 'down'] as const) {
        const { gguf, rows, cols, w } = weights[key]
        const ref = await fixtureBlocks(`slice-${type}.gguf`, gguf)
        expect(ref.type).toBe(type)
        const q = ggmlMethod.quantize(w, rows, cols, { type, imatrix: false })
        expect(firstDifference(q.blocks, ref.bytes), `${type} ${gguf}`).toBe('identical')
        // Hence the same values: what the app evaluates is what llama.cpp would load.
        const ours = q.dequantizeRows(0, rows)
        const theirs = dequantize(type, ref.bytes, rows * cols)
        let same = 0
        for (let i = 0; i < ours.length; i++) if (Object.is(ours[i], theirs[i])) same++
        expect(same).toBe(rows * cols)
      }
    })
  }

  for (const type of GGML_QUANT_TYPES.filter((t) => t !== 'Q8_0')) {
    it(`${type} with an imatrix (llama-quantize --imatrix): k_proj blocks equal llama.cpp's`, async () => {
      const { gguf, rows, cols, w } = weights.k
      const meanSq = imatrix.get(gguf)!
      expect(meanSq.length).toBe(cols)
      const ref = await fixtureBlocks(`slice-k-${type}-imatrix.gguf`, gguf)
      const calibration = { count: 1, mean: new Float32Array(cols), meanAbs: new Float32Array(cols), meanSq }
      const q = ggmlMethod.quantize(w, rows, cols, { type, imatrix: true }, calibration)
      expect(firstDifference(q.blocks, ref.bytes), `${type} imatrix`).toBe('identical')
      // The weighting changes the result: the plain quantization differs from this fixture.
      const plain = ggmlMethod.quantize(w, rows, cols, { type, imatrix: false })
      expect(firstDifference(plain.blocks, ref.bytes)).not.toBe('identical')
    })
  }

  it('edge rows (zero, constant, tiny with subnormal fp16 scales, outliers, one-signed, sparse, ties on a grid) equal llama.cpp\'s for every type', async () => {
    const src = await ggufFormat.open(join(FIXTURES, 'edge-f16.gguf'))
    const name = 'blk.0.attn_output.weight'
    const w = await src.readRows(name, 0, 12)
    await src.close()
    expect(w.slice(0, 512).every((x) => x === 0)).toBe(true)
    for (const type of GGML_QUANT_TYPES) {
      const ref = await fixtureBlocks(`edge-${type}.gguf`, name)
      const q = ggmlMethod.quantize(w, 12, 512, { type, imatrix: false })
      expect(firstDifference(q.blocks, ref.bytes), `${type} edge rows`).toBe('identical')
    }
  })

  it('error falls with bits on down_proj, as the types are meant to order', () => {
    const { rows, cols, w } = weights.down
    const err = (type: GgmlQuantType) => mse(ggmlMethod.quantize(w, rows, cols, { type, imatrix: false }).dequantizeRows(0, rows), w)
    const order: GgmlQuantType[] = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_0']
    const e = order.map(err)
    for (let i = 1; i < e.length; i++) expect(e[i]!, `${order[i]} vs ${order[i - 1]}`).toBeLessThan(e[i - 1]!)
    expect(err('Q4_1')).toBeLessThan(err('Q4_0'))
    expect(err('Q5_1')).toBeLessThan(err('Q5_0'))
  })
})

describe('ggml tensors', () => {
  it('rows dequantize the same alone as in full; storage is the block bytes; levels hold every value', () => {
    const { rows, cols, w } = weights.down
    for (const type of GGML_QUANT_TYPES) {
      const q = ggmlMethod.quantize(w, rows, cols, { type, imatrix: false })
      const info = ggmlTypeByName(type)!
      expect(q.bytes).toBe(ggmlByteSize(info, rows * cols))
      expect(q.blocks.length).toBe(q.bytes)
      expect(q.storage).toEqual(ggmlStorage(rows, cols, { type, imatrix: false }))
      expect(ggmlMethod.storage(rows, cols, { type, imatrix: false }).codes * 8).toBe(ggmlMethod.bits({ type, imatrix: false }) * rows * cols)
      const full = q.dequantizeRows(0, rows)
      for (const [r0, r1] of [[0, 1], [17, 40], [rows - 1, rows], [5, 5]] as const) {
        expect(q.dequantizeRows(r0, r1)).toEqual(full.subarray(r0 * cols, r1 * cols))
      }
      for (const [r, c] of [[0, 0], [3, 31], [100, 255], [200, 256], [rows - 1, cols - 1]] as const) {
        const lv = q.levels(r, c)
        for (let i = 1; i < lv.length; i++) expect(lv[i]!).toBeGreaterThan(lv[i - 1]!)
        expect(lv.length).toBeLessThanOrEqual(type === 'Q8_0' ? 256 : 64)
        expect(Array.from(lv)).toContain(full[r * cols + c])
      }
    }
  })

  it('levels of Q4_0 are the 16 multiples (q − 8)·d of the block scale', () => {
    const { rows, cols, w } = weights.k
    const q = ggmlMethod.quantize(w, rows, cols, { type: 'Q4_0', imatrix: false })
    const d = dequantize('F16', q.blocks.subarray(0, 2), 1)[0]!
    expect(Array.from(q.levels(0, 5))).toEqual(Array.from({ length: 16 }, (_, i) => Math.fround((i - 8) * d)).sort((a, b) => a - b))
  })

  it('refuses rows that are not whole blocks, as llama-quantize does, naming the block size', () => {
    const w = new Float32Array(2 * 96).fill(0.5)
    expect(() => ggmlMethod.quantize(w, 2, 96, { type: 'Q4_K', imatrix: false })).toThrow(QuantParamError)
    expect(() => ggmlMethod.quantize(w, 2, 96, { type: 'Q4_K', imatrix: false })).toThrow(/multiple of 256 .*96/)
    expect(() => ggmlMethod.storage(3, 48, { type: 'Q8_0', imatrix: false })).toThrow(/multiple of 32 .*48/)
    expect(ggmlMethod.quantize(w, 2, 96, { type: 'Q8_0', imatrix: false }).bytes).toBe(2 * 3 * 34)
  })

  it('imatrix=true needs activation mean squares of the right width; weights beyond fp16 scales are refused', () => {
    const w = new Float32Array(4 * 256).map((_, i) => Math.sin(i))
    const p = { type: 'Q4_K' as const, imatrix: true }
    expect(ggmlMethod.needs(p)).toBe('activation-stats')
    expect(ggmlMethod.needs({ ...p, imatrix: false })).toBe('none')
    expect(() => ggmlMethod.quantize(w, 4, 256, p)).toThrow(/needs activation statistics/)
    const bad = { count: 1, mean: [], meanAbs: [], meanSq: new Float32Array(128) }
    expect(() => ggmlMethod.quantize(w, 4, 256, p, bad)).toThrow(/128 channel mean squares.*256 input columns/)
    const big = new Float32Array(256).fill(1e10)
    expect(() => ggmlMethod.quantize(big, 1, 256, { type: 'Q8_0', imatrix: false })).toThrow(/row 0 .*fp16/)
  })

  it('rows with |w| below 65504/2 never overflow a stored fp16 value (the check skips them); larger ones are still refused, for every type', () => {
    // Worst cases for each kind of stored value: one huge weight among zeros (scale = absmax
    // over the code range), a two-signed row (range 2·absmax for the min/scale types), a constant row.
    const rows = [
      new Float32Array(256).map((_, i) => (i === 7 ? 32751 : 0)),
      new Float32Array(256).map((_, i) => (i % 2 ? 32751 : -32751)),
      new Float32Array(256).fill(-32751),
      new Float32Array(256).map((_, i) => 32751 * Math.sin(i + 0.5)),
    ]
    for (const type of GGML_QUANT_TYPES) {
      for (const w of rows) {
        const q = ggmlMethod.quantize(w, 1, 256, { type, imatrix: false })
        const back = q.dequantizeRows(0, 1)
        expect(back.every(Number.isFinite), type).toBe(true)
      }
      const huge = new Float32Array(256).map((_, i) => (i % 2 ? 1e9 : -1e9))
      expect(() => ggmlMethod.quantize(huge, 1, 256, { type, imatrix: false }), type).toThrow(/row 0 .*fp16/)
    }
  })

  it('a cancelled signal stops quantization', () => {
    const ac = new AbortController()
    ac.abort()
    const { rows, cols, w } = weights.down
    expect(() => ggmlMethod.quantize(w, rows, cols, { type: 'Q6_K', imatrix: false }, undefined, { signal: ac.signal })).toThrow()
  })
})

describe('ggml spec and rounding', () => {
  it('parses ggml:type=Q4_K and refuses unknown types or a missing type', () => {
    expect(parseQuantSpec('ggml:type=Q4_K').params).toEqual({ type: 'Q4_K', imatrix: false })
    expect(parseQuantSpec('ggml:type=Q3_K,imatrix=true').params).toEqual({ type: 'Q3_K', imatrix: true })
    expect(() => parseQuantSpec('ggml:type=Q7_K')).toThrow(/type must be one of Q8_0, Q4_0/)
    expect(() => parseQuantSpec('ggml')).toThrow(QuantParamError)
    expect(ggmlMethod.bits(parseQuantSpec('ggml:type=Q3_K').params as never)).toBe(3)
  })

  it('nearestInt rounds half to even like ggml’s magic-number trick', () => {
    const cases: [number, number][] = [[0.5, 0], [1.5, 2], [2.5, 2], [-0.5, 0], [-1.5, -2], [-2.5, -2], [3.4999998, 3], [-7.6, -8], [4194303, 4194303]]
    for (const [x, want] of cases) expect(nearestInt(Math.fround(x))).toBe(want)
  })
})
