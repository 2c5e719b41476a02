/**
 * compressed-tensors `pack-quantized` checkpoints (the layout llm-compressor writes and vLLM
 * reads): a Hugging Face folder whose config.json carries
 *   quantization_config: { quant_method: 'compressed-tensors', format: 'pack-quantized',
 *     config_groups: { group_0: { targets: [...], weights: { num_bits, type: 'int', symmetric,
 *       strategy: 'group' | 'channel', group_size } } }, ignore: [...] }
 * and, for each quantized Linear `P`, instead of `P.weight`:
 *   P.weight_packed      int32 [out, ceil(in / (32/bits))]: signed codes q ∈ [−2^(b−1), 2^(b−1)),
 *                        stored as q + 2^(b−1), 32/bits of them per int32, first in the low bits
 *   P.weight_scale       [out, groups] float (fp16, bf16 or fp32)
 *   P.weight_zero_point  int32 [ceil(out / (32/bits)), groups], packed along the rows the same
 *                        way (asymmetric only; symmetric grids have zero point 0)
 *   P.weight_shape       int [2] = [out, in]
 * and dequantization ŵ = (q − z)·scale (compressed_tensors/compressors/quantized_compressors/
 * pack_quantized.py: pack_to_int32, unpack_from_int32; quantization/lifecycle/forward.py).
 *
 * The HF folder reader adds one virtual entry `P.weight` per such module (derivedFrom its
 * parts), decoded by the rows here, so the app inspects, evaluates and re-exports the folder
 * like any model. The decoded values are float32 products of the stored scale and a small
 * integer, so they are exact: the same bits the exporting plan evaluated.
 */
import { ModelFormatError } from '../../common/errors'
import type { OpenedModel, TensorEntry } from '../contract'
import { decodePlain } from '../dtypes'

export interface PackedIntArgs {
  bits: number
  symmetric: boolean
  /** Columns per group; the whole row for strategy 'channel'. */
  groupCols: number
}

/** Codes per int32. */
export function packFactor(bits: number): number {
  return Math.floor(32 / bits)
}

/**
 * Packs unsigned codes (q + 2^(b−1), one byte each) of a [rows, cols] matrix along `dim`:
 * dim 1 → [rows, ceil(cols/f)] (weights), dim 0 → [ceil(rows/f), cols] (zero points).
 */
export function packInt32(codes: Uint8Array, rows: number, cols: number, bits: number, dim: 0 | 1): Int32Array {
  const f = packFactor(bits)
  if (dim === 1) {
    const pc = Math.ceil(cols / f)
    const out = new Uint32Array(rows * pc)
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) out[r * pc + Math.floor(c / f)]! |= codes[r * cols + c]! << (bits * (c % f))
    }
    return new Int32Array(out.buffer)
  }
  const pr = Math.ceil(rows / f)
  const out = new Uint32Array(pr * cols)
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[Math.floor(r / f) * cols + c]! |= codes[r * cols + c]! << (bits * (r % f))
  }
  return new Int32Array(out.buffer)
}

/** The unsigned code (q + 2^(b−1)) at (r, c) of a matrix packed by packInt32. */
function unpackedAt(packed: Uint32Array, packedCols: number, r: number, c: number, bits: number, dim: 0 | 1): number {
  const f = packFactor(bits)
  const mask = (1 << bits) - 1
  return dim === 1 ? (packed[r * packedCols + Math.floor(c / f)]! >>> (bits * (c % f))) & mask : (packed[Math.floor(r / f) * packedCols + c]! >>> (bits * (r % f))) & mask
}

interface ConfigGroup {
  targets: string[]
  args: { bits: number; symmetric: boolean; strategy: string; groupSize: number | null }
}

/** The config groups of a compressed-tensors pack-quantized config, or null for other configs. */
function packQuantizedGroups(config: unknown, configPath: string): { groups: ConfigGroup[]; ignore: string[] } | null {
  const q = (config as { quantization_config?: Record<string, unknown> } | null)?.quantization_config
  if (!q || q.quant_method !== 'compressed-tensors') return null
  if (q.format !== 'pack-quantized') {
    throw new ModelFormatError(configPath, null, `compressed-tensors format '${String(q.format)}' is not supported by this build (only 'pack-quantized')`)
  }
  const groups: ConfigGroup[] = []
  for (const [name, raw] of Object.entries((q.config_groups ?? {}) as Record<string, Record<string, unknown>>)) {
    const w = raw?.weights as Record<string, unknown> | null | undefined
    if (!w) continue
    const bits = w.num_bits
    if (w.type !== 'int' || typeof bits !== 'number' || !Number.isInteger(bits) || bits < 1 || bits > 8) {
      throw new ModelFormatError(configPath, null, `quantization_config.config_groups.${name}.weights: only integer weights of 1–8 bits are supported (type ${String(w.type)}, num_bits ${String(bits)})`)
    }
    if (w.strategy !== 'group' && w.strategy !== 'channel') {
      throw new ModelFormatError(configPath, null, `quantization_config.config_groups.${name}.weights: strategy '${String(w.strategy)}' is not supported (group or channel)`)
    }
    if (w.actorder === 'group' || w.actorder === true) {
      throw new ModelFormatError(configPath, null, `quantization_config.config_groups.${name}.weights: activation-ordered groups (weight_g_idx) are not supported`)
    }
    const targets = Array.isArray(raw.targets) ? raw.targets.map(String) : []
    groups.push({ targets, args: { bits, symmetric: w.symmetric !== false, strategy: w.strategy, groupSize: typeof w.group_size === 'number' ? w.group_size : null } })
  }
  const ignore = Array.isArray(q.ignore) ? q.ignore.map(String) : []
  return { groups, ignore }
}

