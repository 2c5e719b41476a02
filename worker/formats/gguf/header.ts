import type { ByteSource } from '../../io/byte-source'
import { ModelFormatError } from '../../common/errors'

/**
 * GGUF header parsing (spec: ggml/docs/gguf.md).
 *
 * Layout: magic "GGUF", u32 version, u64 tensor count, u64 key/value count, the key/values,
 * the tensor infos (name, n_dims, ne[n_dims] innermost first, ggml type, offset relative to
 * the data section), then the data section, aligned to `general.alignment` (default 32).
 *
 * The header is parsed through growing windows of the file (a 150k-entry tokenizer array is a
 * few MB; tensor data is never read here). Counts and lengths are checked against the file
 * size before anything is allocated, so a corrupt header gives a precise error, not an OOM.
 */

export const GGUF_MAGIC = [0x47, 0x47, 0x55, 0x46] // "GGUF"
const DEFAULT_ALIGNMENT = 32
const GGML_MAX_DIMS = 4
/** Arrays longer than this are summarised in `metadata` (and not decoded at all). */
const METADATA_ARRAY_KEEP = 64
const MAX_ARRAY_NESTING = 16
/** Header windows start small and grow to 1 MiB; a single larger step gets a larger one. */
const FIRST_WINDOW = 64 * 1024
const MAX_WINDOW = 1024 * 1024

/** gguf_type: metadata value types, with their byte size (minimum size for STRING/ARRAY). */
const VALUE_TYPES: ReadonlyArray<readonly [name: string, size: number]> = [
  ['UINT8', 1],
  ['INT8', 1],
  ['UINT16', 2],
  ['INT16', 2],
  ['UINT32', 4],
  ['INT32', 4],
  ['FLOAT32', 4],
  ['BOOL', 1],
  ['STRING', 8],
  ['ARRAY', 12],
  ['UINT64', 8],
  ['INT64', 8],
  ['FLOAT64', 8],
]
const T_STRING = 8
const T_ARRAY = 9

/** Stands in for a metadata array longer than METADATA_ARRAY_KEEP items. */
export interface GgufArraySummary {
  type: 'array'
  itemType: string
  length: number
}

/**
 * A metadata value as returned: numbers (64-bit integers beyond 2^53 become decimal strings,
 * so metadata stays JSON-safe), booleans, strings, arrays, or an array summary.
 */
export type GgufValue = number | boolean | string | GgufValue[] | GgufArraySummary

export interface TensorInfo {
  name: string
  ne: number[]
  typeId: number
  /** Relative to the data section. */
  offset: number
}

export interface GgufHeader {
  version: number
  kvCount: number
  metadata: Record<string, GgufValue>
  infos: TensorInfo[]
  alignment: number
  dataStart: number
}

/** Thrown inside a parse step when the window ends before the file does; caught by `attempt`. */
const NEED_MORE = Symbol('gguf-need-more')

/**
 * Little-endian cursor over a window of the file that grows on demand. Parse steps are
 * synchronous; a step that runs off the window is rolled back and retried after `refill`.
 */
class HeaderWindow {
  private buf: Uint8Array = new Uint8Array(0)
  private view = new DataView(this.buf.buffer)
  private base = 0
  private pos = 0
  private windowSize = FIRST_WINDOW
  private readonly text = new TextDecoder('utf-8')

  constructor(
    private readonly src: ByteSource,
    private readonly file: string,
  ) {}

  get offset(): number {
    return this.base + this.pos
  }

  get fileSize(): number {
    return this.src.size
  }

  fail(problem: string, tensor: string | null = null): never {
    throw new ModelFormatError(this.file, tensor, problem)
  }

  /** Runs one step; returns NEED_MORE (position unchanged) if it needs bytes past the window. */
  attempt<T>(step: () => T): T | typeof NEED_MORE {
    const start = this.pos
    try {
      return step()
    } catch (err) {
      if (err !== NEED_MORE) throw err
      this.pos = start
      return NEED_MORE
    }
  }

  async step<T>(step: () => T): Promise<T> {
    for (;;) {
      const r = this.attempt(step)
      if (r !== NEED_MORE) return r
      await this.refill()
    }
  }

