import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import * as ort from 'onnxruntime-node'
import { onnxFormat } from '../../worker/formats/onnx/reader'
import { formatByFileName } from '../../worker/formats/registry'
import { ModelFormatError } from '../../worker/common/errors'
import { FileByteSource } from '../../worker/io/byte-source'
import { bf16ToF32, f16ToF32, f32ToBF16, f32ToF16 } from '../../worker/formats/dtypes'
import type { OpenedModel } from '../../worker/formats/contract'
import {
  bf16Bytes,
  DataType,
  encodeModel,
  f16Bytes,
  f32Bytes,
  i64Bytes,
  makeTempDir,
  removeTempDir,
  seededRandom,
  type ModelSpec,
} from '../helpers/onnx-builder'

let dir: string
let counter = 0

beforeAll(async () => {
  dir = await makeTempDir()
})
afterAll(async () => {
  await removeTempDir(dir)
})

/** Writes the model (and any side files) into a fresh sub-folder; returns the .onnx path. */
async function writeModel(spec: ModelSpec | Uint8Array, sideFiles: Record<string, Uint8Array> = {}): Promise<string> {
  const sub = join(dir, `m${counter++}`)
  await mkdir(sub, { recursive: true })
  for (const [name, bytes] of Object.entries(sideFiles)) {
    await mkdir(join(sub, name, '..'), { recursive: true })
    await writeFile(join(sub, name), bytes)
  }
  const path = join(sub, 'model.onnx')
  await writeFile(path, spec instanceof Uint8Array ? spec : encodeModel(spec))
  return path
}

async function withModel<T>(path: string, fn: (m: OpenedModel) => Promise<T>): Promise<T> {
  const m = await onnxFormat.open(path)
  try {
    return await fn(m)
  } finally {
    await m.close()
  }
}

async function expectFormatError(p: Promise<unknown>, file: string, tensor: string | null, problem: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(ModelFormatError)
  const e = err as ModelFormatError
  expect(e.file).toBe(file)
  expect(e.tensor).toBe(tensor)
  expect(e.problem).toMatch(problem)
}

function randomValues(n: number, seed: number, scale = 1): number[] {
  const r = seededRandom(seed)
  return Array.from({ length: n }, () => (r() * 2 - 1) * scale)
}