function targetMatches(target: string, module: string): boolean {
  if (target.startsWith('re:')) return new RegExp(target.slice(3)).test(module)
  // A class name ('Linear') matches every module here: only Linear weights are packed.
  return target === module || target === 'Linear'
}

/** The [out, in] a weight_shape tensor stores (int64 or int32). */
async function readWeightShape(model: OpenedModel, entry: TensorEntry): Promise<[number, number]> {
  const raw = (await model.readRaw(entry.name)).slice()
  const dims = entry.dtype === 'I64' ? Array.from(new BigInt64Array(raw.buffer), Number) : Array.from(new Int32Array(raw.buffer))
  if (dims.length !== 2 || !dims.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new ModelFormatError(entry.file, entry.name, `weight_shape holds [${dims.join(', ')}], expected two positive dimensions`)
  }
  return dims as [number, number]
}

interface PackedWeight {
  entry: TensorEntry
  args: PackedIntArgs
  packed: TensorEntry
  scale: TensorEntry
  zero: TensorEntry | null
}

/**
 * Adds the virtual `P.weight` entries of a pack-quantized folder to an opened safetensors
 * model and routes their reads to the decoder below. No-op for other configs. Every
 * inconsistency between config, parts and shapes is an error naming the tensor, at open time.
 */
export async function attachPackQuantized(model: OpenedModel, config: unknown, configPath: string): Promise<void> {
  const parsed = packQuantizedGroups(config, configPath)
  if (!parsed) return
  const byName = new Map(model.tensors.map((t) => [t.name, t]))
  const virtual = new Map<string, PackedWeight>()
  for (const packed of model.tensors) {
    if (!packed.name.endsWith('.weight_packed')) continue
    const prefix = packed.name.slice(0, -'.weight_packed'.length)
    const name = `${prefix}.weight`
    const fail = (problem: string) => new ModelFormatError(packed.file, name, problem)
    const scale = byName.get(`${prefix}.weight_scale`)
    const shapeEntry = byName.get(`${prefix}.weight_shape`)
    const zero = byName.get(`${prefix}.weight_zero_point`) ?? null
    if (!scale || !shapeEntry) throw fail('weight_packed without weight_scale and weight_shape')
    if (byName.has(name)) throw fail('stored both plain and packed')
    if (parsed.ignore.includes(prefix)) throw fail('is packed but listed in quantization_config.ignore')
    const group = parsed.groups.find((g) => g.targets.some((t) => targetMatches(t, prefix)))
    if (!group) throw fail(`no quantization_config.config_groups entry targets module '${prefix}'`)
    if (packed.dtype !== 'I32' || packed.shape.length !== 2) throw fail(`weight_packed is ${packed.dtype} [${packed.shape.join(', ')}], expected a 2-D I32 tensor`)
    if (!['F16', 'BF16', 'F32'].includes(scale.dtype) || scale.shape.length !== 2) throw fail(`weight_scale is ${scale.dtype} [${scale.shape.join(', ')}], expected a 2-D F16, BF16 or F32 tensor`)
    if (!['I64', 'I32'].includes(shapeEntry.dtype)) throw fail(`weight_shape is ${shapeEntry.dtype}, expected I64 or I32`)
    const { bits, symmetric } = group.args
    if (symmetric === (zero !== null)) throw fail(symmetric ? 'a symmetric config group, but a weight_zero_point is stored' : 'an asymmetric config group, but no weight_zero_point is stored')
    const [rows, cols] = await readWeightShape(model, shapeEntry)
    const f = packFactor(bits)
    if (rows !== packed.shape[0] || Math.ceil(cols / f) !== packed.shape[1]) {
      throw fail(`weight_shape [${rows}, ${cols}] does not fit weight_packed [${packed.shape.join(', ')}] at ${bits} bits`)
    }
    const groups = scale.shape[1]!
    if (scale.shape[0] !== rows || groups < 1 || cols % groups !== 0) throw fail(`weight_scale [${scale.shape.join(', ')}] does not fit [${rows}, ${cols}]`)
    if (group.args.strategy === 'channel' && groups !== 1) throw fail(`strategy 'channel' but weight_scale has ${groups} groups per row`)
    if (group.args.strategy === 'group' && group.args.groupSize !== null && cols / groups !== group.args.groupSize) {
      throw fail(`group_size ${group.args.groupSize} but weight_scale has ${groups} groups of ${cols / groups} columns`)
    }
    if (zero && (zero.dtype !== 'I32' || zero.shape[0] !== Math.ceil(rows / f) || zero.shape[1] !== groups)) {
      throw fail(`weight_zero_point ${zero.dtype} [${zero.shape.join(', ')}] does not fit ${groups} groups of ${rows} rows packed at ${bits} bits`)
    }
    virtual.set(name, {
      entry: {
        name,
        dtype: `CT_PACKED_INT${bits}`,
        shape: [rows, cols],
        byteLength: packed.byteLength + scale.byteLength + (zero?.byteLength ?? 0) + shapeEntry.byteLength,
        file: packed.file,
        byteOffset: packed.byteOffset,
        decodable: true,
        derivedFrom: [packed.name, scale.name, ...(zero ? [zero.name] : []), shapeEntry.name],
      },
      args: { bits, symmetric, groupCols: cols / groups },
      packed,
      scale,
      zero,
    })
  }
  if (virtual.size === 0) return
  model.tensors.push(...[...virtual.values()].map((v) => v.entry))
  const readRows = model.readRows.bind(model)
  const readRows64 = model.readRows64?.bind(model)
  model.readRows = (name, r0, r1) => {
    const v = virtual.get(name)
    return v ? decodePackedRows(model, v, r0, r1) : readRows(name, r0, r1)
  }
  if (readRows64) {
    model.readRows64 = async (name, r0, r1) => {
      const v = virtual.get(name)
      return v ? Float64Array.from(await decodePackedRows(model, v, r0, r1)) : readRows64(name, r0, r1)
    }
  }
  model.metadata = { ...model.metadata, quantization: 'compressed-tensors pack-quantized' }
}

