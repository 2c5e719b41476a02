import { describe, it, expect } from 'vitest'
import { readFileSync } from 'node:fs'
import * as v from 'valibot'
import { seededRandom } from '../../worker/inference/sampler'
import { ActivationValueError, topKOutliers } from '../../worker/quant/activations/orizuru'
import { orizuruWasmAvailable, topKOutliersWasm } from '../../worker/quant/activations/orizuru-wasm'
import { formatActivationSpec, intActSchema, kmeansActSchema, parseActivationSpec, type IntActParams, type KMeansActParams } from '../../worker/quant/activations/spec'
import { fakeQuantIntPerToken } from '../../worker/quant/activations/int-per-token'
import { dequantizeKMeansActivations, encodeKMeansActivations, fakeQuantKMeans, fitActivationCodebook } from '../../worker/quant/activations/kmeans-act'
import { dequantizeIndexWeight, indexMatmul, indexWeightFromAnyN, indexWeightFromKMeans, lutApply, type OpCounter } from '../../worker/quant/activations/index-compute'
import { ActivationCodebookFitter } from '../../worker/quant/activations/codebook-fitter'
import { blockLinearShapes, linearOpCounts, modelOpCounts } from '../../worker/quant/activations/op-counts'
import { quantizeKMeans, kmeansSchema } from '../../worker/quant/kmeans'
import { quantizeAnyN, anynSchema } from '../../worker/quant/anyn'

const U = 2 ** -53

/** Student-t(ν = 3) float32 values times a per-column scale: heavy tails and outlier channels, like LLM activations. */
function heavyTailed(rows: number, cols: number, seed: number): Float32Array {
  const rand = seededRandom(seed)
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand())
  const colScale = Float64Array.from({ length: cols }, (_, j) => (j % 37 === 5 ? 20 : 1) * (0.5 + rand()))
  const out = new Float32Array(rows * cols)
  for (let i = 0; i < rows * cols; i++) {
    const chi2 = gauss() ** 2 + gauss() ** 2 + gauss() ** 2
    out[i] = (gauss() / Math.sqrt(chi2 / 3)) * colScale[i % cols]!
  }
  return out
}

/** Reference split of a row by a stable ascending sort: first k are the smallest, last k the largest. */
function sortSplit(row: ArrayLike<number>, k: number): { min: number[]; max: number[] } {
  const idx = Array.from({ length: row.length }, (_, j) => j).sort((a, b) => row[a]! - row[b]! || a - b)
  return { min: idx.slice(0, k), max: idx.slice(idx.length - k).reverse() }
}

