import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { computeLayerImportance } from '../../worker/importance/layer-importance'
import { localCosts, localProxyTable } from '../../worker/importance/local-proxy'
import { evaluatePerplexity } from '../../worker/inference/perplexity'
import { openTokenizer, tokensOf } from '../../worker/inference/text-source'
import { allocate, allocationTargets, parseOptionSpecs, type AllocOption, type AllocatorId } from '../../worker/plan/allocate'
import { parseBudget } from '../../worker/plan/budget'
import { DEFAULT_CALIBRATION_TEXT } from '../../worker/plan/calibration'
import { createOverrides } from '../../worker/plan/apply'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, type Plan } from '../../worker/plan/plan'
import type { BenchRow, BenchSection } from '../bench-types'
import { ensureSyntheticModel } from '../synthetic-model'

/**
 * What allocation costs (issue 11's benchmark):
 * - measured per-tensor sensitivity (plan/sensitivity.ts: one full evaluation with one tensor
 *   quantized, against cached base log-probs) on the default model over 2 calibration windows
 *   and on the synthetic 0.5B model over 1 window, a few measurements each; the total for every
 *   tensor × option is a PROJECTION (per-measurement time × count, the one-time base pass
 *   left out), not measured;
 * - the local error proxy (importance/local-proxy.ts) for the whole default model at the same
 *   options, measured end to end from a cold cache (capture pass included): the cheap
 *   alternative the projection is read against;
 * - solve time of the LSAQ, greedy and optimal allocators on the real item set (the default
 *   model's 58 tensors llama.cpp quantizes × Q6_K..Q2_K, GGUF sizes; the 56 decoder linears ×
 *   Q4_K/Q3_K for LSAQ, which allocates per block), costs from the local proxy.
 * Both models are evaluated on the native backend (onnxruntime-node), as the fixtures were.
 */
const OPTIONS = 'ggml:type=Q6_K;ggml:type=Q5_K;ggml:type=Q4_K;ggml:type=Q3_K;ggml:type=Q2_K'
const BACKEND = 'native' as const

async function timed<T>(f: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now()
  const value = await f()
  return { value, ms: performance.now() - t0 }
}

/**
 * ms per sensitivity measurement of `names` at `option`, timed as plan/sensitivity.ts's loop
 * body does it (a one-tensor plan's overrides, one evaluation against the cached base
 * log-probs); the base pass that writes those log-probs once per text is timed apart.
 */
async function sensitivityTiming(model: OpenedModel, ids: number[], names: string[], option: AllocOption & { kind: 'method' }, windows: number, dir: string): Promise<{ perMeasurementMs: number; baseMs: number; klds: number[] }> {
  const kld = { cacheDir: join(dir, 'logprobs') }
  const base = await timed(() => evaluatePerplexity(model, ids, { maxWindows: windows, backend: BACKEND, kld }))
  const runs: { ms: number; kld: number }[] = []
  for (const name of names) {
    const plan: Plan = { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, tensors: { [name]: { method: option.methodId, params: option.params as Record<string, number | boolean | string> } } }
    const r = await timed(async () => {
      const overrides = await createOverrides(model, { plan, source: `bench ${name}` })
      return evaluatePerplexity(model, ids, { maxWindows: windows, backend: BACKEND, overrides, kld })
    })
    runs.push({ ms: r.ms, kld: r.value.kld!.mean })
  }
  return { perMeasurementMs: runs.reduce((a, r) => a + r.ms, 0) / runs.length, baseMs: base.ms, klds: runs.map((r) => r.kld) }
}