describe('onnx: raw_data initializers', () => {
  it('decodes F32/F16/BF16/I64 rows and records absolute offsets without copying', async () => {
    const f32 = randomValues(12, 1)
    const f16 = randomValues(16, 2)
    const bf16 = randomValues(6, 3)
    const i64 = [-5, 0, 7, 2 ** 40, -(2 ** 33)]
    const path = await writeModel({
      initializers: [
        { name: 'w.f32', dataType: DataType.FLOAT, dims: [3, 4], raw: f32Bytes(f32) },
        { name: 'w.f16', dataType: DataType.FLOAT16, dims: [2, 8], raw: f16Bytes(f16) },
        { name: 'w.bf16', dataType: DataType.BFLOAT16, dims: [6], raw: bf16Bytes(bf16) },
        { name: 'ids', dataType: DataType.INT64, dims: [5], raw: i64Bytes(i64) },
      ],
    })
    const file = await readFile(path)
    await withModel(path, async (m) => {
      expect(m.format).toBe('onnx')
      expect(m.files).toEqual([path])
      const byName = new Map(m.tensors.map((t) => [t.name, t]))
      expect(byName.get('w.f32')).toMatchObject({ dtype: 'F32', shape: [3, 4], byteLength: 48, decodable: true, file: path })
      expect(byName.get('w.f16')).toMatchObject({ dtype: 'F16', shape: [2, 8], byteLength: 32 })
      expect(byName.get('w.bf16')).toMatchObject({ dtype: 'BF16', shape: [6], byteLength: 12 })
      expect(byName.get('ids')).toMatchObject({ dtype: 'I64', shape: [5], byteLength: 40 })
      // The recorded offset points at the raw bytes inside the .onnx file itself.
      const t = byName.get('w.f32')!
      expect(Buffer.from(file.subarray(t.byteOffset, t.byteOffset + t.byteLength))).toEqual(Buffer.from(f32Bytes(f32)))

      expect(Array.from(await m.readRows('w.f32', 0, 3))).toEqual(f32.map(Math.fround))
      expect(Array.from(await m.readRows('w.f32', 1, 2))).toEqual(f32.slice(4, 8).map(Math.fround))
      expect(Array.from(await m.readRows('w.f16', 1, 2))).toEqual(f16.slice(8).map((v) => f16ToF32(f32ToF16(v))))
      expect(Array.from(await m.readRows('w.bf16', 0, 1))).toEqual(bf16.map((v) => bf16ToF32(f32ToBF16(v))))
      expect(Array.from(await m.readRows('ids', 0, 1))).toEqual(i64.map(Math.fround))
      expect(await m.readRaw('ids')).toEqual(i64Bytes(i64))
    })
  })

  it('lists undecodable element types with their ONNX names', async () => {
    const path = await writeModel({
      initializers: [{ name: 'packed4', dataType: DataType.INT4, dims: [2, 3], raw: new Uint8Array([0x21, 0x43, 0x65]) }],
    })
    await withModel(path, async (m) => {
      expect(m.tensors[0]).toMatchObject({ name: 'packed4', dtype: 'INT4', decodable: false, byteLength: 3 })
      await expectFormatError(m.readRows('packed4', 0, 1), path, 'packed4', /INT4 tensors cannot be decoded/)
      expect(Array.from(await m.readRaw('packed4'))).toEqual([0x21, 0x43, 0x65])
    })
  })
})

describe('onnx: lazy reading', () => {
  it('opens a model without reading its tensor payloads', async () => {
    const big = new Float32Array(1 << 20) // 4 MiB of raw_data
    big[123457] = 42
    const path = await writeModel({
      initializers: [
        { name: 'big', dataType: DataType.FLOAT, dims: [1024, 1024], raw: new Uint8Array(big.buffer) },
        { name: 'small', dataType: DataType.FLOAT, dims: [2], raw: f32Bytes([1, 2]) },
      ],
      nodes: [{ opType: 'MatMul', inputs: ['x', 'big'], outputs: ['y'], name: 'mm' }],
    })
    const read = vi.spyOn(FileByteSource.prototype, 'read')
    try {
      const m = await onnxFormat.open(path)
      const bytesAtOpen = read.mock.calls.reduce((sum, c) => sum + c[1], 0)
      expect(bytesAtOpen).toBeLessThan(256 * 1024)
      read.mockClear()
      const row = await m.readRows('big', 120, 121)
      expect(row[123457 - 120 * 1024]).toBe(42) // element 123457 lies in row 120
      expect(read.mock.calls.map((c) => c[1])).toEqual([4096])
      await m.close()
    } finally {
      read.mockRestore()
    }
  })
})

