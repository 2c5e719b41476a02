/**
 * Every ggml tensor type a GGUF file can name: id → name, block size (elements per block),
 * bytes per block, and whether this build can dequantize it.
 *
 * Source: `enum ggml_type` in ggml/include/ggml.h (ids, names) and the `block_*` structs in
 * ggml/src/ggml-common.h (block sizes and byte sizes), llama.cpp master as of GGML_TYPE_COUNT
 * = 43 (last type Q2_0 = 42). Cross-checked against GGML_QUANT_SIZES in gguf-py's constants.py.
 * Names are gguf-py's `GGMLQuantizationType` names (upper case, `_K` suffix kept).
 *
 * Ids 31–33 and 36–38 (the repacked Q4_0_4_4 … IQ4_NL_8_8 layouts) were removed from GGUF
 * files in 2024 but files carrying them exist; they are listed (not decodable: their blocks are
 * interleaved across rows). Ids 4 and 5 (Q4_2, Q4_3) were removed before GGUF existed.
 *
 * `decodable` must match the decoders in gguf-dequant.ts; a unit test checks that it does.
 */

export interface GgmlTypeInfo {
  readonly id: number
  readonly name: string
  /** Elements per block (1 for plain types). */
  readonly blockSize: number
  /** Bytes per block. */
  readonly typeSize: number
  /** True when gguf-dequant.ts can turn it into float32. */
  readonly decodable: boolean
}

const QK_K = 256

// [id, name, blockSize, typeSize, decodable]
const TABLE: ReadonlyArray<readonly [number, string, number, number, boolean]> = [
  [0, 'F32', 1, 4, true],
  [1, 'F16', 1, 2, true],
  [2, 'Q4_0', 32, 2 + 16, true],
  [3, 'Q4_1', 32, 2 + 2 + 16, true],
  [6, 'Q5_0', 32, 2 + 4 + 16, true],
  [7, 'Q5_1', 32, 2 + 2 + 4 + 16, true],
  [8, 'Q8_0', 32, 2 + 32, true],
  // ggml has no dequantize_row_q8_1 (it only feeds dot products), so neither do we. Two fp16
  // halves since 2023 (36 bytes, static_assert in ggml-common.h); gguf-py still says 40.
  [9, 'Q8_1', 32, 2 + 2 + 32, false],
  [10, 'Q2_K', QK_K, QK_K / 16 + QK_K / 4 + 2 + 2, true],
  [11, 'Q3_K', QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, true],
  [12, 'Q4_K', QK_K, 2 + 2 + 12 + QK_K / 2, true],
  [13, 'Q5_K', QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, true],
  [14, 'Q6_K', QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, true],
  [15, 'Q8_K', QK_K, 4 + QK_K + (QK_K / 16) * 2, true],
  [16, 'IQ2_XXS', QK_K, 2 + QK_K / 4, false],
  [17, 'IQ2_XS', QK_K, 2 + QK_K / 4 + QK_K / 32, false],
  [18, 'IQ3_XXS', QK_K, 2 + (3 * QK_K) / 8, false],
  [19, 'IQ1_S', QK_K, 2 + QK_K / 8 + QK_K / 16, false],
  [20, 'IQ4_NL', 32, 2 + 16, false],
  [21, 'IQ3_S', QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4, false],
  [22, 'IQ2_S', QK_K, 2 + QK_K / 4 + QK_K / 16, false],
  [23, 'IQ4_XS', QK_K, 2 + 2 + QK_K / 64 + QK_K / 2, false],
  [24, 'I8', 1, 1, true],
  [25, 'I16', 1, 2, true],
  [26, 'I32', 1, 4, true],
  [27, 'I64', 1, 8, true],
  [28, 'F64', 1, 8, true],
  [29, 'IQ1_M', QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32, false],
  [30, 'BF16', 1, 2, true],
  [31, 'Q4_0_4_4', 32, 2 + 16, false],
  [32, 'Q4_0_4_8', 32, 2 + 16, false],
  [33, 'Q4_0_8_8', 32, 2 + 16, false],
  [34, 'TQ1_0', QK_K, (QK_K - (4 * QK_K) / 64) / 5 + QK_K / 64 + 2, false],
  [35, 'TQ2_0', QK_K, QK_K / 4 + 2, false],
  [36, 'IQ4_NL_4_4', 32, 2 + 16, false],
  [37, 'IQ4_NL_4_8', 32, 2 + 16, false],
  [38, 'IQ4_NL_8_8', 32, 2 + 16, false],
  [39, 'MXFP4', 32, 1 + 16, false],
  [40, 'NVFP4', 64, 4 + 32, false],
  [41, 'Q1_0', 128, 2 + 16, false],
  [42, 'Q2_0', 64, 2 + 16, false],
]

export const GGML_TYPES: ReadonlyMap<number, GgmlTypeInfo> = new Map(
  TABLE.map(([id, name, blockSize, typeSize, decodable]) => [
    id,
    Object.freeze({ id, name, blockSize, typeSize, decodable }),
  ]),
)

const BY_NAME: ReadonlyMap<string, GgmlTypeInfo> = new Map([...GGML_TYPES.values()].map((t) => [t.name, t]))

/** Ids ggml once used but dropped before GGUF; named in error messages only. */
export const GGML_REMOVED_TYPE_NAMES: Readonly<Record<number, string>> = Object.freeze({ 4: 'Q4_2', 5: 'Q4_3' })

export function ggmlTypeById(id: number): GgmlTypeInfo | undefined {
  return GGML_TYPES.get(id)
}

export function ggmlTypeByName(name: string): GgmlTypeInfo | undefined {
  return BY_NAME.get(name)
}

/** Bytes of `elements` consecutive values; `elements` must be a multiple of the block size. */
export function ggmlByteSize(type: GgmlTypeInfo, elements: number): number {
  return (elements / type.blockSize) * type.typeSize
}
