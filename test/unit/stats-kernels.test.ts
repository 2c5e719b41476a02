import { describe, it, expect, afterAll, beforeAll } from 'vitest'
import { mkdtemp, rm, truncate } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { ModelFormatError } from '../../worker/common/errors'
import { openModel } from '../../worker/formats/open-model'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { WasmStatsAccumulator, wasmStatsAvailable } from '../../worker/stats/wasm-accumulator'
import { resolveStatsOptions, type StatsAccumulator } from '../../worker/stats/stats-accumulator'
import { ReferenceStatsAccumulator } from '../../worker/stats/stats-reference'
import type { StatsOptions, TensorStats } from '../../worker/stats/stats-types'
import { computeTensorStats } from '../../worker/stats/tensor-stats'
import { writeGguf } from '../helpers/gguf-writer'
import { adversarial, bf16Bits, bf16Value, close, f16Bits, f16Value, expectMatchesFloat64, float64Stats, maxRelDiff, rng, toBF16, toF16 } from '../helpers/stats-float64'

type Kind = 'ts' | 'wasm'

function make(kind: Kind, rows: number, cols: number, o: StatsOptions): StatsAccumulator {
  return kind === 'ts' ? new ReferenceStatsAccumulator(rows, cols, o) : new WasmStatsAccumulator(rows, cols, o)
}

/** Runs an accumulator over `v`, feeding rows in uneven chunks so chunk borders get crossed. */
function run(kind: Kind, v: Float32Array, rows: number, cols: number, o: StatsOptions, seed = 1): { stats: TensorStats; twoPass: boolean } {
  const acc = make(kind, rows, cols, o)
  const r = rng(seed)
  try {
    for (let r0 = 0; r0 < rows; ) {
      const n = Math.min(rows - r0, 1 + Math.floor(r.next() * Math.max(1, rows / 3)))
      acc.addRows(v.subarray(r0 * cols, (r0 + n) * cols), r0)
      r0 += n
    }
    const twoPass = acc.needsHistogramPass()
    if (twoPass) {
      // Any order and split is allowed in pass 2.
      const half = Math.floor(rows / 2) * cols
      acc.addHistogramRows(v.subarray(half))
      acc.addHistogramRows(v.subarray(0, half))
    }
    return { stats: acc.finish('t'), twoPass }
  } finally {
    acc.dispose()
  }
}

const SHAPES: [number, number][] = [
  [1, 1],
  [1, 37],
  [7, 13],
  [64, 96],
  [300, 5],
  [3, 1001],
  [129, 130],
]

const OPTS: StatsOptions = { bins: 64, topK: 12, heatmapSize: 16 }

