/**
 * A streaming GGUF v3 writer (ggml/docs/gguf.md): the header — key/values and tensor infos with
 * their data offsets — is written first, then each tensor's bytes in the declared order, padded
 * to the alignment. Only one tensor is held at a time, so an exporter's memory stays near one
 * weight and its quantized form, not the model's.
 *
 * writeGgufFile writes under a temporary name beside the destination and renames when complete:
 * a failure or a cancel (AbortSignal) removes the temporary file, so a reader never finds a
 * partial GGUF under the destination name. (The export driver stages its own output and uses
 * GgufStreamWriter directly.)
 *
 * Little-endian only (what llama.cpp reads; big-endian GGUF files exist but it refuses them).
 */
import { rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { openOutputFile, type OutputFile, type OpenOutput } from '../../io/output-file'
import { ggmlTypeById } from './ggml-types'

export type GgufValueType = 'UINT8' | 'INT8' | 'UINT16' | 'INT16' | 'UINT32' | 'INT32' | 'FLOAT32' | 'BOOL' | 'STRING' | 'ARRAY' | 'UINT64' | 'INT64' | 'FLOAT64'

/** gguf_type ids (gguf.h). */
export const GGUF_VALUE_TYPE_IDS: Readonly<Record<GgufValueType, number>> = Object.freeze({
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
})

export interface GgufArray {
  itemType: GgufValueType
  items: GgufItem[]
}
export type GgufItem = number | bigint | boolean | string | GgufArray
export type GgufKv = { type: Exclude<GgufValueType, 'ARRAY'>; value: number | bigint | boolean | string } | { type: 'ARRAY'; value: GgufArray }

export const str = (value: string): GgufKv => ({ type: 'STRING', value })
export const u32 = (value: number): GgufKv => ({ type: 'UINT32', value })
export const f32 = (value: number): GgufKv => ({ type: 'FLOAT32', value })
export const bool = (value: boolean): GgufKv => ({ type: 'BOOL', value })
export const arr = (itemType: GgufValueType, items: GgufItem[]): GgufKv => ({ type: 'ARRAY', value: { itemType, items } })

export const GGUF_DEFAULT_ALIGNMENT = 32

export interface GgufTensorInfo {
  name: string
  /** ggml order: ne[0] innermost (a [rows, cols] weight is ne = [cols, rows]). */
  ne: number[]
  /** ggml type id (F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, BF16 = 30 …). */
  type: number
}

/** A GGUF file that cannot be written as asked; names the file and the tensor. */
export class GgufWriteError extends Error {
  constructor(
    readonly file: string,
    readonly tensor: string | null,
    readonly problem: string,
  ) {
    super(`${file}${tensor ? `: tensor '${tensor}'` : ''}: ${problem}`)
    this.name = 'GgufWriteError'
  }
}

/** Bytes of a tensor's data; its innermost dimension must be a whole number of blocks. */
export function ggufTensorBytes(t: GgufTensorInfo, file = 'gguf'): number {
  const info = ggmlTypeById(t.type)
  if (!info) throw new GgufWriteError(file, t.name, `unknown ggml type id ${t.type}`)
  if (t.ne.length < 1 || t.ne.length > 4 || t.ne.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new GgufWriteError(file, t.name, `dimensions [${t.ne.join(', ')}] are not 1 to 4 non-negative integers`)
  }
  if (t.ne[0]! % info.blockSize !== 0) throw new GgufWriteError(file, t.name, `ne[0] = ${t.ne[0]} is not a multiple of ${info.name}'s block size ${info.blockSize}`)
  const elements = t.ne.reduce((a, b) => a * b, 1)
  return (elements / info.blockSize) * info.typeSize
}

/** Little-endian byte builder over a list of chunks (the tokenizer arrays make headers of megabytes). */
class ChunkBuilder {
  private readonly chunks: Uint8Array[] = []
  private scratch = new DataView(new ArrayBuffer(8))
  length = 0

  bytes(b: Uint8Array): void {
    this.chunks.push(b)
    this.length += b.length
  }
  private fixed(size: number): DataView {
    this.scratch = new DataView(new ArrayBuffer(size))
    this.bytes(new Uint8Array(this.scratch.buffer))
    return this.scratch
  }
  u32(v: number): void {
    this.fixed(4).setUint32(0, v, true)
  }
  u64(v: number | bigint): void {
    this.fixed(8).setBigUint64(0, BigInt(v), true)
  }
  string(s: string): void {
    const b = new TextEncoder().encode(s)
    this.u64(b.length)
    this.bytes(b)
  }
  item(type: GgufValueType, v: GgufItem): void {
    const n = Number(v)
    switch (type) {
      case 'UINT8': return this.fixed(1).setUint8(0, n)
      case 'INT8': return this.fixed(1).setInt8(0, n)
      case 'UINT16': return this.fixed(2).setUint16(0, n, true)
      case 'INT16': return this.fixed(2).setInt16(0, n, true)
      case 'UINT32': return this.fixed(4).setUint32(0, n, true)
      case 'INT32': return this.fixed(4).setInt32(0, n, true)
      case 'FLOAT32': return this.fixed(4).setFloat32(0, n, true)
      case 'BOOL': return this.fixed(1).setUint8(0, v ? 1 : 0)
      case 'STRING': return this.string(String(v))
      case 'UINT64': return this.fixed(8).setBigUint64(0, BigInt(v as number | bigint), true)
      case 'INT64': return this.fixed(8).setBigInt64(0, BigInt(v as number | bigint), true)
      case 'FLOAT64': return this.fixed(8).setFloat64(0, n, true)
      case 'ARRAY': {
        const a = v as GgufArray
        this.u32(GGUF_VALUE_TYPE_IDS[a.itemType])
        this.u64(a.items.length)
        for (const x of a.items) this.item(a.itemType, x)
        return
      }
    }
  }
  padTo(alignment: number): void {
    const pad = (alignment - (this.length % alignment)) % alignment
    if (pad) this.bytes(new Uint8Array(pad))
  }
  build(): Uint8Array {
    const out = new Uint8Array(this.length)
    let at = 0
    for (const c of this.chunks) {
      out.set(c, at)
      at += c.length
    }
    return out
  }
}

export interface GgufHeader {
  /** Magic to the end of the padding before the data section. */
  bytes: Uint8Array
  /** Data offset of each tensor, relative to the data section. */
  offsets: number[]
  /** Bytes of each tensor's data (unpadded). */
  sizes: number[]
  /** Whole data section, padding included. */
  dataBytes: number
}

/**
 * The header of a GGUF v3 file. `general.alignment` is written when the alignment is not the
 * default 32 (as gguf-py does), and a duplicate key or tensor name is refused (llama.cpp refuses it).
 */
export function encodeGgufHeader(kv: ReadonlyArray<readonly [string, GgufKv]>, tensors: readonly GgufTensorInfo[], alignment = GGUF_DEFAULT_ALIGNMENT, file = 'gguf'): GgufHeader {
  if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) throw new GgufWriteError(file, null, `alignment must be a power of two, got ${alignment}`)
  const pairs = [...kv]
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !pairs.some(([k]) => k === 'general.alignment')) pairs.unshift(['general.alignment', u32(alignment)])
  const keys = new Set<string>()
  for (const [k] of pairs) {
    if (keys.has(k)) throw new GgufWriteError(file, null, `metadata key '${k}' given twice`)
    keys.add(k)
  }
  const names = new Set<string>()
  const sizes: number[] = []
  const offsets: number[] = []
  let offset = 0
  for (const t of tensors) {
    if (names.has(t.name)) throw new GgufWriteError(file, t.name, 'tensor name given twice')
    names.add(t.name)
    const size = ggufTensorBytes(t, file)
    sizes.push(size)
    offsets.push(offset)
    offset += Math.ceil(size / alignment) * alignment
  }
  const w = new ChunkBuilder()
  w.bytes(new TextEncoder().encode('GGUF'))
  w.u32(3)
  w.u64(tensors.length)
  w.u64(pairs.length)
  for (const [key, value] of pairs) {
    w.string(key)
    w.u32(GGUF_VALUE_TYPE_IDS[value.type])
    w.item(value.type, value.value as GgufItem)
  }
  tensors.forEach((t, i) => {
    w.string(t.name)
    w.u32(t.ne.length)
    for (const d of t.ne) w.u64(d)
    w.u32(t.type)
    w.u64(offsets[i]!)
  })
  w.padTo(alignment)
  return { bytes: w.build(), offsets, sizes, dataBytes: offset }
}

