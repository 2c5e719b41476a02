import type { ByteSource } from '../../io/byte-source'
import { ModelFormatError } from '../../common/errors'

/**
 * A minimal, lazy reader of the protobuf wire format (protobuf.dev/programming-guides/encoding).
 *
 * ONNX files are one big protobuf message whose tensor payloads can run to many GB, so nothing
 * here decodes a whole message: `WireScanner.header` reads one field header at a time through a
 * small window on the file, and length-delimited payloads come back as (absolute offset,
 * length) ranges the caller either descends into, reads (small strings), or just records
 * (tensor bytes). Every malformed input becomes a ModelFormatError naming the byte offset.
 */

export const WIRE_VARINT = 0
export const WIRE_I64 = 1
export const WIRE_LEN = 2
export const WIRE_I32 = 5

export interface FieldHeader {
  field: number
  wireType: number
  /** Absolute file offset of the payload (after the tag and, for LEN, the length prefix). */
  offset: number
  /** Payload bytes: LEN = declared length, VARINT = bytes of the varint, I32 = 4, I64 = 8. */
  length: number
  /**
   * VARINT only: the value read as a signed int64 (proto int32/int64/enum/bool). Exact while
   * |value| <= 2^53; callers that need an exact integer check Number.isSafeInteger.
   */
  value: number
  /** Absolute offset of the next field. */
  next: number
}

/** A varint split into two unsigned 32-bit halves, because JS numbers cannot hold every uint64. */
export interface VarintParts {
  lo: number
  hi: number
  /** Index just past the varint. */
  next: number
}

export const VARINT_OK = 0
/** The buffer ended before the varint's last byte. */
export const VARINT_SHORT = 1
/** More than 10 bytes with the continuation bit set: not a valid varint. */
export const VARINT_OVERLONG = 2

/** Decodes the varint at bytes[pos], not reading at or past `end`; fills `out`, returns a status. */
export function decodeVarint(bytes: Uint8Array, pos: number, end: number, out: VarintParts): number {
  let lo = 0
  let hi = 0
  for (let i = 0; i < 10; i++) {
    if (pos + i >= end) return VARINT_SHORT
    const b = bytes[pos + i]!
    // Bits 0..27 come from bytes 0..3; byte 4 straddles the halves; bytes 5..9 fill `hi`.
    if (i < 4) lo |= (b & 0x7f) << (7 * i)
    else if (i === 4) {
      lo |= (b & 0x0f) << 28
      hi |= (b & 0x7f) >> 4
    } else hi |= (b & 0x7f) << (7 * i - 32)
    if ((b & 0x80) === 0) {
      out.lo = lo >>> 0
      out.hi = hi >>> 0
      out.next = pos + i + 1
      return VARINT_OK
    }
  }
  return VARINT_OVERLONG
}

/** Two's-complement int64 from its halves (proto int64/int32: negatives take 10 bytes). */
export function varintToInt64(lo: number, hi: number): number {
  if (hi & 0x80000000) {
    const nlo = (~lo + 1) >>> 0
    const nhi = (~hi + (nlo === 0 ? 1 : 0)) >>> 0
    return -(nhi * 4294967296 + nlo)
  }
  return hi * 4294967296 + lo
}

export function varintToUint64(lo: number, hi: number): number {
  return hi * 4294967296 + lo
}

/** Longest field header: a 5-byte tag (field numbers < 2^29) plus a 10-byte length varint. */
const MAX_HEADER_BYTES = 15

export class WireScanner {
  private winStart = 0
  private win: Uint8Array = new Uint8Array(0)
  private readonly parts: VarintParts = { lo: 0, hi: 0, next: 0 }
  private readonly utf8 = new TextDecoder('utf-8')

  /**
   * A 64 KiB window: small enough that jumping over a large tensor payload (which refills it
   * at the next field) costs little, big enough that runs of small nodes need few reads.
   */
  constructor(
    readonly source: ByteSource,
    private readonly windowSize = 64 * 1024,
  ) {}

  get path(): string {
    return this.source.path
  }

  /** Bytes [offset, offset+length), from the window when they fit (a view into it). */
  async bytes(offset: number, length: number): Promise<Uint8Array> {
    const hit = this.peek(offset, length)
    if (hit) return hit
    if (length > this.windowSize) return this.source.read(offset, length)
    await this.fill(offset, length)
    return this.win.subarray(0, length)
  }

  /** The bytes if the window already holds them, else null: no await on the common path. */
  peek(offset: number, length: number): Uint8Array | null {
    return this.holds(offset, length) ? this.win.subarray(offset - this.winStart, offset - this.winStart + length) : null
  }

  private holds(offset: number, length: number): boolean {
    return offset >= this.winStart && offset + length <= this.winStart + this.win.length
  }

  private async fill(offset: number, length: number): Promise<void> {
    const size = Math.max(length, Math.min(this.windowSize, this.source.size - offset))
    this.win = await this.source.read(offset, size)
    this.winStart = offset
  }