describe('TS reference stats kernel vs float64', () => {
  for (const [rows, cols] of SHAPES) {
    it(`f32 values, ${rows}×${cols}: second histogram pass, every statistic matches`, () => {
      const v = adversarial(rows, cols, rows * 31 + cols)
      const { stats, twoPass } = run('ts', v, rows, cols, OPTS)
      // A second pass is needed exactly when some finite value has mantissa bits below the fine key.
      const bits = new Uint32Array(v.buffer)
      expect(twoPass).toBe(bits.some((b, i) => Number.isFinite(v[i]!) && (b & 0x1fff) !== 0))
      expectMatchesFloat64(stats, v, rows, cols, OPTS)
    })
  }

  it('f16 and bf16 values need no second pass and still give the exact histogram', () => {
    for (const [round, name] of [
      [toF16, 'f16'],
      [toBF16, 'bf16'],
    ] as const) {
      const v = adversarial(50, 77, 4, round)
      const { stats, twoPass } = run('ts', v, 50, 77, OPTS)
      expect(twoPass, name).toBe(false)
      expectMatchesFloat64(stats, v, 50, 77, OPTS)
    }
  })

  it('keeps moments exact when the mean is large next to the spread', () => {
    const r = rng(9)
    const v = Float32Array.from({ length: 40_000 }, () => 1000 + r.normal() * 1e-3)
    const ref = float64Stats(v, 200, 200, OPTS)
    const { stats } = run('ts', v, 200, 200, OPTS)
    expect(close(stats.std, ref.std, 1e-9)).toBe(true)
    expect(close(stats.kurtosis, ref.kurtosis, 1e-6)).toBe(true)
    // Naive sum/sumsq in float64 would lose the spread here: var = E[x²] − E[x]² ≈ 1e-6 next to 1e6.
    expect(stats.std).toBeGreaterThan(0.9e-3)
    expect(stats.std).toBeLessThan(1.1e-3)
  })

  it('all-NaN tensor: zeros for the moments, no histogram mass, no top-k', () => {
    const v = new Float32Array(12).fill(NaN)
    const { stats } = run('ts', v, 3, 4, OPTS)
    expect([stats.nan, stats.min, stats.max, stats.mean, stats.std, stats.kurtosis]).toEqual([12, 0, 0, 0, 0, 0])
    expect(stats.histogram.counts.every((c) => c === 0)).toBe(true)
    expect(stats.topK).toEqual([])
    expect(stats.heatmap.values.every((x) => x === 0)).toBe(true)
  })

  it('top-k ties go to the smaller index; -0 minimum is reported as 0', () => {
    const v = Float32Array.from([0.5, -0.5, 0.25, 0.5, -0, 0.1])
    const { stats } = run('ts', v, 2, 3, { bins: 4, topK: 3, heatmapSize: 2 })
    expect(stats.topK.map((t) => [t.index, t.value])).toEqual([
      [0, 0.5],
      [1, -0.5],
      [3, 0.5],
    ])
    const z = run('ts', Float32Array.from([-0, 0, 1]), 1, 3, OPTS).stats
    expect(Object.is(z.min, 0)).toBe(true)
  })

  it('rejects rows out of order and ragged chunks', () => {
    const acc = new ReferenceStatsAccumulator(4, 3, OPTS)
    expect(() => acc.addRows(new Float32Array(6), 1)).toThrow(/in order/)
    expect(() => acc.addRows(new Float32Array(5), 0)).toThrow(/whole number of rows/)
    expect(() => resolveStatsOptions({ bins: 0 })).toThrow(/bins/)
  })
})