/** The last weight's stored parts: readers of row ranges (statistics) ask for one weight many times in a row. */
let lastParts: { model: OpenedModel; name: string; packed: Uint32Array; scales: Float32Array; zeros: Uint32Array | null } | null = null

async function storedParts(model: OpenedModel, v: PackedWeight): Promise<{ packed: Uint32Array; scales: Float32Array; zeros: Uint32Array | null }> {
  if (lastParts && lastParts.model === model && lastParts.name === v.entry.name) return lastParts
  const packed = new Uint32Array((await model.readRaw(v.packed.name)).slice().buffer)
  const scales = decodePlain(v.scale.dtype as 'F16', await model.readRaw(v.scale.name), new Float32Array(v.scale.shape[0]! * v.scale.shape[1]!))
  const zeros = v.zero ? new Uint32Array((await model.readRaw(v.zero.name)).slice().buffer) : null
  lastParts = { model, name: v.entry.name, packed, scales, zeros }
  return lastParts
}

/** ŵ = (q − z)·scale for rows [r0, r1): float32 products of a stored scale and a small integer (exact). */
async function decodePackedRows(model: OpenedModel, v: PackedWeight, r0: number, r1: number): Promise<Float32Array> {
  const [rows, cols] = v.entry.shape as [number, number]
  if (!(Number.isInteger(r0) && Number.isInteger(r1) && 0 <= r0 && r0 <= r1 && r1 <= rows)) {
    throw new RangeError(`${v.entry.name}: rows [${r0}, ${r1}) outside [0, ${rows})`)
  }
  const groups = v.scale.shape[1]!
  const { packed, scales, zeros } = await storedParts(model, v)
  const { bits, groupCols } = v.args
  const offset = 1 << (bits - 1)
  const packedCols = v.packed.shape[1]!
  const out = new Float32Array((r1 - r0) * cols)
  for (let r = r0; r < r1; r++) {
    for (let g = 0; g < groups; g++) {
      const scale = scales[r * groups + g]!
      const z = zeros ? unpackedAt(zeros, groups, r, g, bits, 0) - offset : 0
      for (let c = g * groupCols; c < (g + 1) * groupCols; c++) {
        out[(r - r0) * cols + c] = (unpackedAt(packed, packedCols, r, c, bits, 1) - offset - z) * scale
      }
    }
  }
  return out
}