export const section: BenchSection = {
  name: 'allocation',
  description: 'per-tensor sensitivity (measured, projected to all tensors × options) vs the local error proxy; allocator solve times',
  async run(ctx) {
    const rows: BenchRow[] = []
    const dir = await mkdtemp(join(tmpdir(), 'qs-bench-alloc-'))
    const options = parseOptionSpecs(OPTIONS)
    const model = await openModel('resources/models/default')
    try {
      const ids = await tokensOf({ file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model))
      const targets = allocationTargets(model, true)
      const count = targets.length * options.length

      // The cheap alternative first: the whole table from a cold cache.
      ctx.log(`local proxy: ${targets.length} tensors × ${options.length} options, 4 calibration windows`)
      const local = await timed(() => localProxyTable(model, targets, options, { cacheDir: null, calibration: { maxWindows: 4, backend: BACKEND, cacheDir: null } }))
      const localRef = { name: `local proxy, whole table (${count} figures, 4 calib windows, capture included)`, value: local.ms / 1000, unit: 's' }

      const names = ['model.layers.3.mlp.down_proj.weight', 'lm_head.weight'].slice(0, ctx.quick ? 1 : 2)
      ctx.log(`sensitivity: ${names.length} tensors at Q4_K, 2 windows`)
      const s = await sensitivityTiming(model, ids, names, options[2] as AllocOption & { kind: 'method' }, 2, dir)
      rows.push(
        { name: 'default model: one per-tensor ΔKLD measurement (2 windows × 256)', value: s.perMeasurementMs, unit: 'ms', reference: { name: 'base evaluation, same windows', value: s.baseMs, unit: 'ms' }, note: `mean of ${names.length}` },
        { name: `default model: all ${count} tensor × option measurements (PROJECTION)`, value: (s.perMeasurementMs * count) / 1000, unit: 's', reference: localRef },
      )

      // Solve times on the real item set, costs from the local proxy.
      const costs = localCosts(local.value)
      for (const allocator of ['lsaq', 'greedy', 'optimal'] as AllocatorId[]) {
        const lsaq = allocator === 'lsaq'
        const importance = lsaq ? (await computeLayerImportance(model, ids, { lsaq: { k: 10 }, maxWindows: 2, backend: BACKEND })).lsaq : undefined
        const opts = lsaq ? parseOptionSpecs('ggml:type=Q4_K;ggml:type=Q3_K') : options
        const req = { model, allocator, budget: parseBudget('4bpw'), options: opts, memory: { format: 'gguf' as const, kv: null }, allTensors: !lsaq, importance, costs }
        allocate(req) // warm-up (JIT)
        const reps = 5
        const t0 = performance.now()
        for (let i = 0; i < reps; i++) allocate(req)
        const ms = (performance.now() - t0) / reps
        const items = lsaq ? allocationTargets(model, false).length : targets.length
        rows.push({ name: `solve ${allocator} at 4 bpw (${items} tensors × ${opts.length} options, gguf sizes)`, value: ms, unit: 'ms', reference: { name: 'one ΔKLD measurement (default model)', value: s.perMeasurementMs, unit: 'ms' }, note: `mean of ${reps}` })
      }
    } finally {
      await model.close()
    }

    // The synthetic 0.5B model: one window, ONE tensor, one option.
    const synth = await ensureSyntheticModel(ctx.quick, ctx.log)
    const big = await openModel(synth.dir)
    try {
      const ids = await tokensOf({ file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(big))
      const targets = allocationTargets(big, true)
      const count = targets.length * options.length
      const name = targets.find((t) => /layers\.0\.mlp\.down_proj/.test(t.name))!.name
      ctx.log(`synthetic model: ΔKLD of ${name} at Q4_K, 1 window`)
      const s = await sensitivityTiming(big, ids, [name], options[2] as AllocOption & { kind: 'method' }, 1, dir)
      rows.push(
        { name: `synthetic ${ctx.quick ? 'quick' : '0.5B'}: one per-tensor ΔKLD measurement (1 window × 256)`, value: s.perMeasurementMs / 1000, unit: 's', reference: { name: 'base evaluation, same window', value: s.baseMs / 1000, unit: 's' } },
        { name: `synthetic ${ctx.quick ? 'quick' : '0.5B'}: all ${count} tensor × option measurements (PROJECTION)`, value: (s.perMeasurementMs * count) / 3.6e6, unit: 'h', reference: { name: 'one measurement', value: s.perMeasurementMs / 3.6e6, unit: 'h' } },
      )
    } finally {
      await big.close()
      await rm(dir, { recursive: true, force: true })
    }
    return rows
  },
}
