import type { OutputFile } from '../../io/output-file'
import type { ElemType, ExternalRef, GraphBuilder } from './graph-builder'

/**
 * The external data file of an ONNX model written tensor by tensor (`model.onnx_data` beside
 * `model.onnx`): each tensor's bytes are appended as they come and only its location, offset
 * and length stay in memory, so an exporter never holds more than the tensor it is writing.
 * Offsets are 64-byte aligned (onnxruntime maps the file; aligned tensors need no copy).
 */
export const EXTERNAL_ALIGN = 64

export class ExternalDataWriter {
  private written = 0

  constructor(
    private readonly file: OutputFile,
    /** The file name as the model refers to it (relative to model.onnx). */
    readonly location: string,
  ) {}

  get bytes(): number {
    return this.written
  }

  /** Appends one tensor and registers it with the graph as an external initializer. */
  async add(g: GraphBuilder, name: string, type: ElemType, dims: number[], data: Uint8Array): Promise<ExternalRef> {
    return this.addParts(g, name, type, dims, [data])
  }

  /**
   * Appends one tensor from consecutive parts (row chunks of a large embedding, so it is never
   * in memory whole) and registers it as an external initializer.
   */
  async addParts(g: GraphBuilder, name: string, type: ElemType, dims: number[], parts: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<ExternalRef> {
    const aligned = Math.ceil(this.written / EXTERNAL_ALIGN) * EXTERNAL_ALIGN
    if (aligned > this.written) {
      await this.file.write(new Uint8Array(aligned - this.written))
      this.written = aligned
    }
    let length = 0
    for await (const part of parts) {
      await this.file.write(part)
      length += part.byteLength
      this.written += part.byteLength
    }
    const ref: ExternalRef = { name, type, dims, location: this.location, offset: aligned, length }
    g.externalRef(ref)
    return ref
  }
}

/** Bytes of a typed array as they lie in memory (little-endian on every supported host). */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
}
