/**
 * The payload the calibration caches store: one JSON header line, then typed arrays back to
 * back from the first `align`-byte boundary after it (so each can be copied out as whole
 * elements). The header says what the arrays are; readers take them in its order and check
 * the payload adds up.
 */

/** Header line + padding + every array's bytes in order. */
export function packHeaderAndArrays(header: unknown, arrays: readonly ArrayBufferView[], align: 4 | 8): Uint8Array {
  const head = Buffer.from(`${JSON.stringify(header)}\n`, 'utf8')
  const pad = (align - (head.length % align)) % align
  const out = new Uint8Array(head.length + pad + arrays.reduce((s, a) => s + a.byteLength, 0))
  out.set(head, 0)
  let at = head.length + pad
  for (const a of arrays) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), at)
    at += a.byteLength
  }
  return out
}

/**
 * The header and a reader of the arrays that follow it. Each array gets a buffer of its own:
 * a view into one shared buffer would be copied whole every time one is posted to a worker
 * (structured clone copies buffers). `what` names the entry in errors.
 */
export function unpackHeaderAndArrays<H>(payload: Uint8Array, align: 4 | 8, what: string): { header: H; take(type: typeof Float32Array, n: number): Float32Array; take(type: typeof Float64Array, n: number): Float64Array; end(): void } {
  const eol = payload.indexOf(10)
  if (eol < 0) throw new Error(`${what} has no header`)
  const header = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, eol).toString('utf8')) as H
  let at = eol + 1
  at += (align - (at % align)) % align
  return {
    header,
    take(type: typeof Float32Array | typeof Float64Array, n: number): never {
      // Checked before allocating: a damaged header must not ask for gigabytes.
      if (!Number.isSafeInteger(n) || n < 0 || at + n * type.BYTES_PER_ELEMENT > payload.length) throw new Error(`${what} is shorter than its header says`)
      const a = new type(n)
      new Uint8Array(a.buffer).set(payload.subarray(at, at + a.byteLength))
      at += a.byteLength
      return a as never
    },
    end() {
      if (at !== payload.length) throw new Error(`${what} is longer than its header says`)
    },
  }
}