/**
 * Writes one GGUF stream into an OutputFile: `begin` writes the header, `writeTensor` takes each
 * tensor's data in the declared order, `end` checks every tensor came and closes. The caller
 * owns the file's name (the export driver stages it; writeGgufFile below renames it).
 */
export class GgufStreamWriter {
  private next = 0
  private written = 0

  private constructor(
    readonly file: string,
    private readonly out: OutputFile,
    private readonly tensors: readonly GgufTensorInfo[],
    private readonly header: GgufHeader,
    private readonly alignment: number,
  ) {}

  static async begin(
    out: OutputFile,
    kv: ReadonlyArray<readonly [string, GgufKv]>,
    tensors: readonly GgufTensorInfo[],
    options: { alignment?: number; file?: string } = {},
  ): Promise<GgufStreamWriter> {
    const alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT
    const file = options.file ?? 'gguf'
    const header = encodeGgufHeader(kv, tensors, alignment, file)
    const writer = new GgufStreamWriter(file, out, tensors, header, alignment)
    await writer.put(header.bytes)
    return writer
  }

  /** Total bytes of the finished file. */
  get fileBytes(): number {
    return this.header.bytes.length + this.header.dataBytes
  }

  get headerBytes(): number {
    return this.header.bytes.length
  }

  /** Data size of each declared tensor, in order. */
  get tensorBytes(): readonly number[] {
    return this.header.sizes
  }