describe('onnx: typed *_data fields', () => {
  it('decodes float_data, double_data, int64_data and int32_data (incl. FLOAT16 bit patterns)', async () => {
    const floats = [1.5, -2.25, 3, 0.1, -0.2, 1e-3]
    const doubles = [Math.PI, -Math.E]
    const longs = [-1, 2 ** 35, 3, -(2 ** 40)]
    const halves = [0.5, -1.25, 65504, 2 ** -24]
    const int8s = [-128, -1, 0, 127]
    const path = await writeModel({
      initializers: [
        { name: 'fd', dataType: DataType.FLOAT, dims: [2, 3], floatData: floats },
        { name: 'dd', dataType: DataType.DOUBLE, dims: [2], doubleData: doubles },
        { name: 'ld', dataType: DataType.INT64, dims: [2, 2], int64Data: longs },
        { name: 'hd', dataType: DataType.FLOAT16, dims: [4], int32Data: halves.map(f32ToF16) },
        { name: 'bd', dataType: DataType.INT8, dims: [4], int32Data: int8s },
      ],
    })
    await withModel(path, async (m) => {
      expect(Array.from(await m.readRows('fd', 1, 2))).toEqual(floats.slice(3).map(Math.fround))
      expect(Array.from(await m.readRows('dd', 0, 1))).toEqual(doubles.map(Math.fround))
      expect(Array.from(await m.readRows('ld', 1, 2))).toEqual(longs.slice(2).map(Math.fround))
      expect(Array.from(await m.readRows('ld', 0, 2))).toEqual(longs.map(Math.fround))
      expect(Array.from(await m.readRows('hd', 0, 1))).toEqual(halves)
      expect(Array.from(await m.readRows('bd', 0, 1))).toEqual(int8s)
      expect(m.tensors.find((t) => t.name === 'hd')).toMatchObject({ dtype: 'F16', shape: [4] })
      // readRaw re-encodes varints to the raw_data layout.
      expect(await m.readRaw('ld')).toEqual(i64Bytes(longs))
      expect(await m.readRaw('hd')).toEqual(f16Bytes(halves))
      expect(await m.readRaw('fd')).toEqual(f32Bytes(floats))
    })
  })

  it('reports a varint-packed element count that does not match dims when read', async () => {
    const path = await writeModel({ initializers: [{ name: 'ld', dataType: DataType.INT64, dims: [3], int64Data: [1, 2, 3, 4] }] })
    await withModel(path, async (m) => {
      await expectFormatError(m.readRows('ld', 0, 1), path, 'ld', /int64_data: holds 4 elements but dims \[3\] need 3/)
    })
  })
})

describe('onnx: model metadata', () => {
  it('reports ir_version, producer, opsets, graph name, node count and declared architecture', async () => {
    const path = await writeModel({
      irVersion: 9,
      producer: 'unit-test',
      graphName: 'tiny',
      opsets: { '': 18, 'com.microsoft': 1 },
      metadata: { architecture: 'llama', note: 'x' },
      initializers: [{ name: 'w', dataType: DataType.FLOAT, dims: [2, 2], raw: f32Bytes([1, 2, 3, 4]) }],
      nodes: [{ opType: 'MatMul', inputs: ['x', 'w'], outputs: ['y'], name: 'mm' }],
      inputs: ['x'],
      outputs: ['y'],
    })
    expect(formatByFileName(path)).toBe(onnxFormat)
    expect(formatByFileName(path + '.data')).toBeNull()
    await withModel(path, async (m) => {
      expect(m.architecture).toBe('llama')
      expect(m.config).toBeNull()
      expect(m.metadata).toMatchObject({
        irVersion: 9,
        producer: 'unit-test',
        opsets: { 'ai.onnx': 18, 'com.microsoft': 1 },
        graphName: 'tiny',
        nodeCount: 1,
        inputs: ['x'],
        outputs: ['y'],
        metadataProps: { architecture: 'llama', note: 'x' },
      })
    })
    const plain = await writeModel({ initializers: [] })
    await withModel(plain, async (m) => expect(m.architecture).toBeNull())
  })
})

