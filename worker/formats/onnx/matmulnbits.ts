import type { TensorEntry } from '../contract'
import { ModelFormatError } from '../../common/errors'
import { nodeLabel, type OnnxNode } from './messages'

/**
 * com.microsoft MatMulNBits: B holds a 2..8-bit weight of shape [N, K] as uint8
 * [N, blocks, blobSize], values packed least significant bits first, with one scale per
 * block and optional zero points (uint8 packed like B, or floats; default 2^(bits-1)).
 * The reader lists it as a virtual dequantized [N, K] tensor.
 */

/** What this needs of an initializer; the reader's own tensor records satisfy it. */
export interface NBitsOperand {
  entry: TensorEntry
  /** Elements per dims. */
  elements: number
}

export interface MatMulNBitsInfo<T extends NBitsOperand = NBitsOperand> {
  node: string
  K: number
  N: number
  bits: number
  blockSize: number
  blocks: number
  blobSize: number
  B: T
  scales: T
  zeroPoints: T | null
  /** uint8 zero points packed like B, else float zero points (one per block). */
  packedZeroPoints: boolean
}

/** Reads an operand: stored bytes, or elements as float32 (by element index). */
export interface OperandReader<T> {
  bytes(operand: T, start: number, count: number): Promise<Uint8Array>
  elements(operand: T, start: number, count: number): Promise<Float32Array>
}

function intAttr(node: OnnxNode, name: string): number | undefined {
  return node.attributes.get(name)?.i
}

/**
 * The virtual dequantized [N, K] entry of one MatMulNBits node whose B and scales are
 * initializers (null when they or its zero points are computed at run time).
 */
export function matMulNBitsEntry<T extends NBitsOperand>(
  abs: string,
  node: OnnxNode,
  slots: ReadonlyMap<string, T>,
): { entry: TensorEntry; q: MatMulNBitsInfo<T>; elements: number } | null {
  const [, bName = '', sName = '', zName = ''] = node.inputs
  const B = slots.get(bName)
  const scales = slots.get(sName)
  if (!B || !scales) return null
  const fail = (problem: string): never => {
    throw new ModelFormatError(abs, bName, `MatMulNBits node '${nodeLabel(node)}': ${problem}`)
  }
  const K = intAttr(node, 'K')
  const N = intAttr(node, 'N')
  const blockSize = intAttr(node, 'block_size')
  const bits = intAttr(node, 'bits') ?? 4
  if (K === undefined || N === undefined || blockSize === undefined) return fail('attributes K, N and block_size are required')
  if (!(K > 0 && N > 0)) fail(`K = ${K} and N = ${N} must be positive`)
  if (!(Number.isInteger(bits) && bits >= 2 && bits <= 8)) fail(`bits = ${bits}; MatMulNBits supports 2..8`)
  if (!(blockSize >= 16 && (blockSize & (blockSize - 1)) === 0)) fail(`block_size = ${blockSize} must be a power of two >= 16`)
  const blocks = Math.ceil(K / blockSize)
  const blobSize = (blockSize * bits) / 8
  if (B.entry.dtype !== 'U8') fail(`B has dtype ${B.entry.dtype}, expected uint8`)
  if (B.elements !== N * blocks * blobSize) fail(`B has shape [${B.entry.shape.join(', ')}], expected [${N}, ${blocks}, ${blobSize}]`)
  if (!['F32', 'F16', 'BF16'].includes(scales.entry.dtype)) fail(`scales '${sName}' have dtype ${scales.entry.dtype}, expected float`)
  if (scales.elements !== N * blocks) fail(`scales '${sName}' hold ${scales.elements} values, expected N × blocks = ${N * blocks}`)
  let zeroPoints: T | null = null
  let packedZeroPoints = false
  if (zName !== '') {
    zeroPoints = slots.get(zName) ?? null
    if (!zeroPoints) return null // computed at run time: nothing to dequantize statically
    if (zeroPoints.entry.dtype === 'U8') {
      packedZeroPoints = true
      const want = N * Math.ceil((blocks * bits) / 8)
      if (zeroPoints.elements !== want) fail(`packed zero_points '${zName}' hold ${zeroPoints.elements} bytes, expected N × ceil(blocks × bits / 8) = ${want}`)
    } else if (zeroPoints.entry.dtype === scales.entry.dtype) {
      if (zeroPoints.elements !== N * blocks) fail(`zero_points '${zName}' hold ${zeroPoints.elements} values, expected ${N * blocks}`)
    } else fail(`zero_points '${zName}' have dtype ${zeroPoints.entry.dtype}, expected uint8 or ${scales.entry.dtype}`)
  }
  const q: MatMulNBitsInfo<T> = { node: nodeLabel(node), K, N, bits, blockSize, blocks, blobSize, B, scales, zeroPoints, packedZeroPoints }
  return {
    entry: {
      name: `${bName}#dequantized`,
      dtype: `MATMULNBITS_Q${bits}`,
      shape: [N, K],
      byteLength: B.entry.byteLength,
      file: B.entry.file,
      byteOffset: B.entry.byteOffset,
      decodable: true,
      alias: nodeLabel(node),
      derivedFrom: [bName, sName, ...(zName ? [zName] : [])],
    },
    q,
    elements: N * K,
  }
}

