import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { availableParallelism, tmpdir } from 'node:os'
import { dirname, join, relative, sep } from 'node:path'
import type { GraphBuilder } from '../formats/onnx/graph-builder'
import { InferenceRuntimeError } from './errors'

/**
 * One interface over two onnxruntime builds running the same graph:
 * - 'wasm': onnxruntime-web (WASM, SIMD, threads) — the portable default, runs wherever the
 *   app runs. wasm32 caps its heap at 4 GB, which weights and runtime share.
 * - 'native': onnxruntime-node (native CPU kernels), several times faster, when it loads.
 * Each is imported lazily, on first use. Sessions name their execution provider ('wasm' /
 * 'cpu') explicitly, so both can be loaded in one thread (the bench and tests compare them in
 * one process); the engine's jobs use one per worker.
 */
export type BackendKind = 'wasm' | 'native'

/**
 * float16 and bool appear only with ONNX files run as they are: an fp16 KV cache passed through
 * (IEEE half bits), a merged decoder's `use_cache_branch` flag (one byte per value).
 */
export type TensorType = 'float32' | 'int64' | 'float16' | 'bool'
export interface RunTensor {
  type: TensorType
  data: Float32Array | BigInt64Array | Uint16Array | Uint8Array
  dims: number[]
}

export interface BackendSession {
  readonly backend: BackendKind
  readonly threads: number
  run(feeds: Record<string, RunTensor>, fetches: readonly string[]): Promise<Record<string, RunTensor>>
  release(): Promise<void>
}

export interface BackendOptions {
  /** Threads for the runtime's kernels; default: every core. */
  threads?: number
}

/**
 * The wasm32 heap (4 GiB) holds the weights, onnxruntime's packed copies of the Gemm weights
 * and the activations. The synthetic 0.5B model (1.84 GiB of fp32 weights) loads and runs
 * (peak RSS 4.8 GiB); beyond 3 GiB of weights there is no room left, so it is refused up front.
 */
export const WASM_WEIGHT_LIMIT_BYTES = 3 * 2 ** 30

export class BackendUnavailableError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'BackendUnavailableError'
  }
}

// Structural subset of onnxruntime-common used here (both packages export it).
interface OrtTensor {
  type: string
  data: unknown
  dims: readonly number[]
}
interface OrtValueMetadata {
  name: string
  isTensor: boolean
  type?: string
  shape?: readonly (number | string)[]
}
interface OrtSession {
  readonly inputMetadata?: readonly OrtValueMetadata[]
  readonly outputMetadata?: readonly OrtValueMetadata[]
  run(feeds: Record<string, OrtTensor>, fetches?: readonly string[]): Promise<Record<string, OrtTensor>>
  release(): Promise<void>
}
interface OrtModule {
  env: { logLevel?: string; wasm?: { numThreads?: number } }
  Tensor: new (type: string, data: RunTensor['data'], dims: readonly number[]) => OrtTensor
  InferenceSession: { create(model: Uint8Array | string, options?: Record<string, unknown>): Promise<OrtSession> }
}

let wasmModule: Promise<OrtModule> | null = null
let wasmThreads = 0
let nativeModule: Promise<OrtModule> | null = null

async function loadWasm(threads: number): Promise<OrtModule> {
  if (!wasmModule) {
    wasmModule = import('onnxruntime-web').then((m) => {
      const ort = ((m as unknown as { default?: OrtModule }).default ?? m) as unknown as OrtModule
      ort.env.logLevel = 'error'
      // Fixed at the first session of this thread; later sessions share the thread pool.
      ort.env.wasm!.numThreads = threads
      wasmThreads = threads
      return ort
    })
  }
  return wasmModule
}

async function loadNative(): Promise<OrtModule> {
  if (!nativeModule) {
    nativeModule = import('onnxruntime-node').then(
      (m) => {
        const ort = ((m as unknown as { default?: OrtModule }).default ?? m) as unknown as OrtModule
        ort.env.logLevel = 'error'
        return ort
      },
      (err: Error) => {
        nativeModule = null
        throw new BackendUnavailableError(`the native backend (onnxruntime-node) does not load here: ${err.message}`)
      },
    )
  }
  return nativeModule
}

/** Whether onnxruntime-node loads in this process (the CLI and UI offer 'native' only then). */
export async function nativeBackendAvailable(): Promise<{ available: boolean; reason?: string }> {
  try {
    await loadNative()
    return { available: true }
  } catch (err) {
    return { available: false, reason: (err as Error).message }
  }
}

export function defaultThreads(): number {
  return Math.max(1, availableParallelism())
}

const SESSION_OPTIONS = {
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
  // Idle kernel threads sleep instead of spinning: on a machine shared with the UI and other
  // jobs, spinning threads lost 3× in generation and up to 3× in evaluation (measured).
  extra: { session: { intra_op: { allow_spinning: '0' } } },
}

