import { matrixShape, type OpenedModel } from '../formats/contract'
import { ModelFormatError } from '../common/errors'
import type { DecoderSpec } from './decoder-spec'
import { unpermuteGgufRows } from './gguf-layout'

/**
 * Produces dequantised float32 rows [rowStart, rowEnd) of a tensor viewed as [rows, cols],
 * exactly like OpenedModel.readRows. A quantizer plugs in here without materialising a
 * quantized file: the variant is the base model with some tensors replaced.
 */
export type RowProducer = (rowStart: number, rowEnd: number) => Float32Array | Promise<Float32Array>

/**
 * A variant = base model + overrides. Keys are tensor names exactly as stored in the model
 * (e.g. `model.layers.3.mlp.down_proj.weight` or `blk.3.ffn_down.weight`); values are in the
 * stored layout (same rows as readRows), so GGUF q/k un-permutation still applies after them.
 */
export type WeightOverrides = ReadonlyMap<string, Float32Array | RowProducer>

/** Rows read per call, so a producer or a dequantizer never has to hold more than ~64 MB. */
const CHUNK_BYTES = 64 << 20

/** The whole tensor as float32 [rows·cols], from the override if there is one. */
export async function readTensor(model: OpenedModel, name: string, overrides?: WeightOverrides, signal?: AbortSignal): Promise<Float32Array> {
  const entry = model.tensors.find((t) => t.name === name)
  if (!entry) throw new ModelFormatError(model.files[0] ?? '(model)', name, 'no such tensor')
  const { rows, cols } = matrixShape(entry.shape)
  const override = overrides?.get(name)
  if (override instanceof Float32Array) {
    if (override.length !== rows * cols) {
      throw new ModelFormatError(entry.file, name, `override has ${override.length} values; the tensor [${entry.shape.join(', ')}] has ${rows * cols}`)
    }
    return override
  }
  const read = override ?? ((r0: number, r1: number) => model.readRows(name, r0, r1))
  const out = new Float32Array(rows * cols)
  const step = Math.max(1, Math.floor(CHUNK_BYTES / 4 / Math.max(cols, 1)))
  for (let r = 0; r < rows; r += step) {
    signal?.throwIfAborted()
    const r1 = Math.min(rows, r + step)
    const part = await read(r, r1)
    if (!(part instanceof Float32Array) || part.length !== (r1 - r) * cols) {
      throw new ModelFormatError(entry.file, name, `${override ? 'override producer' : 'reader'} returned ${part?.length ?? 'nothing'} values for rows [${r}, ${r1}); expected ${(r1 - r) * cols}`)
    }
    out.set(part, r * cols)
  }
  return out
}

/** q/k weights (or biases) in HF row order, undoing llama.cpp's permutation for GGUF llama files. */
export async function readAttentionTensor(
  model: OpenedModel,
  spec: DecoderSpec,
  name: string,
  kind: 'q' | 'k',
  overrides?: WeightOverrides,
  signal?: AbortSignal,
): Promise<Float32Array> {
  const data = await readTensor(model, name, overrides, signal)
  if (!spec.qkPermuted) return data
  const heads = kind === 'q' ? spec.config.numHeads : spec.config.numKvHeads
  const cols = data.length / (heads * spec.config.headDim)
  return unpermuteGgufRows(data, heads, spec.config.headDim, cols)
}

/** Checks that every override names a tensor of the model, so a typo never goes unnoticed. */
export function validateOverrides(model: OpenedModel, overrides: WeightOverrides | undefined): void {
  if (!overrides) return
  const names = new Set(model.tensors.map((t) => t.name))
  for (const name of overrides.keys()) {
    if (!names.has(name)) throw new ModelFormatError(model.files[0] ?? '(model)', name, 'override names a tensor the model does not have')
  }
}