describe('onnx: external data', () => {
  it('reads two tensors from one external file at their offsets', async () => {
    const a = randomValues(8, 10)
    const b = randomValues(6, 11)
    const blob = new Uint8Array(4096 + 12)
    blob.set(f32Bytes(a), 0)
    blob.set(f16Bytes(b), 4096)
    const path = await writeModel(
      {
        initializers: [
          { name: 'ext.a', dataType: DataType.FLOAT, dims: [2, 4], external: { location: 'data/weights.bin', offset: 0, length: 32 } },
          { name: 'ext.b', dataType: DataType.FLOAT16, dims: [3, 2], external: { location: 'data/weights.bin', offset: 4096 } },
        ],
      },
      { 'data/weights.bin': blob },
    )
    const extFile = join(path, '..', 'data', 'weights.bin')
    await withModel(path, async (m) => {
      expect(m.files).toEqual([path, extFile])
      expect(m.tensors.find((t) => t.name === 'ext.b')).toMatchObject({ file: extFile, byteOffset: 4096, byteLength: 12, dtype: 'F16' })
      expect(Array.from(await m.readRows('ext.a', 1, 2))).toEqual(a.slice(4).map(Math.fround))
      expect(Array.from(await m.readRows('ext.b', 0, 3))).toEqual(b.map((v) => f16ToF32(f32ToF16(v))))
      expect(await m.readRaw('ext.b')).toEqual(f16Bytes(b))
    })
  })

  it('rejects missing files, absolute paths, escapes and short files', async () => {
    const spec = (location: string, length = 16): ModelSpec => ({
      initializers: [{ name: 'ext', dataType: DataType.FLOAT, dims: [4], external: { location, length } }],
    })
    const missing = await writeModel(spec('missing.bin'))
    await expectFormatError(onnxFormat.open(missing), missing, 'ext', /external data file 'missing\.bin' cannot be opened/)
    const escape = await writeModel(spec('../outside.bin'))
    await expectFormatError(onnxFormat.open(escape), escape, 'ext', /'\.\.\/outside\.bin' escapes the model folder/)
    const absolute = await writeModel(spec('/etc/hostname'))
    await expectFormatError(onnxFormat.open(absolute), absolute, 'ext', /is an absolute path/)
    const short = await writeModel(spec('w.bin'), { 'w.bin': new Uint8Array(10) })
    await expectFormatError(onnxFormat.open(short), short, 'ext', /external data \[0, 16\) runs past the end of 'w\.bin' \(10 bytes\)/)
    const wrongLength = await writeModel(spec('w.bin', 12), { 'w.bin': new Uint8Array(16) })
    await expectFormatError(onnxFormat.open(wrongLength), wrongLength, 'ext', /external_data length 12 does not match: dims \[4\] × F32 need 16 bytes/)
  })
})

describe('onnx: weight → MatMul aliases', () => {
  it('names the MatMul/Gemm node each initializer feeds, directly or through one Transpose', async () => {
    const w = (name: string) => ({ name, dataType: DataType.FLOAT, dims: [2, 2], raw: f32Bytes([1, 2, 3, 4]) })
    const path = await writeModel({
      initializers: [w('W_q'), w('W_t'), w('W_g'), w('embed'), w('unused')],
      nodes: [
        { opType: 'Gather', inputs: ['embed', 'ids'], outputs: ['h0'], name: 'embed_lookup' },
        { opType: 'MatMul', inputs: ['h0', 'W_q'], outputs: ['q'], name: 'layers.0.attn.q_proj' },
        { opType: 'Transpose', inputs: ['W_t'], outputs: ['W_t_T'], name: 'tr' },
        { opType: 'MatMul', inputs: ['q', 'W_t_T'], outputs: ['o_proj_out'] },
        { opType: 'Gemm', inputs: ['o_proj_out', 'W_g'], outputs: ['logits'], name: 'lm_head' },
      ],
    })
    await withModel(path, async (m) => {
      const alias = Object.fromEntries(m.tensors.map((t) => [t.name, t.alias]))
      expect(alias).toEqual({ W_q: 'layers.0.attn.q_proj', W_t: 'o_proj_out', W_g: 'lm_head', embed: undefined, unused: undefined })
      expect(m.metadata.initializerConsumers).toEqual({ W_q: 'MatMul', W_t: 'Transpose>MatMul', W_g: 'Gemm', embed: 'Gather' })
    })
  })
})

// ---------- MatMulNBits ----------

