import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { resolve } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { parseQuantSpec } from '../../worker/quant/spec'
import { quantErrorMetrics } from '../../worker/quant/metrics'

/**
 * The methods on real trained weights (the default model's first decoder layer): the weight
 * error ranks them as the any4 paper's perplexities do at g128 — any4 < NF4 < INT4 < FP4 — and
 * any3 beats 3-bit RTN. Each by at least 5%, so the order is not a coin toss.
 */
describe('default model, layer 0: weight error order of the methods', () => {
  let model: OpenedModel
  const weights: [Float32Array, number, number][] = []
  beforeAll(async () => {
    model = await openModel(resolve('resources/models/default'))
    for (const t of model.tensors) {
      if (!/^model\.layers\.0\..*_proj\.weight$/.test(t.name)) continue
      const [rows, cols] = t.shape as [number, number]
      weights.push([await model.readRows(t.name, 0, rows), rows, cols])
    }
  })
  afterAll(async () => {
    await model.close()
  })

  const sse = (spec: string) => {
    const { method, params } = parseQuantSpec(spec)
    let e = 0
    for (const [w, rows, cols] of weights) e += quantErrorMetrics(w, method.quantize(w, rows, cols, params)).mse * w.length
    return e
  }

  it('any4 < nf4 < rtn int4 < fp4, any3 < rtn int3 (group 128)', () => {
    expect(weights.length).toBe(7)
    const [any4, nf4, int4, fp4, any3, int3] = [
      'any4:group=128,weighting=weights',
      'nf4:group=128',
      'rtn:bits=4,group=128',
      'fp4:group=128',
      'any3:group=128,weighting=weights',
      'rtn:bits=3,group=128',
    ].map(sse) as [number, number, number, number, number, number]
    expect(any4).toBeLessThan(nf4 * 0.95)
    expect(nf4).toBeLessThan(int4 * 0.95)
    expect(int4).toBeLessThan(fp4 * 0.95)
    expect(any3).toBeLessThan(int3 * 0.95)
  })
})