describe.runIf(wasmStatsAvailable())('WASM stats kernel vs TS reference', () => {
  const variants: [string, ((x: number) => number) | undefined][] = [
    ['f32', undefined],
    ['f16', toF16],
    ['bf16', toBF16],
  ]
  for (const [rows, cols] of SHAPES) {
    for (const [name, round] of variants) {
      it(`${name} ${rows}×${cols}`, () => {
        const v = adversarial(rows, cols, rows * 7 + cols, round)
        for (const o of [OPTS, { bins: 7, topK: 0, heatmapSize: 1 }, { bins: 256, topK: 200, heatmapSize: 128 }]) {
          const ts = run('ts', v, rows, cols, o, 3)
          const wasm = run('wasm', v, rows, cols, o, 5)
          expect(wasm.twoPass).toBe(ts.twoPass)
          const { mean, std, kurtosis, heatmap, ...exact } = wasm.stats
          const { mean: m2, std: s2, kurtosis: k2, heatmap: h2, ...exact2 } = ts.stats
          expect(exact).toEqual(exact2)
          const meanAbs = float64Stats(v, rows, cols, o).meanAbs
          expect(close(mean, m2, 1e-6, 1e-7 * meanAbs), `mean ${mean} vs ${m2}`).toBe(true)
          expect(close(std, s2, 1e-6), `std ${std} vs ${s2}`).toBe(true)
          expect(close(kurtosis, k2, 1e-6), `kurtosis ${kurtosis} vs ${k2}`).toBe(true)
          expect([heatmap.rows, heatmap.cols]).toEqual([h2.rows, h2.cols])
          expect(maxRelDiff(heatmap.values, h2.values)).toBeLessThan(1e-6)
        }
      })
    }
  }

  it('matches float64 directly on a tensor larger than one kernel chunk', () => {
    const rows = 600
    const cols = 2053 // > 1M floats in all, and cols % 4 = 1
    const v = adversarial(rows, cols, 11, toF16)
    const { stats } = run('wasm', v, rows, cols, OPTS)
    expectMatchesFloat64(stats, v, rows, cols, OPTS, 1e-6)
  })

  it('keeps moments to ~1e-7 where float32 partial sums are delicate', () => {
    const r = rng(13)
    const cases: [string, Float32Array][] = [
      ['large mean, small spread', Float32Array.from({ length: 40_000 }, () => 1000 + r.normal() * 1e-3)],
      ['tiny values (d⁴ would underflow float32)', Float32Array.from({ length: 40_000 }, () => r.normal() * 1e-12)],
      ['huge values (d⁴ would overflow float32)', Float32Array.from({ length: 40_000 }, () => r.normal() * 1e20)],
      ['heavy tail', Float32Array.from({ length: 40_000 }, () => r.normal() ** 5)],
      ['constant', new Float32Array(40_000).fill(0.1)],
    ]
    for (const [name, v] of cases) {
      const ref = float64Stats(v, 200, 200, OPTS)
      const { stats } = run('wasm', v, 200, 200, OPTS)
      expect(close(stats.mean, ref.mean, 1e-7, 1e-7 * ref.meanAbs), `${name}: mean ${stats.mean} vs ${ref.mean}`).toBe(true)
      expect(close(stats.std, ref.std, 1e-7, 0), `${name}: std ${stats.std} vs ${ref.std}`).toBe(true)
      expect(close(stats.kurtosis, ref.kurtosis, 1e-6, 0), `${name}: kurtosis ${stats.kurtosis} vs ${ref.kurtosis}`).toBe(true)
    }
  })

  it('counts both zeros in the single-pass histogram whichever zero the minimum kept', () => {
    for (const v of [Float32Array.from([0, -0, 0.5]), Float32Array.from([-0, 0, -0.5]), Float32Array.from([0, -0]), Float32Array.from([-0, 0])]) {
      const ts = run('ts', v, 1, v.length, OPTS)
      const wasm = run('wasm', v, 1, v.length, OPTS)
      expect(wasm.twoPass).toBe(false)
      expect(wasm.stats.histogram.counts).toEqual(ts.stats.histogram.counts)
      expect(wasm.stats.histogram.counts.reduce((a, b) => a + b, 0)).toBe(v.length)
    }
  })

  it('reuses pooled instances without leaking state between tensors', () => {
    const a = adversarial(20, 30, 2)
    const b = adversarial(9, 8, 3, toBF16)
    const first = run('wasm', a, 20, 30, OPTS).stats
    run('wasm', b, 9, 8, OPTS)
    expect(run('wasm', a, 20, 30, OPTS).stats).toEqual(first)
  })
})

/** In-memory OpenedModel over one tensor, to test the streaming driver. */
function fakeModel(name: string, shape: number[], v: Float32Array, reads: [number, number][] = []): OpenedModel {
  const cols = shape[shape.length - 1]!
  return {
    // Not a file on disk: 'onnx' keeps computeTensorStats on readRows (no direct byte reads).
    format: 'onnx',
    files: ['/fake/model.safetensors'],
    architecture: null,
    config: null,
    metadata: {},
    tensors: [{ name, dtype: 'F32', shape, byteLength: v.length * 4, file: '/fake/model.safetensors', byteOffset: 0, decodable: true }],
    tokenizerPath: null,
    async readRows(_n, r0, r1) {
      reads.push([r0, r1])
      return v.slice(r0 * cols, r1 * cols)
    },
    async readRaw() {
      return new Uint8Array(v.buffer.slice(0))
    },
    async close() {},
  }
}