  /** The data of the next tensor in the declared order (its exact byte size). */
  async writeTensor(name: string, data: Uint8Array): Promise<void> {
    const size = this.expect(name)
    if (data.length !== size) throw this.sizeError(name, data.length)
    await this.put(data)
    await this.finishTensor(size)
  }

  /**
   * Writes the next tensor from consecutive parts (e.g. row chunks of a large embedding), so
   * a tensor never needs to be in memory whole. The parts must add up to its size.
   */
  async writeTensorParts(name: string, parts: AsyncIterable<Uint8Array>): Promise<void> {
    const size = this.expect(name)
    let total = 0
    for await (const part of parts) {
      total += part.length
      if (total > size) throw this.sizeError(name, total)
      await this.put(part)
    }
    if (total !== size) throw this.sizeError(name, total)
    await this.finishTensor(size)
  }

  /** Checks that `name` is the next declared tensor; returns its data size. */
  private expect(name: string): number {
    const t = this.tensors[this.next]
    if (!t) throw new GgufWriteError(this.file, name, `all ${this.tensors.length} declared tensors are already written`)
    if (t.name !== name) throw new GgufWriteError(this.file, name, `written out of order: tensor '${t.name}' comes next`)
    return this.header.sizes[this.next]!
  }

  private sizeError(name: string, bytes: number): GgufWriteError {
    const t = this.tensors[this.next]!
    return new GgufWriteError(this.file, name, `${bytes} bytes of data, its type ${ggmlTypeById(t.type)?.name} and dimensions [${t.ne.join(', ')}] need ${this.header.sizes[this.next]}`)
  }

  private async finishTensor(size: number): Promise<void> {
    const pad = (this.alignment - (size % this.alignment)) % this.alignment
    if (pad) await this.put(new Uint8Array(pad))
    this.next++
  }

  /** Closes the file; refuses when a declared tensor is missing. */
  async end(): Promise<number> {
    if (this.next !== this.tensors.length) throw new GgufWriteError(this.file, this.tensors[this.next]!.name, `not written (${this.next} of ${this.tensors.length} tensors done)`)
    if (this.written !== this.fileBytes) throw new GgufWriteError(this.file, null, `wrote ${this.written} bytes, the layout needs ${this.fileBytes}`)
    await this.out.close()
    return this.written
  }

  private async put(b: Uint8Array): Promise<void> {
    await this.out.write(b)
    this.written += b.length
  }
}

/**
 * A whole GGUF file at `path`, tensor data produced one tensor at a time by `data(i)`: written
 * under a temporary name beside `path` and renamed when complete; on any failure or a cancel the
 * temporary file is removed and nothing appears under `path`.
 */
export async function writeGgufFile(
  path: string,
  kv: ReadonlyArray<readonly [string, GgufKv]>,
  tensors: readonly GgufTensorInfo[],
  data: (index: number) => Uint8Array | Promise<Uint8Array>,
  options: { alignment?: number; signal?: AbortSignal; openOutput?: OpenOutput } = {},
): Promise<{ path: string; bytes: number }> {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}-${randomBytes(4).toString('hex')}.partial`)
  const out = await (options.openOutput ?? openOutputFile)(temp)
  let closed = false
  try {
    options.signal?.throwIfAborted()
    const writer = await GgufStreamWriter.begin(out, kv, tensors, { alignment: options.alignment, file: path })
    for (let i = 0; i < tensors.length; i++) {
      options.signal?.throwIfAborted()
      await writer.writeTensor(tensors[i]!.name, await data(i))
    }
    closed = true
    const bytes = await writer.end()
    options.signal?.throwIfAborted()
    await rename(temp, path)
    return { path, bytes }
  } catch (err) {
    if (!closed) await out.close().catch(() => {})
    await rm(temp, { force: true }).catch(() => {})
    throw err
  }
}