describe('Orizuru top-k outlier detector', () => {
  it('equals a full stable sort on random rows with many ties, ±0 and ±Infinity', () => {
    const rand = seededRandom(5)
    for (const [rows, cols] of [[7, 1], [9, 13], [5, 64], [3, 301]] as const) {
      const x = new Float32Array(rows * cols)
      for (let i = 0; i < x.length; i++) {
        const u = rand()
        // Few distinct values: ties everywhere; some −0, +0 and infinities.
        x[i] = u < 0.05 ? -0 : u < 0.08 ? Infinity : u < 0.1 ? -Infinity : Math.floor(rand() * 9) - 4 + (u < 0.5 ? 0 : rand())
      }
      for (const k of [0, 1, 2, 5, Math.floor(cols / 2)]) {
        if (2 * k > cols) continue
        const res = topKOutliers(x, rows, cols, k)
        for (let r = 0; r < rows; r++) {
          const row = x.subarray(r * cols, (r + 1) * cols)
          const ref = sortSplit(row, k)
          expect(Array.from(res.maxCols.subarray(r * k, (r + 1) * k)), `max cols r${r} k${k} cols${cols}`).toEqual(ref.max)
          expect(Array.from(res.minCols.subarray(r * k, (r + 1) * k)), `min cols r${r} k${k}`).toEqual(ref.min)
          expect(Array.from(res.maxValues.subarray(r * k, (r + 1) * k))).toEqual(ref.max.map((j) => row[j]))
          expect(Array.from(res.minValues.subarray(r * k, (r + 1) * k))).toEqual(ref.min.map((j) => row[j]))
          // Disjoint even when all values tie.
          expect(new Set([...ref.max, ...ref.min]).size).toBe(2 * k)
        }
      }
    }
    // All values equal: the smallest take the first columns, the largest the last.
    const flat = topKOutliers(new Float32Array(6).fill(3), 1, 6, 3)
    expect(Array.from(flat.minCols)).toEqual([0, 1, 2])
    expect(Array.from(flat.maxCols)).toEqual([5, 4, 3])
  })

  it('refuses NaN naming the tensor, row and column, and a k that makes the sides overlap', () => {
    const x = new Float32Array(4 * 10).fill(1)
    x[2 * 10 + 7] = NaN
    for (const k of [0, 2]) {
      const err = (() => {
        try {
          topKOutliers(x, 4, 10, k, 'blk.3.mlp.down_proj input')
        } catch (e) {
          return e
        }
      })()
      expect(err).toBeInstanceOf(ActivationValueError)
      expect((err as Error).message).toBe('blk.3.mlp.down_proj input: row 2, column 7: NaN in the activations (the top-k outlier detector cannot rank it)')
    }
    // NaN among the first k columns (the heap fill) too.
    x[2 * 10 + 7] = 1
    x[3 * 10] = NaN
    expect(() => topKOutliers(x, 4, 10, 3)).toThrow(/row 3, column 0: NaN/)
    expect(() => topKOutliers(new Float32Array(10), 1, 10, 6)).toThrow(/0 ≤ 2k ≤ cols \(10\).*got 6/)
    expect(() => topKOutliers(new Float32Array(9), 1, 10, 1)).toThrow(/9 values do not make \[1, 10\]/)
  })
})

describe.runIf(orizuruWasmAvailable())('Orizuru in WASM SIMD = the TS detector, element for element', () => {
  it('on ties, ±0, ±Infinity and heavy tails, for row lengths around the vector width and many k', () => {
    const rand = seededRandom(77)
    for (const cols of [2, 5, 8, 13, 64, 67, 1000]) {
      const rows = 9
      const x = cols === 1000 ? heavyTailed(rows, cols, 3) : new Float32Array(rows * cols)
      if (cols !== 1000) {
        for (let i = 0; i < x.length; i++) {
          const u = rand()
          x[i] = u < 0.05 ? -0 : u < 0.1 ? 0 : u < 0.12 ? Infinity : u < 0.14 ? -Infinity : Math.floor(rand() * 5) - 2
        }
      }
      for (const k of [1, 2, 3, 4, 5, 7, Math.floor(cols / 2)]) {
        if (2 * k > cols) continue
        const a = topKOutliers(x, rows, cols, k)
        const b = topKOutliersWasm(x, rows, cols, k)
        expect(b, `cols ${cols} k ${k}`).toEqual(a)
      }
    }
  })

  it('refuses NaN at the same row and column as the TS detector (heap fill, aligned head, vector body, tail)', () => {
    const cols = 23
    for (const col of [0, 2, 5, 9, 21, 22]) {
      const x = heavyTailed(4, cols, 8)
      x[3 * cols + col] = NaN
      expect(() => topKOutliersWasm(x, 4, cols, 3, 'up_proj input')).toThrow(`up_proj input: row 3, column ${col}: NaN`)
      expect(() => topKOutliers(x, 4, cols, 3, 'up_proj input')).toThrow(`up_proj input: row 3, column ${col}: NaN`)
    }
  })
})

