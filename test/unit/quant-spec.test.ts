import { describe, it, expect } from 'vitest'
import { QuantParamError } from '../../worker/quant/contract'
import { formatQuantSpec, parseQuantParams, parseQuantSpec } from '../../worker/quant/spec'
import { QUANT_METHODS } from '../../worker/quant/registry'

describe('registry', () => {
  it('holds every method under its id, any4/any3/any2 as their own names', () => {
    expect([...QUANT_METHODS.keys()].sort()).toEqual(['any2', 'any3', 'any4', 'awq', 'fp4', 'ggml', 'gptq', 'kmeans', 'nf4', 'rtn'])
    for (const [id, m] of QUANT_METHODS) expect(m.id).toBe(id)
    expect(QUANT_METHODS.get('any3')!.bits(parseQuantSpec('any3').params)).toBe(3)
  })
})

describe('METHOD[:key=value,...] specs', () => {
  it.each([
    ['rtn:bits=4,group=128,sym=false', 'rtn', { bits: 4, group: 128, sym: false, clip: 'none' }],
    ['rtn:bits=3,sym=true,clip=mse', 'rtn', { bits: 3, group: 128, sym: true, clip: 'mse' }],
    ['nf4:group=64', 'nf4', { group: 64 }],
    ['fp4:group=128', 'fp4', { group: 128 }],
    ['nf4', 'nf4', { group: 64 }],
    ['any4:group=128', 'any4', { group: 128, weighting: 'activations-scale', init: 'kmeans++', seed: 0, maxIter: 300, tol: 1e-4 }],
    ['any3:group=128,weighting=weights', 'any3', { group: 128, weighting: 'weights', init: 'kmeans++', seed: 0, maxIter: 300, tol: 1e-4 }],
    ['kmeans:bits=3,per=row,outliers=0.005', 'kmeans', { bits: 3, per: 'row', outliers: 0.005, init: 'kmeans++', seed: 0, maxIter: 300, tol: 1e-4 }],
    ['kmeans:bits = 2 , per=tensor ', 'kmeans', { bits: 2, per: 'tensor', outliers: 0, init: 'kmeans++', seed: 0, maxIter: 300, tol: 1e-4 }],
  ] as const)('%s', (spec, id, expected) => {
    const r = parseQuantSpec(spec)
    expect(r.method.id).toBe(id)
    expect(r.params).toEqual(expected)
    // formatQuantSpec writes every param; parsing that gives the same params back.
    const again = parseQuantSpec(formatQuantSpec(id, r.params))
    expect(again.params).toEqual(r.params)
  })

  it('formats every param in schema order', () => {
    expect(formatQuantSpec('rtn', parseQuantSpec('rtn:sym=true').params)).toBe('rtn:bits=4,group=128,sym=true,clip=none')
    expect(formatQuantSpec('nf4', {})).toBe('nf4')
    expect(() => formatQuantSpec('rtn', { clip: 'a,b' })).toThrow(/cannot be written/)
  })

  it.each([
    ['foo:bits=4', /unknown method 'foo' \(methods: rtn, nf4, fp4, any4, any3, any2, kmeans, gptq, awq, ggml\)/],
    ['rtn:bits=9', /'rtn:bits=9': bits: bits must be an integer from 2 to 8, got 9/],
    ['rtn:bits=1', /bits must be an integer from 2 to 8, got 1/],
    ['rtn:bits=4.5', /bits must be an integer from 2 to 8, got 4.5/],
    ['any4:bits=4', /unknown key 'bits' for any4 \(keys: group, weighting, init, seed, maxIter, tol\)/],
    ['rtn:grop=128', /unknown key 'grop' for rtn \(keys: bits, group, sym, clip\)/],
    ['rtn:sym=yes', /sym: sym must be true or false, got "yes"/],
    ['rtn:group=-1', /group must be a non-negative integer/],
    ['any3:weighting=activation', /weighting must be one of weights, activations, activations-scale, got "activation"/],
    ['kmeans:per=column', /per must be 'row' or 'tensor'/],
    ['rtn:bits', /'bits' is not key=value/],
    ['rtn:bits=', /'bits=' is not key=value/],
    ['rtn:bits=4,,group=32', /'' is not key=value/],
    ['rtn:bits=4,bits=3', /key 'bits' given twice/],
    ['rtn:', /nothing after ':'/],
    ['', /unknown method ''/],
  ])('%s → %s', (spec, message) => {
    expect(() => parseQuantSpec(spec)).toThrow(QuantParamError)
    expect(() => parseQuantSpec(spec)).toThrow(message)
  })

  it('validates plan-style param objects the same way', () => {
    const rtn = QUANT_METHODS.get('rtn')!
    expect(parseQuantParams(rtn, { bits: 2 })).toEqual({ bits: 2, group: 128, sym: false, clip: 'none' })
    expect(() => parseQuantParams(rtn, { bits: '4' })).toThrow(/bits must be a number/)
  })

  it('a group that does not divide the row is caught by storage() before any work', () => {
    const { method, params } = parseQuantSpec('nf4:group=48')
    expect(() => method.storage(4096, 4096, params)).toThrow(/group 48 does not divide the row length 4096/)
  })
})