interface Quantized4 {
  B: Uint8Array
  scales: Float32Array
  zeroPoints: Uint8Array | null
  /** Unpacked codes q[n*K + k] and zero points zp[n*blocks + b], kept for the reference. */
  q: Uint8Array
  zp: number[]
}

/** Reference 4-bit block quantizer: asymmetric min/max with zero points, or symmetric around 8. */
function quantize4(w: number[], N: number, K: number, blockSize: number, withZeroPoints: boolean): Quantized4 {
  const blocks = Math.ceil(K / blockSize)
  const blob = blockSize / 2
  const zpRow = Math.ceil(blocks / 2)
  const out: Quantized4 = {
    B: new Uint8Array(N * blocks * blob),
    scales: new Float32Array(N * blocks),
    zeroPoints: withZeroPoints ? new Uint8Array(N * zpRow) : null,
    q: new Uint8Array(N * K),
    zp: [],
  }
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < blocks; b++) {
      const ks = Array.from({ length: Math.min(blockSize, K - b * blockSize) }, (_, j) => b * blockSize + j)
      const vals = ks.map((k) => w[n * K + k]!)
      let scale: number
      let zp: number
      if (withZeroPoints) {
        const lo = Math.min(...vals)
        const hi = Math.max(...vals)
        scale = Math.fround((hi - lo) / 15) || 1
        zp = Math.min(15, Math.max(0, Math.round(-lo / scale)))
        out.zeroPoints![n * zpRow + (b >> 1)]! |= zp << ((b & 1) * 4)
      } else {
        scale = Math.fround(Math.max(...vals.map(Math.abs)) / 7) || 1
        zp = 8
      }
      out.scales[n * blocks + b] = scale
      out.zp[n * blocks + b] = zp
      for (const k of ks) {
        const code = Math.min(15, Math.max(0, Math.round(w[n * K + k]! / scale) + zp))
        out.q[n * K + k] = code
        const j = k - b * blockSize
        out.B[(n * blocks + b) * blob + (j >> 1)]! |= code << ((j & 1) * 4)
      }
    }
  }
  return out
}

function matMulNBitsSpec(name: string, N: number, K: number, blockSize: number, qz: Quantized4, typedIO = false): ModelSpec {
  const blocks = Math.ceil(K / blockSize)
  const inputs = ['A', `${name}.B`, `${name}.scales`, ...(qz.zeroPoints ? [`${name}.zp`] : [])]
  return {
    opsets: { '': 17, 'com.microsoft': 1 },
    initializers: [
      { name: `${name}.B`, dataType: DataType.UINT8, dims: [N, blocks, blockSize / 2], raw: qz.B },
      { name: `${name}.scales`, dataType: DataType.FLOAT, dims: [N * blocks], raw: f32Bytes(qz.scales) },
      ...(qz.zeroPoints ? [{ name: `${name}.zp`, dataType: DataType.UINT8, dims: [qz.zeroPoints.length], raw: qz.zeroPoints }] : []),
    ],
    nodes: [
      {
        opType: 'MatMulNBits',
        domain: 'com.microsoft',
        name,
        inputs,
        outputs: ['Y'],
        attrs: { K: { i: K }, N: { i: N }, bits: { i: 4 }, block_size: { i: blockSize } },
      },
    ],
    inputs: typedIO ? [{ name: 'A', elemType: DataType.FLOAT, shape: ['M', K] }] : ['A'],
    outputs: typedIO ? [{ name: 'Y', elemType: DataType.FLOAT, shape: ['M', N] }] : ['Y'],
  }
}