describe('activation specs', () => {
  it('parses int and kmeans specs with defaults, and round-trips', () => {
    const a = parseActivationSpec('int:bits=4,outliers=4')
    expect(a).toEqual({ kind: 'int', params: { bits: 4, outliers: 4 } })
    const b = parseActivationSpec('kmeans:bits=4,outliers=4')
    expect(b).toEqual({ kind: 'kmeans', params: { bits: 4, outliers: 4, norm: 'absmax-non-outlier', init: 'kmeans++', seed: 0, maxIter: 300, tol: 1e-4 } })
    expect(parseActivationSpec('kmeans:norm=none,bits=3').params).toMatchObject({ norm: 'none', bits: 3, outliers: 0 })
    expect(parseActivationSpec('int')).toEqual({ kind: 'int', params: { bits: 8, outliers: 0 } })
    for (const s of [a, b, parseActivationSpec('kmeans:tol=1e-7,norm=none')]) expect(parseActivationSpec(formatActivationSpec(s))).toEqual(s)
  })

  it('rejects bad specs with the spec and key named', () => {
    expect(() => parseActivationSpec('fp8:bits=4')).toThrow("activation spec 'fp8:bits=4': unknown kind 'fp8' (kinds: int, kmeans)")
    expect(() => parseActivationSpec('kmeans:bits=9')).toThrow("activation spec 'kmeans:bits=9': bits: bits must be an integer from 1 to 8, got 9")
    expect(() => parseActivationSpec('int:outliers=1.5')).toThrow(/outliers: outliers must be a whole number.*got 1.5/)
    expect(() => parseActivationSpec('int:norm=none')).toThrow("activation spec 'int:norm=none': unknown key 'norm' for int (keys: bits, outliers)")
    expect(() => parseActivationSpec('kmeans:norm=rms')).toThrow(/norm must be one of absmax-non-outlier, none, got "rms"/)
    expect(() => parseActivationSpec('kmeans:bits=4,bits=3')).toThrow(/key 'bits' given twice/)
    expect(() => parseActivationSpec('kmeans:bits')).toThrow(/'bits' is not key=value/)
    expect(() => parseActivationSpec('kmeans:')).toThrow(/nothing after ':'/)
  })
})

const intParams = (p: Partial<IntActParams>) => v.parse(intActSchema, p)
const kmParams = (p: Partial<KMeansActParams>) => v.parse(kmeansActSchema, p)

/** Float64 per-token asymmetric INT reference, written from the definition. */
function intReference(x: Float32Array, rows: number, cols: number, bits: number, k: number): Float64Array {
  const out = new Float64Array(rows * cols)
  const qmax = 2 ** bits - 1
  for (let r = 0; r < rows; r++) {
    const row = Array.from(x.subarray(r * cols, (r + 1) * cols))
    const { min, max } = sortSplit(row, k)
    const skip = new Set([...min, ...max])
    const inl = row.filter((_, j) => !skip.has(j))
    const lo = Math.min(...inl)
    const s = (Math.max(...inl) - lo) / qmax
    row.forEach((val, j) => {
      out[r * cols + j] = skip.has(j) ? val : s === 0 ? lo : Math.min(qmax, Math.max(0, Math.round((val - lo) / s))) * s + lo
    })
  }
  return out
}

describe('per-token INT activations', () => {
  it('matches a float64 reference, with and without outliers; outliers bypass and leave the scale alone', () => {
    const rows = 24
    const cols = 96
    const x = heavyTailed(rows, cols, 11)
    for (const [bits, k] of [[4, 0], [4, 4], [8, 2], [2, 1]] as const) {
      const got = fakeQuantIntPerToken(x, rows, cols, intParams({ bits, outliers: k }), null, 'ts').values
      if (orizuruWasmAvailable()) expect(fakeQuantIntPerToken(x, rows, cols, intParams({ bits, outliers: k }), null, 'wasm').values).toEqual(got)
      const ref = intReference(x, rows, cols, bits, k)
      for (let i = 0; i < got.length; i++) expect(got[i], `bits ${bits} k ${k} at ${i}`).toBe(Math.fround(ref[i]!))
    }
    // Blow the outliers up by 1000×: they come back unchanged, every other value is as before.
    const k = 3
    const base = fakeQuantIntPerToken(x, rows, cols, intParams({ bits: 4, outliers: k }))
    const y = x.slice()
    for (let r = 0; r < rows; r++) {
      for (let t = r * k; t < (r + 1) * k; t++) {
        y[r * cols + base.outliers.maxCols[t]!]! *= 1000
        y[r * cols + base.outliers.minCols[t]!]! *= 1000
      }
    }
    const blown = fakeQuantIntPerToken(y, rows, cols, intParams({ bits: 4, outliers: k }))
    const isOut = new Set<number>()
    for (let t = 0; t < rows * k; t++) {
      isOut.add(Math.floor(t / k) * cols + base.outliers.maxCols[t]!)
      isOut.add(Math.floor(t / k) * cols + base.outliers.minCols[t]!)
    }
    for (let i = 0; i < x.length; i++) expect(blown.values[i]).toBe(isOut.has(i) ? y[i] : base.values[i])
  })

  it('refuses an infinite inlier and a k that leaves nothing to code', () => {
    const x = new Float32Array(2 * 8).fill(0.5)
    x[8 + 3] = Infinity
    expect(() => fakeQuantIntPerToken(x, 2, 8, intParams({ bits: 4 }), 'q_proj input')).toThrow('q_proj input: row 1, column 3: Infinity among the non-outlier values')
    expect(fakeQuantIntPerToken(x, 2, 8, intParams({ bits: 4, outliers: 1 })).values[8 + 3]).toBe(Infinity)
    expect(() => fakeQuantIntPerToken(x, 2, 8, intParams({ outliers: 4 }))).toThrow(/8 outliers per token leave no value of the 8/)
  })
})