describe('computeTensorStats (streaming driver)', () => {
  const kinds: Kind[] = wasmStatsAvailable() ? ['ts', 'wasm'] : ['ts']
  for (const kernel of kinds) {
    it(`${kernel}: streams a 3-D tensor in row chunks, reports progress, matches float64`, async () => {
      const shape = [4, 25, 33]
      const v = adversarial(100, 33, 21)
      const reads: [number, number][] = []
      const progress: [number, number][] = []
      const s = await computeTensorStats(fakeModel('w', shape, v, reads), 'w', OPTS, {
        kernel,
        chunkFloats: 330,
        onProgress: (d, t) => progress.push([d, t]),
      })
      expectMatchesFloat64(s, v, 100, 33, OPTS, kernel === 'wasm' ? 1e-6 : 1e-9)
      // 10 rows per chunk, two passes (f32 values).
      expect(reads.length).toBe(20)
      expect(reads.every(([a, b]) => b - a <= 10)).toBe(true)
      expect(progress.at(-1)).toEqual([6600, 6600])
      for (let i = 1; i < progress.length; i++) expect(progress[i]![0]).toBeGreaterThan(progress[i - 1]![0])
    })
  }

  it('stops at a chunk border when the signal fires, with an AbortError', async () => {
    const v = adversarial(100, 10, 5)
    const ctl = new AbortController()
    const reads: [number, number][] = []
    const p = computeTensorStats(fakeModel('w', [100, 10], v, reads), 'w', OPTS, {
      chunkFloats: 10,
      onProgress: (d) => d >= 50 && ctl.abort(),
      signal: ctl.signal,
    })
    await expect(p).rejects.toMatchObject({ name: 'AbortError' })
    expect(reads.length).toBeLessThan(10)
  })

  it('names the file and tensor on unknown names and short reads', async () => {
    const v = new Float32Array(20)
    await expect(computeTensorStats(fakeModel('w', [4, 5], v), 'nope')).rejects.toThrow(ModelFormatError)
    const bad = fakeModel('w', [4, 5], v)
    bad.readRows = async () => new Float32Array(3)
    await expect(computeTensorStats(bad, 'w')).rejects.toThrow(/model\.safetensors: tensor 'w': reader returned 3 values/)
  })

  it('empty tensor gives zero stats without reading', async () => {
    const s = await computeTensorStats(fakeModel('e', [0, 8], new Float32Array(0)), 'e', OPTS)
    // Per-channel arrays and heatmap of an empty tensor are empty whatever its dims (a [2^29, 0] header must cost nothing).
    expect([s.rows, s.cols, s.count, s.rowAbsmax.length, s.colAbsmax.length, s.heatmap.values.length, s.histogram.counts.length]).toEqual([0, 8, 0, 0, 0, 0, 64])
  })
})

