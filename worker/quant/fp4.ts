/**
 * FP4 E2M1 (OCP Microscaling Formats (MX) v1.0, §5.3.3 "FP4 (E2M1)"): sign, 2 exponent bits
 * (bias 1), 1 mantissa bit, no Inf/NaN; magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Absmax blocks
 * with the fp16 scale s = absmax / 6, so the block's largest magnitude lands on ±6.
 * Code = the E2M1 bit pattern S·EE·M (0b0000 = +0 … 0b0111 = 6, 0b1xxx negative); −0 (0b1000)
 * is never produced. Ties round to the even code (even mantissa), as IEEE-style float
 * conversion does. Note bitsandbytes' "fp4" is a different table (max 12 with a 0.0625
 * subnormal, normalised by 12); this is the OCP format.
 */
import { absmaxTableMethod, type AbsmaxTable } from './absmax-table'

export const E2M1_MAGNITUDES: readonly number[] = Object.freeze([0, 0.5, 1, 1.5, 2, 3, 4, 6])

export const FP4_TABLE: AbsmaxTable = Object.freeze({
  id: 'fp4',
  label: 'FP4 E2M1 (OCP MX, absmax blocks)',
  values: Float32Array.from([...E2M1_MAGNITUDES, ...E2M1_MAGNITUDES.map((x) => -x)]),
  ties: 'even-code',
  defaultGroup: 64,
})

export const fp4Method = absmaxTableMethod(FP4_TABLE)
