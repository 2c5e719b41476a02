/**
 * NF4 (QLoRA's 4-bit NormalFloat): absmax blocks onto 16 quantiles of N(0, 1) normalised to
 * [−1, 1], with an exact zero. Table copied from bitsandbytes, `get_4bit_type('nf4')` in
 * bitsandbytes/functional.py (the same constants as `nf4_dequantization_lut` in csrc/kernels.cu);
 * code = table index, as bitsandbytes packs it. Ties go to the lower value, as bitsandbytes'
 * decision tree (`x > midpoint` → upper) does. The scale (absmax) is stored as fp16 here
 * (bitsandbytes keeps fp32 or double-quantized absmax).
 */
import { absmaxTableMethod, type AbsmaxTable } from './absmax-table'

export const NF4_VALUES: readonly number[] = Object.freeze([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])

export const NF4_TABLE: AbsmaxTable = Object.freeze({
  id: 'nf4',
  label: 'NF4 (NormalFloat 4-bit, absmax blocks)',
  values: Float32Array.from(NF4_VALUES),
  ties: 'lower',
  defaultGroup: 64,
})

export const nf4Method = absmaxTableMethod(NF4_TABLE)