  async string(h: FieldHeader): Promise<string> {
    this.expectWire(h, WIRE_LEN, 'string')
    const b = this.peek(h.offset, h.length) ?? (await this.bytes(h.offset, h.length))
    // Names are short and ASCII; TextDecoder's per-call cost dominates for them.
    if (b.length <= 64 && b.every((c) => c < 0x80)) return String.fromCharCode(...b)
    return this.utf8.decode(b)
  }

  /**
   * Reads the field header at `pos` inside a message that ends at `end` (absolute offsets).
   * `what` names the enclosing message in error messages, e.g. "GraphProto".
   */
  async header(pos: number, end: number, what: string): Promise<FieldHeader> {
    const avail = Math.min(MAX_HEADER_BYTES, end - pos)
    if (!this.holds(pos, avail)) await this.fill(pos, avail)
    // Decode straight from the window; `p.next` values are window indices.
    const buf = this.win
    const base = this.winStart
    const lim = pos - base + avail
    const p = this.parts
    const st = decodeVarint(buf, pos - base, lim, p)
    if (st !== VARINT_OK) this.varintError(st, pos, end, `field tag in ${what}`)
    if (p.hi !== 0 || p.lo >>> 3 === 0) this.fail(`invalid field tag ${varintToUint64(p.lo, p.hi)} in ${what} at byte ${pos}`)
    const field = p.lo >>> 3
    const wireType = p.lo & 7
    const at = base + p.next
    const h: FieldHeader = { field, wireType, offset: at, length: 0, value: 0, next: 0 }
    switch (wireType) {
      case WIRE_VARINT: {
        const vs = decodeVarint(buf, p.next, lim, p)
        if (vs !== VARINT_OK) this.varintError(vs, at, end, `value of field ${field} in ${what}`)
        h.length = base + p.next - at
        h.value = varintToInt64(p.lo, p.hi)
        break
      }
      case WIRE_I64:
      case WIRE_I32:
        h.length = wireType === WIRE_I64 ? 8 : 4
        break
      case WIRE_LEN: {
        const ls = decodeVarint(buf, p.next, lim, p)
        if (ls !== VARINT_OK) this.varintError(ls, at, end, `length of field ${field} in ${what}`)
        h.offset = base + p.next
        h.length = varintToUint64(p.lo, p.hi)
        break
      }
      case 3:
      case 4:
        this.fail(`field ${field} in ${what} at byte ${pos} uses wire type ${wireType} (protobuf groups), which ONNX never writes`)
        break
      default:
        this.fail(`field ${field} in ${what} at byte ${pos} has unknown wire type ${wireType} (corrupt file?)`)
    }
    h.next = h.offset + h.length
    if (h.next > end) {
      const atEof = end === this.source.size
      this.fail(
        `field ${field} in ${what} at byte ${pos} needs ${h.length} bytes from byte ${h.offset} but the ${what} ends at byte ${end}` +
          (atEof ? ' (end of file: truncated?)' : ''),
      )
    }
    return h
  }

  /** Throws unless `h` has the wire type the schema declares for it. */
  expectWire(h: FieldHeader, wireType: number, what: string): void {
    if (h.wireType !== wireType) {
      this.fail(`field ${h.field} (${what}) at byte ${h.offset} has wire type ${h.wireType}, expected ${wireType}`)
    }
  }

  /** An int64 field that must be an exact, non-negative integer (sizes, dims, versions). */
  count(h: FieldHeader, what: string): number {
    this.expectWire(h, WIRE_VARINT, what)
    if (!Number.isSafeInteger(h.value) || h.value < 0) this.fail(`${what} = ${h.value} at byte ${h.offset} is out of range`)
    return h.value
  }

  fail(problem: string): never {
    throw new ModelFormatError(this.source.path, null, problem)
  }

  private varintError(status: number, pos: number, end: number, what: string): never {
    if (status === VARINT_OVERLONG) this.fail(`malformed varint (more than 10 bytes) for ${what} at byte ${pos}`)
    this.fail(`varint for ${what} at byte ${pos} runs past the end of its message at byte ${end}` + (end === this.source.size ? ' (truncated file?)' : ''))
  }
}

/**
 * Decodes a packed repeated varint field held in memory, calling `sink(index, lo, hi)` for the
 * first `limit` elements; returns how many elements the payload holds when `limit` is
 * Infinity, else how many it decoded. Throws (via `fail`) on a malformed varint.
 */
export function decodePackedVarints(
  bytes: Uint8Array,
  limit: number,
  sink: (index: number, lo: number, hi: number) => void,
  fail: (problem: string) => never,
): number {
  const p: VarintParts = { lo: 0, hi: 0, next: 0 }
  let pos = 0
  let n = 0
  while (pos < bytes.length && n < limit) {
    const st = decodeVarint(bytes, pos, bytes.length, p)
    if (st === VARINT_OVERLONG) fail(`malformed varint (more than 10 bytes) at element ${n} of a packed field`)
    if (st === VARINT_SHORT) fail(`packed field ends inside element ${n}`)
    sink(n, p.lo, p.hi)
    n++
    pos = p.next
  }
  return n
}
