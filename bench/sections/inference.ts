import { stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { classifyTensor } from '../../worker/model/logical-model'
import { resolveDecoder, type DecoderSpec } from '../../worker/inference/decoder-spec'
import { GraphBuilder } from '../../worker/formats/onnx/graph-builder'
import { createBackendSession, nativeBackendAvailable, WASM_WEIGHT_LIMIT_BYTES, type BackendKind } from '../../worker/inference/ort-backend'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { windowsPerRun } from '../../worker/inference/session'
import type { BenchRow, BenchSection } from '../bench-types'
import { ensureSyntheticModel } from '../synthetic-model'

/**
 * Perplexity-evaluation throughput (tokens/s, windows of 256 tokens from an empty cache) on
 * the default model and the synthetic 0.5B model, onnxruntime-web (WASM) vs onnxruntime-node
 * (native) on the same graph, each next to its own fp32 GEMM ceiling: the tokens/s the
 * model's FLOPs would allow if every FLOP ran at the speed that backend reaches on
 * a plain fp32 GEMM ([256, 1024] × [1024, 1024], constant weights, measured in this run).
 * Throughput is the steady state, after one warm-up window. Target: WASM within 1.5× of its
 * ceiling.
 */
const CTX = 256

export const section: BenchSection = {
  name: 'inference',
  description: 'perplexity eval tokens/s, onnxruntime-web vs -node, vs each backend\'s fp32 GEMM ceiling',
  async run(ctx) {
    const rows: BenchRow[] = []
    const native = await nativeBackendAvailable()
    const backends: BackendKind[] = native.available ? ['wasm', 'native'] : ['wasm']
    if (!native.available) ctx.log(`native backend unavailable: ${native.reason}`)

    // 1. The default model.
    const defaultDir = resolve('resources/models/default')
    if (await stat(join(defaultDir, 'config.json')).then(() => true, () => false)) {
      const model = await openModel(defaultDir)
      try {
        rows.push(...(await benchModel(ctx, 'default model', model, backends, ctx.quick ? 3 : 8)))
      } finally {
        await model.close()
      }
    } else ctx.log('resources/models/default is missing: skipped')

    // 2. The synthetic 0.5B model (Qwen2-0.5B geometry; --quick: 6 layers, vocab 32000).
    const synth = await ensureSyntheticModel(ctx.quick, ctx.log)
    const model = await openModel(synth.dir)
    try {
      const label = ctx.quick ? 'synthetic 0.5B geometry, 6 layers (--quick)' : 'synthetic 0.5B'
      rows.push(...(await benchModel(ctx, label, model, backends, ctx.quick ? 1 : 2)))
    } finally {
      await model.close()
    }
    return rows
  },
}

async function benchModel(ctx: { log(m: string): void; quick: boolean }, label: string, full: OpenedModel, backends: BackendKind[], windows: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  for (const backend of backends) {
    let model = full
    let spec = resolveDecoder(model)
    let note: string | undefined
    let layers = spec.config.numLayers
    if (backend === 'wasm' && fp32WeightBytes(spec) > WASM_WEIGHT_LIMIT_BYTES) layers = layersThatFit(spec)
    // The machine is shared: the ceiling is measured right before and right after the model,
    // and the faster of the two is used, so a busy moment cannot flatter the ratio.
    const gemmBefore = await plainGemm(backend, ctx.quick ? 3 : 5)
    let res: Awaited<ReturnType<typeof evaluatePerplexity>> | null = null
    let warm = 0
    let warmWindows = 0
    for (;;) {
      if (layers < spec.config.numLayers) {
        // The whole model does not fit the wasm32 heap in fp32: measure as many layers as fit.
        model = withLayers(full, layers)
        note = `${layers} of ${full.config!.numLayers} layers: ${(fp32WeightBytes(resolveDecoder(full)) / 2 ** 30).toFixed(2)} GiB of fp32 weights do not fit the wasm32 heap`
      }
      spec = resolveDecoder(model)
      const perRun = windowsPerRun(CTX, spec.vocab)
      const ids = Array.from({ length: (windows + perRun) * CTX }, (_, i) => (i * 7919 + 13) % spec.vocab)
      ctx.log(`${label}, ${backend}${layers < full.config!.numLayers ? ` (${layers} layers)` : ''}: ${perRun} warm-up + ${windows} window(s) of ${CTX}, ${perRun} per run …`)
      try {
        // Steady state: time from the end of the first (warm-up) run to the end of the last.
        res = await evaluatePerplexity(model, ids, { ctx: CTX, backend, maxWindows: windows + perRun }, {
          onProgress: (p) => {
            if (p.stage === 'evaluating' && warm === 0) {
              warm = performance.now()
              warmWindows = p.done
            }
          },
        })
        break
      } catch (err) {
        if (backend !== 'wasm' || layers <= 1) throw err
        ctx.log(`  failed (${(err as Error).message.slice(0, 160)}); retrying with fewer layers`)
        layers = Math.max(1, Math.floor(layers * 0.75))
      }
    }
    const tps = ((res!.windows - warmWindows) * CTX) / ((performance.now() - warm) / 1000)
    const gemm = Math.max(gemmBefore, await plainGemm(backend, ctx.quick ? 3 : 5))
    const fpt = flopsPerToken(spec)
    const ceiling = (gemm * 1e9) / fpt
    const row: BenchRow = {
      name: `${label}: ppl eval, ${backend}`,
      value: tps,
      unit: 'tokens/s',
      reference: { name: `GEMM ceiling: ${gemm.toFixed(1)} GFLOP/s ÷ ${(fpt / 1e6).toFixed(1)} MFLOP/token`, value: ceiling, unit: 'tokens/s' },
      note: note ?? `${res!.windows - warmWindows} windows, ${windowsPerRun(CTX, spec.vocab)} per run`,
    }
    if (backend === 'wasm') Object.assign(row, { target: '>= ceiling / 1.5', ok: tps >= ceiling / 1.5 })
    rows.push(row)
  }
  return rows
}

const GEMM_SIZE = 1024
const GEMM_CHAIN = 8

/**
 * The plain fp32 GEMM ceiling of a backend, GFLOP/s: a chain of 8 Gemms [256, 1024] × [1024,
 * 1024]ᵀ (constant weights, as the model's linears) in one run, so copying inputs and outputs
 * across the runtime boundary does not count. Median of `reps` runs after a warm-up.
 */
async function plainGemm(backend: BackendKind, reps: number): Promise<number> {
  const g = new GraphBuilder('gemm-chain')
  let x = g.input('x', 'float32', [CTX, GEMM_SIZE])
  for (let i = 0; i < GEMM_CHAIN; i++) {
    const w = g.weight(`w${i}`, [GEMM_SIZE, GEMM_SIZE], new Float32Array(GEMM_SIZE * GEMM_SIZE).map((_, j) => ((j * 37 + i) % 101) / 101 / GEMM_SIZE))
    x = g.op('Gemm', [x, w], { transB: { int: 1 } })
  }
  g.output('y', x, 'float32', [CTX, GEMM_SIZE])
  const session = await createBackendSession(backend, g)
  const feed = { x: { type: 'float32' as const, data: new Float32Array(CTX * GEMM_SIZE).fill(0.5), dims: [CTX, GEMM_SIZE] } }
  await session.run(feed, ['y'])
  const times: number[] = []
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now()
    await session.run(feed, ['y'])
    times.push((performance.now() - t0) / 1000)
  }
  await session.release()
  times.sort((a, b) => a - b)
  return (2 * CTX * GEMM_SIZE * GEMM_SIZE * GEMM_CHAIN) / times[Math.floor(times.length / 2)]! / 1e9
}