/** Brute-force Lloyd (n × K distances, ties to the lower centroid, empty clusters stay) from `init`. */
function lloydReference(pool: number[], init: number[], iters: number): number[] {
  let c = init.slice()
  for (let it = 0; it < iters; it++) {
    const sum = new Array<number>(c.length).fill(0)
    const cnt = new Array<number>(c.length).fill(0)
    for (const x of pool) {
      let best = 0
      for (let q = 1; q < c.length; q++) if (Math.abs(x - c[q]!) < Math.abs(x - c[best]!)) best = q
      sum[best]! += x
      cnt[best]!++
    }
    const next = c.map((ci, q) => (cnt[q]! > 0 ? sum[q]! / cnt[q]! : ci)).sort((a, b) => a - b)
    if (next.every((n, q) => n === c[q])) break
    c = next
  }
  return c
}

describe('k-means activations', () => {
  const rows = 64
  const cols = 128
  const calib = heavyTailed(rows, cols, 21)
  const test = heavyTailed(32, cols, 22)

  it('fits the codebook on the normalised non-outliers only and codes to the nearest centroid (float64 reference)', () => {
    for (const norm of ['absmax-non-outlier', 'none'] as const) {
      const k = 2
      const params = kmParams({ bits: 3, outliers: k, norm, init: 'uniform', tol: 0, maxIter: 100 })
      const book = fitActivationCodebook(calib, rows, cols, params)
      // The pool, built from the definition.
      const pool: number[] = []
      for (let r = 0; r < rows; r++) {
        const row = Array.from(calib.subarray(r * cols, (r + 1) * cols))
        const { min, max } = sortSplit(row, k)
        const inl = row.filter((_, j) => !min.includes(j) && !max.includes(j))
        const n = norm === 'none' ? 1 : Math.max(...inl.map(Math.abs))
        for (const val of inl) pool.push(Math.fround(val / n))
      }
      expect(book.samples).toBe(pool.length)
      const lo = Math.min(...pool)
      const hi = Math.max(...pool)
      const ref = lloydReference(pool, Array.from({ length: 8 }, (_, q) => lo + ((hi - lo) * q) / 7), 100)
      const span = hi - lo
      for (let q = 0; q < 8; q++) expect(Math.abs(book.centroids[q]! - ref[q]!), `${norm} centroid ${q}`).toBeLessThan(1e-6 * span)
      // Coding: per token, nearest centroid of x/n (ties to the lower), decoded as C[q]·n in float64.
      const coded = encodeKMeansActivations(test, 32, cols, book)
      const deq = dequantizeKMeansActivations(coded, new Float64Array(32 * cols))
      const C = Array.from(book.centroids)
      for (let r = 0; r < 32; r++) {
        const row = Array.from(test.subarray(r * cols, (r + 1) * cols))
        const { min, max } = sortSplit(row, k)
        const out = new Set([...min, ...max])
        const n = norm === 'none' ? 1 : Math.max(...row.filter((_, j) => !out.has(j)).map(Math.abs))
        row.forEach((val, j) => {
          if (out.has(j)) return expect(deq[r * cols + j]).toBe(val)
          const d = C.map((c) => Math.abs(val / n - c))
          const q = d.indexOf(Math.min(...d))
          expect(deq[r * cols + j], `${norm} [${r}, ${j}]`).toBe(C[q]! * n)
        })
      }
    }
  })

  it('outliers bypass: they come back exactly and do not move the other values', () => {
    const k = 4
    const book = fitActivationCodebook(calib, rows, cols, kmParams({ bits: 4, outliers: k }))
    const base = encodeKMeansActivations(test, 32, cols, book)
    const y = test.slice()
    for (let t = 0; t < 32 * k; t++) {
      const r = Math.floor(t / k)
      y[r * cols + base.outliers.maxCols[t]!]! *= 50
      y[r * cols + base.outliers.minCols[t]!]! *= 50
    }
    const a = fakeQuantKMeans(test, 32, cols, book)
    const b = fakeQuantKMeans(y, 32, cols, book)
    let moved = 0
    for (let i = 0; i < a.length; i++) {
      if (y[i] !== test[i]) {
        expect(b[i]).toBe(y[i])
        moved++
      } else expect(b[i]).toBe(a[i])
    }
    expect(moved).toBe(32 * 2 * k)
  })

  it('a fitted codebook beats the per-token INT grid on heavy-tailed data (test tokens unseen in the fit)', () => {
    const mse = (q: Float32Array) => test.reduce((s, x, i) => s + (x - q[i]!) ** 2, 0) / test.length
    for (const k of [0, 4]) {
      const km = mse(fakeQuantKMeans(test, 32, cols, fitActivationCodebook(calib, rows, cols, kmParams({ bits: 4, outliers: k }))))
      const int = mse(fakeQuantIntPerToken(test, 32, cols, intParams({ bits: 4, outliers: k })).values)
      expect(km, `k=${k}: k-means ${km} vs int ${int}`).toBeLessThan((k === 0 ? 0.6 : 0.95) * int)
    }
  })
})