describe.runIf(wasmStatsAvailable())('direct byte path (WASM reads safetensors bytes itself)', () => {
  let dir = ''
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'quantscope-stats-direct-'))
  })
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it('gives exactly what readRows + the TS reference give, incl. every f16 bit pattern', async () => {
    const path = join(dir, 'direct.safetensors')
    const allHalves = new Uint16Array(65536).map((_, i) => i)
    const specs = [
      { name: 'every_f16', dtype: 'F16', shape: [256, 256] },
      { name: 'odd_f16', dtype: 'F16', shape: [37, 61] },
      { name: 'odd_bf16', dtype: 'BF16', shape: [3, 11, 13] },
      { name: 'odd_f32', dtype: 'F32', shape: [29, 7] },
      { name: 'row_f16', dtype: 'F16', shape: [1001] },
    ]
    await writeSafetensorsFile(path, specs, (spec, i) => {
      if (i === 0) return new Uint8Array(allHalves.buffer)
      const [rows, cols] = [spec.shape.slice(0, -1).reduce((a, b) => a * b, 1), spec.shape.at(-1)!]
      const v = adversarial(rows, cols, 40 + i)
      if (spec.dtype === 'F32') return new Uint8Array(v.buffer)
      return new Uint8Array(Uint16Array.from(v, (x) => (spec.dtype === 'F16' ? f16Bits(x) : bf16Bits(x))).buffer)
    })
    const model = await openModel(path)
    try {
      for (const { name } of specs) {
        const o = { bins: 97, topK: 40, heatmapSize: 9 }
        const progress: number[] = []
        const direct = await computeTensorStats(model, name, o, { kernel: 'wasm', chunkFloats: 5000, onProgress: (d) => progress.push(d) })
        const viaRows = await computeTensorStats(model, name, o, { kernel: 'ts', chunkFloats: 5000 })
        const { mean, std, kurtosis, heatmap, ...exact } = direct
        const { mean: m2, std: s2, kurtosis: k2, heatmap: h2, ...exact2 } = viaRows
        expect(exact, name).toEqual(exact2)
        expect(close(std, s2, 1e-6) && close(kurtosis, k2, 1e-6) && close(mean, m2, 1e-6, 1e-9), name).toBe(true)
        expect(maxRelDiff(heatmap.values, h2.values)).toBeLessThan(1e-6)
        expect(progress.length).toBeGreaterThan(0)
      }
      const every = await computeTensorStats(model, 'every_f16', {}, { kernel: 'wasm' })
      // 2 × 1023 NaN payloads, ±Inf, ±0; the rest are the 63486 finite non-zero halves.
      expect([every.nan, every.inf, every.zeros, every.min, every.max]).toEqual([2046, 2, 2, -65504, 65504])
      expect(every.histogram.counts.reduce((a, b) => a + b, 0)).toBe(65536 - 2048)
      expect(f16Value(0x0001)).toBe(2 ** -24) // sanity of the helper used above
      expect(bf16Value(0x3f80)).toBe(1)
    } finally {
      await model.close()
    }
  })

  it('GGUF F32/F16/BF16 tensors: direct reads equal readRows + the TS reference', async () => {
    const shapes: [number, number, number][] = [
      [0, 23, 5], // [rows, cols, ggml type]: F32
      [1, 45, 7], // F16
      [30, 9, 33], // BF16
    ].map(([type, rows, cols]) => [rows!, cols!, type!])
    const tensors = shapes.map(([rows, cols, type], i) => {
      const v = adversarial(rows, cols, 60 + i)
      const data =
        type === 0
          ? new Uint8Array(v.buffer)
          : new Uint8Array(Uint16Array.from(v, (x) => (type === 1 ? f16Bits(x) : bf16Bits(x))).buffer)
      return { name: `t${i}`, ne: [cols, rows], type, data }
    })
    const path = await writeGguf(dir, 'direct.gguf', { tensors })
    const model = await openModel(path)
    try {
      expect(model.format).toBe('gguf')
      for (const { name } of tensors) {
        const direct = await computeTensorStats(model, name, OPTS, { kernel: 'wasm', chunkFloats: 100 })
        const viaRows = await computeTensorStats(model, name, OPTS, { kernel: 'ts', chunkFloats: 100 })
        const { mean, std, kurtosis, heatmap, ...exact } = direct
        const { mean: m2, std: s2, kurtosis: k2, heatmap: h2, ...exact2 } = viaRows
        expect(exact, name).toEqual(exact2)
        expect(close(std, s2, 1e-6) && close(kurtosis, k2, 1e-6), name).toBe(true)
      }
    } finally {
      await model.close()
    }
  })

  it('names the file and tensor when the file is shorter than its header says', async () => {
    const path = join(dir, 'short.safetensors')
    await writeSafetensorsFile(path, [{ name: 'odd_f32', dtype: 'F32', shape: [500, 7] }], () => new Uint8Array(500 * 7 * 4))
    const model = await openModel(path)
    try {
      await truncate(path, 1000)
      await expect(computeTensorStats(model, 'odd_f32', {}, { kernel: 'wasm' })).rejects.toThrow(/short\.safetensors: tensor 'odd_f32': unexpected end of file/)
    } finally {
      await model.close()
    }
  })
})