describe('onnx: MatMulNBits dequantization', () => {
  const cases = [
    { N: 5, K: 64, blockSize: 32, zp: false },
    { N: 4, K: 96, blockSize: 32, zp: true },
    { N: 3, K: 200, blockSize: 128, zp: true }, // last block only partly used
    { N: 2, K: 256, blockSize: 128, zp: false },
  ]
  for (const c of cases) {
    it(`block ${c.blockSize}, K=${c.K}, ${c.zp ? 'packed zero points' : 'default zero point 8'}`, async () => {
      const w = randomValues(c.N * c.K, 100 + c.K, 0.05)
      const qz = quantize4(w, c.N, c.K, c.blockSize, c.zp)
      const path = await writeModel(matMulNBitsSpec('layers.0.mlp.up_proj', c.N, c.K, c.blockSize, qz))
      await withModel(path, async (m) => {
        const v = m.tensors.find((t) => t.name === 'layers.0.mlp.up_proj.B#dequantized')!
        expect(v).toMatchObject({ dtype: 'MATMULNBITS_Q4', shape: [c.N, c.K], decodable: true, alias: 'layers.0.mlp.up_proj' })
        expect(v.derivedFrom).toEqual(['layers.0.mlp.up_proj.B', 'layers.0.mlp.up_proj.scales', ...(c.zp ? ['layers.0.mlp.up_proj.zp'] : [])])
        // The stored pieces stay listed, aliased to the same node.
        expect(m.tensors.find((t) => t.name === 'layers.0.mlp.up_proj.B')).toMatchObject({ dtype: 'U8', alias: 'layers.0.mlp.up_proj' })
        const blocks = Math.ceil(c.K / c.blockSize)
        const got = await m.readRows(v.name, 0, c.N)
        for (let n = 0; n < c.N; n++) {
          for (let k = 0; k < c.K; k++) {
            const b = Math.floor(k / c.blockSize)
            const scale = qz.scales[n * blocks + b]!
            const expected = Math.fround((qz.q[n * c.K + k]! - qz.zp[n * blocks + b]!) * scale)
            expect(got[n * c.K + k]).toBe(expected)
            expect(Math.abs(got[n * c.K + k]! - w[n * c.K + k]!)).toBeLessThanOrEqual(scale * (c.zp ? 1 : 0.5) + 1e-7)
          }
        }
        // A row range reads only those rows and gives the same values.
        expect(Array.from(await m.readRows(v.name, 1, 2))).toEqual(Array.from(got.subarray(c.K, 2 * c.K)))
      })
    })
  }

  it('agrees with onnxruntime MatMulNBits on an identity input', async () => {
    const N = 4
    const K = 96
    const w = randomValues(N * K, 7, 0.1)
    const qz = quantize4(w, N, K, 32, true)
    const bytes = encodeModel(matMulNBitsSpec('proj', N, K, 32, qz, true))
    const path = await writeModel(bytes)
    const eye = new Float32Array(K * K)
    for (let i = 0; i < K; i++) eye[i * K + i] = 1
    const session = await ort.InferenceSession.create(bytes)
    const { Y } = await session.run({ A: new ort.Tensor('float32', eye, [K, K]) })
    await session.release()
    const y = Y!.data as Float32Array // y[k, n] = w_deq[n, k]
    await withModel(path, async (m) => {
      const got = await m.readRows('proj.B#dequantized', 0, N)
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) expect(got[n * K + k]).toBeCloseTo(y[k * N + n]!, 6)
    })
  })

  it('uses float zero points of the scales type (fp16 scales and zero points)', async () => {
    const N = 2
    const K = 32
    const q = Array.from({ length: N * K }, (_, i) => (i * 7) % 16)
    const B = new Uint8Array(N * 16)
    q.forEach((code, i) => (B[i >> 1]! |= code << ((i & 1) * 4)))
    const scales = [0.125, 0.0625]
    const zps = [7.5, 3.25]
    const path = await writeModel({
      initializers: [
        { name: 'B', dataType: DataType.UINT8, dims: [N, 1, 16], raw: B },
        { name: 's', dataType: DataType.FLOAT16, dims: [N, 1], raw: f16Bytes(scales) },
        { name: 'z', dataType: DataType.FLOAT16, dims: [N, 1], raw: f16Bytes(zps) },
      ],
      nodes: [
        {
          opType: 'MatMulNBits',
          domain: 'com.microsoft',
          inputs: ['A', 'B', 's', 'z'],
          outputs: ['Y'],
          attrs: { K: { i: K }, N: { i: N }, bits: { i: 4 }, block_size: { i: 32 } },
        },
      ],
    })
    await withModel(path, async (m) => {
      const v = m.tensors.find((t) => t.name === 'B#dequantized')!
      expect(v.alias).toBe('Y') // unnamed node: its output names it
      const got = await m.readRows('B#dequantized', 0, N)
      expect(Array.from(got)).toEqual(q.map((code, i) => Math.fround((code - zps[Math.floor(i / K)]!) * scales[Math.floor(i / K)]!)))
    })
  })

  it('rejects a B whose shape does not match K, N and block_size', async () => {
    const qz = quantize4(randomValues(2 * 64, 3), 2, 64, 32, false)
    const spec = matMulNBitsSpec('bad', 2, 64, 32, qz)
    spec.nodes![0]!.attrs!.K = { i: 128 }
    const path = await writeModel(spec)
    await expectFormatError(onnxFormat.open(path), path, 'bad.B', /MatMulNBits node 'bad': B has shape \[2, 2, 16\], expected \[2, 4, 16\]/)
  })
})