describe('index-based compute', () => {
  const cols = 160
  const rows = 24
  const tokens = 6
  const act = heavyTailed(tokens, cols, 31)
  const rand = seededRandom(9)
  const w = Float32Array.from({ length: rows * cols }, () => (rand() - 0.5) * 0.1 * (rand() < 0.01 ? 10 : 1))

  /** Float64 dense reference and the summation-order tolerance: n·u bounds each sum's relative error. */
  function checkAgainstDense(W: Float64Array, X: Float64Array, y: Float64Array, KA: number): void {
    for (let t = 0; t < tokens; t++) {
      for (let i = 0; i < rows; i++) {
        let ref = 0
        let mag = 0
        for (let j = 0; j < cols; j++) {
          ref += W[i * cols + j]! * X[t * cols + j]!
          mag += Math.abs(W[i * cols + j]! * X[t * cols + j]!)
        }
        // Dense: ≤ cols·u·mag; index: ≤ (cols + KA + 2)·u·mag (bins, combine, normaliser, side path).
        const tol = 1.01 * (2 * cols + KA + 2) * U * mag
        expect(Math.abs(y[t * rows + i]! - ref), `token ${t} row ${i}`).toBeLessThanOrEqual(tol)
      }
    }
  }

  for (const [label, make] of [
    ['k-means weight (per-row codebook, 2% fp16 outliers)', () => indexWeightFromKMeans(quantizeKMeans(w, rows, cols, v.parse(kmeansSchema, { bits: 4, outliers: 0.02 })))],
    ['any4 weight (per-row LUT, group 32)', () => indexWeightFromAnyN(quantizeAnyN('any4', 4, w, rows, cols, v.parse(anynSchema, { group: 32, weighting: 'weights' })))],
  ] as const) {
    it(`${label} × k-means activations equals dequantise-then-matmul; op counts as predicted`, () => {
      const W = make()
      const Wd = dequantizeIndexWeight(W)
      // The index weight decodes to what the quantizer's own dequantisation gives.
      const own = label.startsWith('k-means') ? quantizeKMeans(w, rows, cols, v.parse(kmeansSchema, { bits: 4, outliers: 0.02 })) : quantizeAnyN('any4', 4, w, rows, cols, v.parse(anynSchema, { group: 32, weighting: 'weights' }))
      expect(Array.from(Wd)).toEqual(Array.from(own.dequantizeRows(0, rows)))
      for (const norm of ['absmax-non-outlier', 'none'] as const) {
        for (const k of [0, 3]) {
          const book = fitActivationCodebook(act, tokens, cols, kmParams({ bits: 4, outliers: k, norm }))
          const coded = encodeKMeansActivations(act, tokens, cols, book)
          const count: OpCounter = { mul: 0, add: 0 }
          const y = indexMatmul(W, coded, count)
          checkAgainstDense(Wd, dequantizeKMeansActivations(coded, new Float64Array(tokens * cols)), y, 16)
          const predicted = linearOpCounts({ name: 'x', rows, cols }, { bits: 4, outliers: k, normalised: norm !== 'none' }, tokens).index
          expect(count).toEqual(predicted)
        }
      }
    })
  }

  it('the per-centroid SiLU LUT equals SiLU of the dequantised values, with K (+2k) evaluations per token', () => {
    const siluRef = (x: number) => x * (1 / (1 + Math.exp(-x)))
    for (const norm of ['absmax-non-outlier', 'none'] as const) {
      const k = 2
      const book = fitActivationCodebook(act, tokens, cols, kmParams({ bits: 3, outliers: k, norm }))
      const coded = encodeKMeansActivations(act, tokens, cols, book)
      const evals = { count: 0 }
      const got = lutApply(coded, undefined, evals)
      const deq = dequantizeKMeansActivations(coded, new Float64Array(tokens * cols))
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i]! - siluRef(deq[i]!))).toBeLessThanOrEqual(4 * U * Math.abs(siluRef(deq[i]!)))
      expect(evals.count).toBe(norm === 'none' ? 8 + tokens * 2 * k : tokens * (8 + 2 * k))
    }
  })

  it('a token whose non-outliers are all zero decodes to zero: matmul = the outliers alone, SiLU LUT = one f(0)', () => {
    const k = 2
    const book = fitActivationCodebook(act, tokens, cols, kmParams({ bits: 3, outliers: k }))
    const x = act.slice(0, 2 * cols)
    x.fill(0, 0, cols)
    ;[x[3], x[50], x[7], x[99]] = [5, 4, -6, -3]
    const coded = encodeKMeansActivations(x, 2, cols, book)
    expect(coded.norms[0]).toBe(0)
    const W = indexWeightFromKMeans(quantizeKMeans(w, rows, cols, v.parse(kmeansSchema, { bits: 4 })))
    const Wd = dequantizeIndexWeight(W)
    const y = indexMatmul(W, coded)
    for (let i = 0; i < rows; i++) {
      const terms = [5 * Wd[i * cols + 3]!, 4 * Wd[i * cols + 50]!, -6 * Wd[i * cols + 7]!, -3 * Wd[i * cols + 99]!]
      const ref = terms.reduce((a, b) => a + b)
      expect(Math.abs(y[i]! - ref)).toBeLessThanOrEqual(8 * U * terms.reduce((a, b) => a + Math.abs(b), 0))
    }
    const evals = { count: 0 }
    const s = lutApply(coded, undefined, evals)
    const expected = new Array<number>(cols).fill(0)
    for (const [j, val] of [[3, 5], [50, 4], [7, -6], [99, -3]] as const) expected[j] = val / (1 + Math.exp(-val))
    expect(Array.from(s.subarray(0, cols))).toEqual(expected)
    expect(evals.count).toBe(1 + 2 * k + 8 + 2 * k)
  })

  it('whole-model counts for the default model (hand-computed)', () => {
    const cfg = JSON.parse(readFileSync('resources/models/default/config.json', 'utf8'))
    const config = {
      hiddenSize: cfg.hidden_size,
      intermediateSize: cfg.intermediate_size,
      numLayers: cfg.num_hidden_layers,
      numHeads: cfg.num_attention_heads,
      numKvHeads: cfg.num_key_value_heads,
      headDim: cfg.head_dim,
      vocabSize: cfg.vocab_size,
    }
    expect(blockLinearShapes(config).map((s) => [s.rows, s.cols])).toEqual([[256, 256], [128, 256], [128, 256], [256, 256], [768, 256], [768, 256], [256, 768]])
    const m = modelOpCounts(config, 4, { bits: 4, outliers: 4, normalised: true })
    // Per token: Σ rows·cols over a block = 786,432, × 8 layers = 6,291,456 multiplies; outputs
    // 2,560 per block, 20,480 in all; index multiplies 20,480 × (16 + 8 + 1) = 512,000; adds
    // dense 6,291,456 − 20,480, index 6,291,456 + 15 × 20,480.
    expect(m.total.dense).toEqual({ mul: 6_291_456, add: 6_270_976 })
    expect(m.total.index).toEqual({ mul: 512_000, add: 6_598_656 })
    expect(m.silu).toEqual({ dense: 8 * 768, lut: 8 * 24 })
    expect(m.label).toBe('W4A4 (k-means, 4 outliers/side, per-token absmax)')
    const withHead = modelOpCounts(config, 4, { bits: 4, outliers: 4, normalised: true }, { tokens: 2, lmHead: true })
    expect(withHead.total.dense.mul).toBe(2 * (6_291_456 + 8192 * 256))
  })
})