/** fp32 bytes the graph hands the runtime (lm_head shares the embedding when tied). */
function fp32WeightBytes(spec: DecoderSpec): number {
  const c = spec.config
  const perLayer = (c.numHeads + 2 * c.numKvHeads) * c.headDim * c.hiddenSize + c.hiddenSize * c.numHeads * c.headDim + 3 * c.hiddenSize * c.intermediateSize
  return 4 * (spec.vocab * c.hiddenSize * (spec.tied ? 1 : 2) + c.numLayers * perLayer)
}

function layersThatFit(spec: DecoderSpec): number {
  let layers = spec.config.numLayers
  while (layers > 1 && fp32WeightBytes({ ...spec, config: { ...spec.config, numLayers: layers } }) > WASM_WEIGHT_LIMIT_BYTES * 0.9) layers--
  return layers
}

/** The model's first `layers` blocks (config and tensor list cut; reads go to the same files). */
function withLayers(model: OpenedModel, layers: number): OpenedModel {
  return {
    ...model,
    config: { ...model.config!, numLayers: layers },
    tensors: model.tensors.filter((t) => {
      const l = classifyTensor(t.name).layer
      return l === null || l < layers
    }),
  }
}

/** FLOPs per token of a window of CTX tokens: every linear incl. lm_head, and attention (full T×T as computed). */
function flopsPerToken(spec: DecoderSpec): number {
  const c = spec.config
  let linear = 0
  for (const [k, n, count] of linearShapes(spec)) linear += 2 * k * n * count
  const attention = 4 * CTX * c.headDim * c.numHeads * c.numLayers
  return linear + attention
}

/** [in, out, count] of the graph's Gemms. */
function linearShapes(spec: DecoderSpec): [number, number, number][] {
  const c = spec.config
  const L = c.numLayers
  return [
    [c.hiddenSize, (c.numHeads + 2 * c.numKvHeads) * c.headDim, L],
    [c.numHeads * c.headDim, c.hiddenSize, L],
    [c.hiddenSize, 2 * c.intermediateSize, L],
    [c.intermediateSize, c.hiddenSize, L],
    [c.hiddenSize, spec.vocab, 1],
  ]
}
