/**
 * A small GGUF writer for tests: builds v2/v3 files (and deliberately broken ones: wrong
 * offsets, big-endian, old versions) byte by byte from the spec (ggml/docs/gguf.md),
 * independent of the reader under test. Real files are written by the engine's streaming
 * writer (worker/formats/gguf/writer.ts).
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'

import { GGUF_VALUE_TYPE_IDS, type GgufArray, type GgufItem, type GgufKv, type GgufValueType } from '../../worker/formats/gguf/writer'

// The value types and key/value helpers are the engine writer's (worker/formats/gguf/writer.ts);
// the byte layout below is this file's own, so each checks the other (export-gguf-parts.test.ts).
export { arr, f32, str, u32, type GgufArray, type GgufItem, type GgufKv } from '../../worker/formats/gguf/writer'
export type GgufTypeName = GgufValueType

const TYPE_IDS = GGUF_VALUE_TYPE_IDS

export interface GgufWriterTensor {
  name: string
  /** ggml order: ne[0] innermost. */
  ne: number[]
  /** ggml type id (F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, BF16 = 30 …). */
  type: number
  data: Uint8Array
  /** Offset written in the header instead of the real one (data is still laid out in order). */
  offsetOverride?: number
}

export interface GgufWriterOptions {
  version?: number
  /** Written as general.alignment (UINT32) when given; data is padded to it. */
  alignment?: number
  kv?: Array<[string, GgufKv]>
  tensors?: GgufWriterTensor[]
  /** Every field big-endian (the magic stays "GGUF", as gguf-py writes it). */
  bigEndian?: boolean
}

class ByteBuilder {
  private chunks: Uint8Array[] = []
  length = 0
  constructor(private readonly le: boolean) {}

  bytes(b: Uint8Array): void {
    this.chunks.push(b)
    this.length += b.length
  }
  private fixed(size: number, set: (v: DataView) => void): void {
    const b = new Uint8Array(size)
    set(new DataView(b.buffer))
    this.bytes(b)
  }
  u8(v: number): void {
    this.fixed(1, (d) => d.setUint8(0, v))
  }
  i8(v: number): void {
    this.fixed(1, (d) => d.setInt8(0, v))
  }
  u16(v: number): void {
    this.fixed(2, (d) => d.setUint16(0, v, this.le))
  }
  i16(v: number): void {
    this.fixed(2, (d) => d.setInt16(0, v, this.le))
  }
  u32(v: number): void {
    this.fixed(4, (d) => d.setUint32(0, v, this.le))
  }
  i32(v: number): void {
    this.fixed(4, (d) => d.setInt32(0, v, this.le))
  }
  f32(v: number): void {
    this.fixed(4, (d) => d.setFloat32(0, v, this.le))
  }
  f64(v: number): void {
    this.fixed(8, (d) => d.setFloat64(0, v, this.le))
  }
  u64(v: number | bigint): void {
    this.fixed(8, (d) => d.setBigUint64(0, BigInt(v), this.le))
  }
  i64(v: number | bigint): void {
    this.fixed(8, (d) => d.setBigInt64(0, BigInt(v), this.le))
  }
  string(s: string): void {
    const b = new TextEncoder().encode(s)
    this.u64(b.length)
    this.bytes(b)
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

function writeItem(w: ByteBuilder, type: GgufTypeName, v: GgufItem): void {
  switch (type) {
    case 'UINT8': return w.u8(Number(v))
    case 'INT8': return w.i8(Number(v))
    case 'UINT16': return w.u16(Number(v))
    case 'INT16': return w.i16(Number(v))
    case 'UINT32': return w.u32(Number(v))
    case 'INT32': return w.i32(Number(v))
    case 'FLOAT32': return w.f32(Number(v))
    case 'BOOL': return w.u8(v ? 1 : 0)
    case 'STRING': return w.string(String(v))
    case 'UINT64': return w.u64(v as number | bigint)
    case 'INT64': return w.i64(v as number | bigint)
    case 'FLOAT64': return w.f64(Number(v))
    case 'ARRAY': {
      const a = v as GgufArray
      w.u32(TYPE_IDS[a.itemType])
      w.u64(a.items.length)
      for (const item of a.items) writeItem(w, a.itemType, item)
      return
    }
  }
}

/** The bytes of a GGUF file. */
export function buildGguf(opts: GgufWriterOptions = {}): Uint8Array {
  const w = new ByteBuilder(!opts.bigEndian)
  const alignment = opts.alignment ?? 32
  const kv = [...(opts.kv ?? [])]
  if (opts.alignment !== undefined && !kv.some(([k]) => k === 'general.alignment')) {
    kv.unshift(['general.alignment', { type: 'UINT32', value: opts.alignment }])
  }
  const tensors = opts.tensors ?? []

  w.bytes(new TextEncoder().encode('GGUF'))
  w.u32(opts.version ?? 3)
  w.u64(tensors.length)
  w.u64(kv.length)
  for (const [key, value] of kv) {
    w.string(key)
    w.u32(TYPE_IDS[value.type])
    writeItem(w, value.type, value.value as GgufItem)
  }
  // Data offsets relative to the data section, each tensor padded to the alignment.
  let offset = 0
  const offsets: number[] = []
  for (const t of tensors) {
    offsets.push(offset)
    offset += Math.ceil(t.data.length / alignment) * alignment
  }
  tensors.forEach((t, i) => {
    w.string(t.name)
    w.u32(t.ne.length)
    for (const d of t.ne) w.u64(d)
    w.u32(t.type)
    w.u64(t.offsetOverride ?? offsets[i]!)
  })
  w.padTo(alignment)
  for (const t of tensors) {
    w.bytes(t.data)
    w.padTo(alignment)
  }
  return w.build()
}

/** Writes a GGUF file into `dir` and returns its path. */
export async function writeGguf(dir: string, name: string, opts: GgufWriterOptions | Uint8Array): Promise<string> {
  const path = join(dir, name)
  await writeFile(path, opts instanceof Uint8Array ? opts : buildGguf(opts))
  return path
}