export async function createBackendSession(kind: BackendKind, graph: GraphBuilder, options: BackendOptions = {}): Promise<BackendSession> {
  const threads = options.threads ?? defaultThreads()
  const sessionOptions = SESSION_OPTIONS
  if (kind === 'wasm') {
    if (graph.externalBytes > WASM_WEIGHT_LIMIT_BYTES) {
      throw new BackendUnavailableError(
        `the weights take ${(graph.externalBytes / 2 ** 30).toFixed(2)} GiB in float32, more than the WASM backend can hold ` +
          `(wasm32 heap: 4 GiB for weights, their packed copies and activations); use the native backend`,
      )
    }
    const ort = await loadWasm(threads)
    const serialized = graph.serialize('per-tensor')
    const externalData = serialized.files.map((f) => {
      const w = f.parts[0]!.data
      return { path: f.path, data: new Uint8Array(w.buffer, w.byteOffset, w.byteLength) }
    })
    const session = await ort.InferenceSession.create(serialized.model, { ...sessionOptions, executionProviders: ['wasm'], externalData }).catch((err: unknown) => {
      throw new InferenceRuntimeError('wasm', 'creating the session', err)
    })
    return wrap(ort, session, 'wasm', wasmThreads)
  }
  const ort = await loadNative()
  // onnxruntime-node reads external data from files next to the model only, so both go to a
  // private temporary folder that is removed as soon as the session holds the weights.
  const dir = await mkdtemp(join(tmpdir(), 'quantscope-ort-'))
  try {
    const modelPath = await writeModelFiles(graph, dir)
    graph.releaseWeights()
    const session = await ort.InferenceSession.create(modelPath, {
      ...sessionOptions,
      executionProviders: ['cpu'],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
    }).catch((err: unknown) => {
      throw new InferenceRuntimeError('native', 'creating the session', err)
    })
    return wrap(ort, session, 'native', threads)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** model.onnx + weights.bin in `dir`; returns the model's path. */
async function writeModelFiles(graph: GraphBuilder, dir: string): Promise<string> {
  const serialized = graph.serialize('single-file')
  const modelPath = join(dir, 'model.onnx')
  await writeFile(modelPath, serialized.model)
  for (const f of serialized.files) {
    const fh = await open(join(dir, f.path), 'w')
    try {
      for (const part of f.parts) await fh.write(new Uint8Array(part.data.buffer, part.data.byteOffset, part.data.byteLength), 0, part.data.byteLength, part.offset)
    } finally {
      await fh.close()
    }
  }
  return modelPath
}

/** A graph input or output as the runtime sees it: element type and shape (numbers, or symbolic names). */
export interface ValueInfo {
  name: string
  /** 'float32', 'int64', 'float16', … ; null for a non-tensor value. */
  type: string | null
  shape: (number | string)[]
}

export interface FileBackendSession extends BackendSession {
  readonly inputs: ValueInfo[]
  readonly outputs: ValueInfo[]
}

/**
 * An ONNX file run as it is (not built by us). 'native' opens it by path, so onnxruntime reads
 * the external data files next to it itself; 'wasm' has no file system, so the model's bytes
 * and each external data file (`externalFiles`, absolute paths inside the model's folder) are
 * handed over under the location the model names them by.
 */
export async function createFileBackendSession(
  kind: BackendKind,
  modelPath: string,
  externalFiles: readonly string[],
  options: BackendOptions = {},
): Promise<FileBackendSession> {
  const threads = options.threads ?? defaultThreads()
  if (kind === 'wasm') {
    let bytes = 0
    for (const f of [modelPath, ...externalFiles]) bytes += (await stat(f)).size
    if (bytes > WASM_WEIGHT_LIMIT_BYTES) {
      throw new BackendUnavailableError(
        `${modelPath} and its external data take ${(bytes / 2 ** 30).toFixed(2)} GiB, more than the WASM backend can hold ` +
          `(wasm32 heap: 4 GiB for weights, their packed copies and activations); use the native backend`,
      )
    }
    const ort = await loadWasm(threads)
    const dir = dirname(modelPath)
    const externalData = await Promise.all(
      externalFiles.map(async (f) => ({ path: relative(dir, f).split(sep).join('/'), data: new Uint8Array(await readFile(f)) })),
    )
    const session = await ort.InferenceSession.create(new Uint8Array(await readFile(modelPath)), { ...SESSION_OPTIONS, executionProviders: ['wasm'], externalData }).catch(
      (err: unknown) => {
        throw new InferenceRuntimeError('wasm', `creating the session of ${modelPath}`, err)
      },
    )
    return { ...wrap(ort, session, 'wasm', wasmThreads), inputs: valueInfos(session.inputMetadata), outputs: valueInfos(session.outputMetadata) }
  }
  const ort = await loadNative()
  const session = await ort.InferenceSession.create(modelPath, {
    ...SESSION_OPTIONS,
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  }).catch((err: unknown) => {
    throw new InferenceRuntimeError('native', `creating the session of ${modelPath}`, err)
  })
  return { ...wrap(ort, session, 'native', threads), inputs: valueInfos(session.inputMetadata), outputs: valueInfos(session.outputMetadata) }
}

function valueInfos(meta: readonly OrtValueMetadata[] | undefined): ValueInfo[] {
  return (meta ?? []).map((m) => ({ name: m.name, type: m.isTensor ? (m.type ?? null) : null, shape: [...(m.shape ?? [])] }))
}

function wrap(ort: OrtModule, session: OrtSession, backend: BackendKind, threads: number): BackendSession {
  return {
    backend,
    threads,
    async run(feeds, fetches) {
      const ortFeeds: Record<string, OrtTensor> = {}
      for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = new ort.Tensor(t.type, t.data, t.dims)
      const result = await session.run(ortFeeds, fetches).catch((err: unknown) => {
        throw new InferenceRuntimeError(backend, 'running the graph', err)
      })
      const out: Record<string, RunTensor> = {}
      for (const name of fetches) {
        const t = result[name]
        if (!t) throw new Error(`runtime returned no '${name}'`)
        out[name] = { type: t.type as TensorType, data: t.data as RunTensor['data'], dims: [...t.dims] }
      }
      return out
    },
    release: () => session.release(),
  }
}
