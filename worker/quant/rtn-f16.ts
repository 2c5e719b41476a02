/**
 * RTN straight from stored fp16 weights (a safetensors F16 tensor's bytes): the same tensor as
 * quantizeRtn of the decoded float32 weights, bit for bit, but the WASM kernel decodes each
 * chunk itself, so no float32 copy of the tensor is made and the TS decode is skipped — the
 * fast path of a whole-model RTN run (quant.worker.ts). Without the kernel, or for clip 'mse',
 * it decodes in TS and calls quantizeRtn.
 */
import { f16ToF32 } from '../formats/dtypes'
import { groupColumnsOrZero, type QuantizeHooks } from './contract'
import { F16Array, checkWeightShape } from './common'
import { type RtnParams, RtnTensor, quantizeRtn } from './rtn'
import { rtnQuantizeWasm, useWasmKernels } from './wasm-kernels'

export function quantizeRtnF16(bits: Uint16Array, rows: number, cols: number, params: RtnParams, hooks?: QuantizeHooks): RtnTensor {
  if (params.clip === 'none' && useWasmKernels(hooks?.kernel)) {
    const g = bits.length === rows * cols ? groupColumnsOrZero(cols, params.group) : 0
    if (g > 0) {
      const perRow = cols / g
      const scales = new F16Array(rows * perRow)
      const mins = params.sym ? null : new F16Array(rows * perRow)
      const packed = rtnQuantizeWasm(bits, rows, cols, params.bits, g, params.sym, scales, mins, hooks)
      if (packed) return new RtnTensor(rows, cols, params, g, packed, scales, mins, hooks?.kernel)
    }
  }
  // TS decode, then the TS checks and errors (shape, NaN/Inf, group, fp16 overflow).
  const weight = new Float32Array(bits.length)
  for (let i = 0; i < bits.length; i++) weight[i] = f16ToF32(bits[i]!)
  checkWeightShape(weight, rows, cols)
  return quantizeRtn(weight, rows, cols, params, hooks)
}
