import type { GraphBuilder } from '../formats/onnx/graph-builder'

/**
 * How the decoder graph gets its weights. The evaluation engine hands float32 arrays to the
 * builder and fuses q|k|v and gate|up into one Gemm each (ENGINE_WEIGHTS); an exporter streams
 * every tensor to its external data file as it comes and may write a planned linear as a
 * quantized operator (MatMulNBits, a dequantising subgraph). Both build the same decoder.
 */
export interface LinearPart {
  /** The stored tensor (the plan's key). */
  tensor: string
  /** Output channels it contributes. */
  rows: number
  /** Its float32 rows [rows, cols] as the evaluation reads them (HF row order, overrides applied). */
  read(): Promise<Float32Array>
}

export interface GraphWeights {
  /** A float tensor (embedding, norms, biases): returns its value name. */
  float(g: GraphBuilder, name: string, dims: number[], source: string, read: () => Promise<Float32Array>): Promise<string>
  /** x [n, cols] → x·Wᵀ (+ bias) [n, Σ rows], W = the parts' rows stacked in order. */
  linear(g: GraphBuilder, x: string, name: string, parts: LinearPart[], cols: number, bias?: string): Promise<string>
  /** A small float constant (the RoPE tables). */
  table(g: GraphBuilder, name: string, dims: number[], data: Float32Array): Promise<string>
}

export const ENGINE_WEIGHTS: GraphWeights = {
  async float(g, name, dims, _source, read) {
    return g.weight(name, dims, await read())
  },
  async linear(g, x, name, parts, cols, bias) {
    const data = parts.length === 1 ? await parts[0]!.read() : concat(await sequential(parts.map((p) => p.read)))
    const rows = parts.reduce((s, p) => s + p.rows, 0)
    const w = g.weight(name, [rows, cols], data)
    // transB = 1 on the weight as stored ([out, in] rows): no transposed copy.
    return g.op('Gemm', bias ? [x, w, bias] : [x, w], { transB: { int: 1 } })
  },
  async table(g, name, dims, data) {
    return g.constFloat(data, dims, name)
  },
}

/** Runs the reads one after another (in order: progress ticks and reads stay sequential). */
async function sequential(reads: (() => Promise<Float32Array>)[]): Promise<Float32Array[]> {
  const out: Float32Array[] = []
  for (const r of reads) out.push(await r())
  return out
}

export function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}