/** The node as listed in the model's metadata (`matMulNBits`). */
export function matMulNBitsSummary(tensor: string, q: MatMulNBitsInfo): Record<string, unknown> {
  return {
    node: q.node,
    tensor,
    B: q.B.entry.name,
    scales: q.scales.entry.name,
    zeroPoints: q.zeroPoints?.entry.name ?? null,
    K: q.K,
    N: q.N,
    bits: q.bits,
    blockSize: q.blockSize,
  }
}

/** Dequantized rows [r0, r1) of a MatMulNBits weight: w[n, k] = (q − zp) × scale. */
export async function dequantMatMulNBitsRows<T extends NBitsOperand>(
  q: MatMulNBitsInfo<T>,
  r0: number,
  r1: number,
  read: OperandReader<T>,
): Promise<Float32Array> {
  const rows = r1 - r0
  const rowBytes = q.blocks * q.blobSize
  const b = await read.bytes(q.B, r0 * rowBytes, rows * rowBytes)
  const scales = await read.elements(q.scales, r0 * q.blocks, rows * q.blocks)
  const zpRowBytes = Math.ceil((q.blocks * q.bits) / 8)
  let zpPacked: Uint8Array | null = null
  let zpFloat: Float32Array | null = null
  if (q.zeroPoints && q.packedZeroPoints) zpPacked = await read.bytes(q.zeroPoints, r0 * zpRowBytes, rows * zpRowBytes)
  else if (q.zeroPoints) zpFloat = await read.elements(q.zeroPoints, r0 * q.blocks, rows * q.blocks)
  const mask = (1 << q.bits) - 1
  const out = new Float32Array(rows * q.K)
  for (let r = 0; r < rows; r++) {
    for (let blk = 0; blk < q.blocks; blk++) {
      const scale = scales[r * q.blocks + blk]!
      let zp = 1 << (q.bits - 1)
      if (zpPacked) zp = unpackBits(zpPacked, r * zpRowBytes, blk * q.bits, q.bits, mask)
      else if (zpFloat) zp = zpFloat[r * q.blocks + blk]!
      const base = (r * q.blocks + blk) * q.blobSize
      const k0 = blk * q.blockSize
      const k1 = Math.min(q.K, k0 + q.blockSize)
      const o = r * q.K
      for (let k = k0; k < k1; k++) out[o + k] = (unpackBits(b, base, (k - k0) * q.bits, q.bits, mask) - zp) * scale
    }
  }
  return out
}

/** `bits` bits starting `bitOffset` bits into bytes[base…], least significant bits first. */
function unpackBits(bytes: Uint8Array, base: number, bitOffset: number, bits: number, mask: number): number {
  const i = base + (bitOffset >> 3)
  const shift = bitOffset & 7
  let v = bytes[i]!
  if (shift + bits > 8) v |= bytes[i + 1]! << 8
  return (v >> shift) & mask
}