describe('streaming codebook fit (fp16 counts per layer input)', () => {
  const cols = 128
  const calib = heavyTailed(96, cols, 41)

  it('batches and merged fitters give the same counts as one pass, and the centroids of the one-shot fit within fp16 precision', () => {
    for (const norm of ['absmax-non-outlier', 'none'] as const) {
      const params = kmParams({ bits: 4, outliers: 3, norm, init: 'quantile', tol: 0, maxIter: 200 })
      const one = new ActivationCodebookFitter(params).add(calib, 96, cols)
      const a = new ActivationCodebookFitter(params).add(calib.subarray(0, 40 * cols), 40, cols).add(calib.subarray(40 * cols, 70 * cols), 30, cols)
      const b = new ActivationCodebookFitter(params).add(calib.subarray(70 * cols), 26, cols)
      a.merge(b)
      expect(Array.from(a.counts)).toEqual(Array.from(one.counts))
      expect([a.tokens, a.samples]).toEqual([96, 96 * (cols - 6)])
      const streamed = one.fit()
      const exact = fitActivationCodebook(calib, 96, cols, params)
      expect(streamed.samples).toBe(exact.samples)
      // Every counted value is a pooled one rounded to fp16 (≤ 2⁻¹¹ relative), so each centroid,
      // a mean of them, moves by about that much; 2⁻⁹ leaves room for the odd point near a
      // midpoint that lands in the other cluster. Skipping the outliers or the norm is far off.
      const scale = Math.max(...Array.from(exact.centroids, Math.abs))
      for (let q = 0; q < 16; q++) expect(Math.abs(streamed.centroids[q]! - exact.centroids[q]!), `${norm} centroid ${q}`).toBeLessThan(2 ** -9 * scale)
    }
    expect(() => new ActivationCodebookFitter(kmParams({ bits: 4 })).merge(new ActivationCodebookFitter(kmParams({ bits: 3 })))).toThrow(/different params/)
  })

  it('refuses raw values beyond fp16 with norm none, naming the token across batches', () => {
    const f = new ActivationCodebookFitter(kmParams({ bits: 2, norm: 'none' }), 'down_proj input').add(new Float32Array(2 * 8).fill(1), 2, 8)
    const x = new Float32Array(8).fill(1)
    x[5] = 1e6
    expect(() => f.add(x, 1, 8)).toThrow('down_proj input: row 2, column 5: 1000000 is beyond the fp16 range')
  })
})