// ---------- malformed files ----------

describe('onnx: malformed input', () => {
  it('reports a truncated file', async () => {
    const full = encodeModel({ initializers: [{ name: 'w', dataType: DataType.FLOAT, dims: [64], raw: f32Bytes(randomValues(64, 5)) }] })
    const path = await writeModel(full.subarray(0, full.length - 40))
    await expectFormatError(onnxFormat.open(path), path, null, /ends at byte \d+ \(end of file: truncated\?\)/)
  })

  it('reports an overlong varint, a varint cut by the end of file and an unknown wire type', async () => {
    const overlong = await writeModel(new Uint8Array([0x08, ...new Array(10).fill(0xff), 0x01]))
    await expectFormatError(onnxFormat.open(overlong), overlong, null, /malformed varint \(more than 10 bytes\) for value of field 1 in ModelProto at byte 1/)
    const cut = await writeModel(new Uint8Array([0x08, 0xff, 0xff]))
    await expectFormatError(onnxFormat.open(cut), cut, null, /runs past the end of its message at byte 3 \(truncated file\?\)/)
    const wire7 = await writeModel(new Uint8Array([0x0f, 0x00]))
    await expectFormatError(onnxFormat.open(wire7), wire7, null, /field 1 in ModelProto at byte 0 has unknown wire type 7/)
  })

  it('reports raw_data whose length does not match dims and a typed field of the wrong type', async () => {
    const bad = await writeModel({ initializers: [{ name: 'w_bad', dataType: DataType.FLOAT, dims: [2, 3], raw: new Uint8Array(20) }] })
    await expectFormatError(onnxFormat.open(bad), bad, 'w_bad', /raw_data has 20 bytes but dims \[2, 3\] × F32 need 24 bytes/)
    const wrongField = await writeModel({ initializers: [{ name: 'w_i', dataType: DataType.INT64, dims: [2], floatData: [1, 2] }] })
    await expectFormatError(onnxFormat.open(wrongField), wrongField, 'w_i', /float_data present but data_type is I64/)
  })

  it('rejects bad row ranges and unknown tensors', async () => {
    const path = await writeModel({ initializers: [{ name: 'w', dataType: DataType.FLOAT, dims: [2, 2], raw: f32Bytes([1, 2, 3, 4]) }] })
    await withModel(path, async (m) => {
      await expectFormatError(m.readRows('w', 1, 3), path, 'w', /row range \[1, 3\) outside \[0, 2\)/)
      await expectFormatError(m.readRows('nope', 0, 1), path, 'nope', /no such tensor/)
    })
  })
})