  /**
   * Reads the next window from the current position (the start of the step that ran out).
   * It is at least twice what was left unread, so a step larger than any window still fits
   * eventually; otherwise windows stay ≤ MAX_WINDOW, so reading stops soon after the header.
   */
  async refill(): Promise<void> {
    const at = this.offset
    const unreadInWindow = Math.max(0, this.buf.length - this.pos)
    this.windowSize = Math.min(this.windowSize * 2, MAX_WINDOW)
    const length = Math.min(this.src.size - at, Math.max(this.windowSize, unreadInWindow * 2))
    this.buf = await this.src.read(at, length)
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength)
    this.base = at
    this.pos = 0
  }

  private need(n: number, what: string): void {
    if (this.pos + n <= this.buf.length) return
    if (this.base + this.buf.length >= this.src.size || this.offset + n > this.src.size) {
      this.fail(`header truncated: ${what} at byte ${this.offset} needs ${n} bytes, but the file ends at byte ${this.src.size}`)
    }
    throw NEED_MORE
  }

  u8(what: string): number {
    this.need(1, what)
    return this.buf[this.pos++]!
  }
  u32(what: string): number {
    this.need(4, what)
    const v = this.view.getUint32(this.pos, true)
    this.pos += 4
    return v
  }

  /** A u64 that sizes or places something: must be a safe integer. */
  count(what: string): number {
    this.need(8, what)
    const v = this.view.getBigUint64(this.pos, true)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} at byte ${this.offset} is ${v}, implausibly large`)
    this.pos += 8
    return Number(v)
  }

  /** Moves past `n` bytes without reading them (they need not be in the window). */
  skip(n: number, what: string): void {
    if (n > this.src.size - this.offset) {
      this.fail(`${what} at byte ${this.offset} spans ${n} bytes, past the end of the file (${this.src.size} bytes)`)
    }
    this.pos += n
  }

  string(what: string): string {
    const start = this.offset
    const len = this.count(`length of ${what}`)
    if (len > this.src.size - this.offset) {
      this.fail(`string length ${len} of ${what} at byte ${start} exceeds the rest of the file (${this.src.size - this.offset} bytes)`)
    }
    this.need(len, what)
    const s = this.text.decode(this.buf.subarray(this.pos, this.pos + len))
    this.pos += len
    return s
  }

  skipString(what: string): void {
    const len = this.count(`length of ${what}`)
    this.skip(len, what)
  }

  /** One scalar metadata value of gguf type `t` (not STRING/ARRAY). */
  scalar(t: number, what: string): number | boolean | string {
    const size = VALUE_TYPES[t]![1]
    this.need(size, what)
    const p = this.pos
    this.pos += size
    const v = this.view
    switch (t) {
      case 0: return v.getUint8(p)
      case 1: return v.getInt8(p)
      case 2: return v.getUint16(p, true)
      case 3: return v.getInt16(p, true)
      case 4: return v.getUint32(p, true)
      case 5: return v.getInt32(p, true)
      case 6: return v.getFloat32(p, true)
      // The spec allows only 0/1; llama.cpp reads any non-zero byte as true, and so do we.
      case 7: return v.getUint8(p) !== 0
      case 10: return safeOrString(v.getBigUint64(p, true))
      case 11: return safeOrString(v.getBigInt64(p, true))
      case 12: return v.getFloat64(p, true)
      default: throw new Error(`unreachable gguf type ${t}`)
    }
  }
}

/** 64-bit integers stay numbers when exact; larger ones become decimal strings (JSON-safe). */
function safeOrString(v: bigint): number | string {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v.toString()
}

function valueTypeName(t: number): string {
  return VALUE_TYPES[t]?.[0] ?? `type ${t}`
}

function checkValueType(w: HeaderWindow, t: number, what: string): void {
  if (!Number.isInteger(t) || t < 0 || t >= VALUE_TYPES.length) w.fail(`${what} has unknown value type ${t}`)
}

/** Array header (item type, count), checked against what the rest of the file could hold. */
function arrayHeader(w: HeaderWindow, what: string): { itemType: number; count: number } {
  const itemType = w.u32(`item type of ${what}`)
  checkValueType(w, itemType, what)
  const at = w.offset
  const count = w.count(`length of ${what}`)
  const minBytes = count * VALUE_TYPES[itemType]![1]
  if (minBytes > w.fileSize - w.offset) {
    w.fail(`array length ${count} of ${what} at byte ${at} cannot fit in the rest of the file (${w.fileSize - w.offset} bytes)`)
  }
  return { itemType, count }
}

/** Reads (keep) or walks past (summarise) the items of an array, synchronously. */
function arrayItemsSync(w: HeaderWindow, itemType: number, count: number, what: string, depth: number, keepAll = false): GgufValue {
  const keep = keepAll || count <= METADATA_ARRAY_KEEP
  const summary: GgufArraySummary = { type: 'array', itemType: valueTypeName(itemType), length: count }
  if (itemType !== T_STRING && itemType !== T_ARRAY) {
    if (!keep) {
      w.skip(count * VALUE_TYPES[itemType]![1], what)
      return summary
    }
    const out: GgufValue[] = []
    for (let i = 0; i < count; i++) out.push(w.scalar(itemType, what))
    return out
  }
  const out: GgufValue[] = []
  for (let i = 0; i < count; i++) {
    const v = arrayItem(w, itemType, keep, what, depth)
    if (keep) out.push(v!)
  }
  return keep ? out : summary
}

/** One STRING or ARRAY item of an array; returns undefined when not kept. */
function arrayItem(w: HeaderWindow, itemType: number, keep: boolean, what: string, depth: number): GgufValue | undefined {
  if (itemType === T_STRING) {
    if (keep) return w.string(`item of ${what}`)
    w.skipString(`item of ${what}`)
    return undefined
  }
  if (depth >= MAX_ARRAY_NESTING) w.fail(`${what} nests arrays more than ${MAX_ARRAY_NESTING} deep`)
  const inner = arrayHeader(w, `nested array in ${what}`)
  const v = arrayItemsSync(w, inner.itemType, inner.count, what, depth + 1)
  return keep ? v : undefined
}

/** Top-level array value: items are parsed one step each, so a huge array needs no huge window. */
async function arrayValue(w: HeaderWindow, what: string, keepAll: boolean): Promise<GgufValue> {
  const { itemType, count } = await w.step(() => arrayHeader(w, what))
  if (itemType !== T_STRING && itemType !== T_ARRAY) return w.step(() => arrayItemsSync(w, itemType, count, what, 1, keepAll))
  const keep = keepAll || count <= METADATA_ARRAY_KEEP
  const out: GgufValue[] = []
  const readItem = () => arrayItem(w, itemType, keep, what, 1)
  for (let i = 0; i < count; i++) {
    let v = w.attempt(readItem)
    while (v === NEED_MORE) {
      await w.refill()
      v = w.attempt(readItem)
    }
    if (keep) out.push(v!)
  }
  return keep ? out : { type: 'array', itemType: valueTypeName(itemType), length: count }
}

/**
 * Reads and checks the whole header of the GGUF file behind `src`; tensor data is not read.
 * `keepArrays` names keys whose arrays are returned whole however long (the tokenizer's).
 */
export function readGgufHeader(src: ByteSource, file: string, options: { keepArrays?: (key: string) => boolean } = {}): Promise<GgufHeader> {
  return parseHeader(new HeaderWindow(src, file), options.keepArrays ?? (() => false))
}

async function parseHeader(w: HeaderWindow, keepArrays: (key: string) => boolean): Promise<GgufHeader> {
  const { version, tensorCount, kvCount } = await w.step(() => {
    const magic = [0, 1, 2, 3].map(() => w.u8('magic'))
    if (magic.some((b, i) => b !== GGUF_MAGIC[i])) {
      const shown = magic.map((b) => b.toString(16).padStart(2, '0')).join(' ')
      w.fail(`not a GGUF file: magic bytes are ${shown}, expected 47 47 55 46 ("GGUF")`)
    }
    const version = w.u32('version')
    // Big-endian files (gguf-py --bigendian) keep the magic but byte-swap the version.
    if (version !== 0 && (version & 0xffff) === 0) {
      w.fail(`big-endian GGUF (version field reads 0x${version.toString(16)}); only little-endian files are supported`)
    }
    if (version === 1) w.fail('unsupported GGUF version 1 (32-bit counts, 2023); only versions 2 and 3 are supported, re-convert the model')
    if (version !== 2 && version !== 3) w.fail(`unsupported GGUF version ${version}; only versions 2 and 3 are supported`)
    const tensorCount = w.count('tensor count')
    const kvCount = w.count('metadata key/value count')
    return { version, tensorCount, kvCount }
  })
  // Smallest encodings: a tensor info is 24 bytes (empty name, 0 dims), a key/value 13.
  if (tensorCount * 24 + kvCount * 13 > w.fileSize - w.offset) {
    w.fail(
      `header declares ${tensorCount} tensors and ${kvCount} metadata entries, which cannot fit in a file of ${w.fileSize} bytes (truncated or corrupt header)`,
    )
  }

  const metadata: Record<string, GgufValue> = Object.create(null) as Record<string, GgufValue>
  let alignment = DEFAULT_ALIGNMENT
  for (let i = 0; i < kvCount; i++) {
    const { key, type } = await w.step(() => {
      const key = w.string(`key of metadata entry ${i}`)
      const type = w.u32(`value type of '${key}'`)
      checkValueType(w, type, `metadata key '${key}'`)
      return { key, type }
    })
    if (Object.prototype.hasOwnProperty.call(metadata, key)) w.fail(`duplicate metadata key '${key}'`)
    const what = `metadata '${key}'`
    metadata[key] =
      type === T_ARRAY ? await arrayValue(w, what, keepArrays(key)) : type === T_STRING ? await w.step(() => w.string(what)) : await w.step(() => w.scalar(type, what))
    if (key === 'general.alignment') {
      const a = metadata[key]
      if (typeof a !== 'number' || !Number.isInteger(a) || a <= 0 || (a & (a - 1)) !== 0 || a > 2 ** 30) {
        w.fail(`general.alignment must be a power of two, got ${JSON.stringify(a)}`)
      }
      alignment = a
    }
  }

  const infos: TensorInfo[] = []
  for (let i = 0; i < tensorCount; i++) {
    infos.push(
      await w.step(() => {
        const name = w.string(`name of tensor ${i}`)
        const nDims = w.u32(`dimension count of tensor '${name}'`)
        if (nDims > GGML_MAX_DIMS) w.fail(`has ${nDims} dimensions; ggml allows at most ${GGML_MAX_DIMS}`, name)
        const ne: number[] = []
        for (let d = 0; d < nDims; d++) ne.push(w.count(`ne[${d}] of tensor '${name}'`))
        const typeId = w.u32(`type of tensor '${name}'`)
        const offset = w.count(`data offset of tensor '${name}'`)
        return { name, ne, typeId, offset }
      }),
    )
  }
  const dataStart = Math.ceil(w.offset / alignment) * alignment
  return { version, kvCount, metadata, infos, alignment, dataStart }
}
