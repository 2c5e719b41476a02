import { execFile } from 'node:child_process'
import { accessSync, constants, existsSync, readdirSync } from 'node:fs'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { EXPORT_FORMATS } from '../../worker/export/registry'
import type { ExportFloatType, ExportFormatId } from '../../worker/export/contract'
import type { BenchReference, BenchRow, BenchSection } from '../bench-types'
import type { ExportProbeRequest, ExportProbeResult } from '../export-probe'
import { ensureSyntheticModel } from '../synthetic-model'

const run = promisify(execFile)
const probe = fileURLToPath(new URL('../export-probe.ts', import.meta.url))
const root = fileURLToPath(new URL('../../', import.meta.url))
const GB = 1e9
const MB = 2 ** 20

/** What each format exports in the bench; a format registered later without a case here gets DEFAULT_CASE. */
const CASES: Partial<Record<ExportFormatId, { spec: string; dtype?: ExportFloatType; label: string }>> = {
  gguf: { spec: 'ggml:type=Q4_0', label: 'Q4_0, embeddings F16' },
  safetensors: { spec: 'rtn:bits=4,group=128,sym=false', dtype: 'fp16', label: 'fp16 of RTN 4-bit' },
  'compressed-tensors': { spec: 'rtn:bits=4,group=128,sym=true', label: 'RTN 4-bit sym' },
  onnx: { spec: 'rtn:bits=4,group=32,sym=true', label: 'RTN 4-bit g32' },
}
const DEFAULT_CASE: { spec: string; dtype?: ExportFloatType; label: string } = { spec: 'rtn:bits=4,group=32,sym=true', label: 'RTN 4-bit g32 (default case)' }

/** shared/toolchain.md's figure for llama-quantize on these machines, used when no binary is found. */
const DOCUMENTED_LLAMA_QUANTIZE_GBPS = 0.4

/**
 * Exports of the synthetic 0.5B model (Qwen2.5-0.5B shapes, fp16) to every registered format,
 * each in a fresh child process: GB/s of source weight bytes (wall and CPU time) against a
 * memory copy, and the child's peak RSS against the model's and one layer's bytes — exports
 * stream tensor by tensor, so the peak should follow the largest tensor, not the model. GGUF
 * Q4_0 is anchored on llama.cpp's own llama-quantize doing the same job from an F16 GGUF,
 * when a binary is found (LLAMA_QUANTIZE, PATH, node-llama-cpp's bins, a local llama.cpp build).
 */
export const section: BenchSection = {
  name: 'export',
  description: 'export of the synthetic 0.5B model to each format in a child process: GB/s of source bytes, peak RSS vs model and layer bytes; llama-quantize Q4_0 as the GGUF anchor',
  async run(ctx) {
    const synth = await ensureSyntheticModel(ctx.quick, ctx.log)
    const sizes = weightSizes(synth.tensors)
    ctx.log(`model ${mb(synth.weightBytes)} MB fp16; largest layer ${mb(sizes.largestLayer)} MB; largest tensor ${mb(sizes.largestTensor.bytes)} MB (${sizes.largestTensor.name})`)
    ctx.log('memory copy …')
    const copy: BenchReference = { name: 'memory copy (Buffer.copy)', value: memoryCopyGBps(Math.min(synth.weightBytes, 1 << 30)), unit: 'GB/s' }
    const modelRef: BenchReference = { name: 'model weights', value: synth.weightBytes / MB, unit: 'MB' }
    const memoryNote = (r: ExportProbeResult) =>
      `${r.baselineRssMB.toFixed(0)} MB after open + ${(r.peakRssMB - r.baselineRssMB).toFixed(0)} MB growth; ` +
      `one layer ${mb(sizes.largestLayer)} MB, largest tensor ${mb(sizes.largestTensor.bytes)} MB (${mb(2 * sizes.largestTensor.bytes)} MB as f32)`

    const dir = await mkdtemp(join(tmpdir(), 'qs-bench-export-'))
    const rows: BenchRow[] = []
    try {
      const quantize = findLlamaQuantize()
      let anchor: BenchReference = {
        name: `llama-quantize Q4_0, shared/toolchain.md (NOT measured in this run: no binary)`,
        value: DOCUMENTED_LLAMA_QUANTIZE_GBPS,
        unit: 'GB/s',
      }
      if (quantize) {
        // llama-quantize starts from an F16 GGUF: our export of the model with every tensor kept
        // (itself a figure: the export's path without quantization).
        const f16 = join(dir, 'f16.gguf')
        ctx.log('gguf, every tensor kept F16 (llama-quantize’s input) …')
        const r = await exportInChild({ model: synth.dir, format: 'gguf', spec: null, out: f16, dtype: 'fp16' })
        rows.push(throughputRow('gguf F16, nothing quantized', synth.weightBytes, r, copy))
        rows.push({ name: '  peak RSS', value: r.peakRssMB, unit: 'MB', reference: modelRef, note: memoryNote(r) })
        if (r.layersPeakRssMB !== null) rows.push(layersRow(r, sizes.largestLayer, synth.tensors))
        ctx.log(`llama-quantize ${quantize} …`)
        const q = await runLlamaQuantize(quantize, f16, join(dir, 'llama-quantize-q4_0.gguf'))
        const inBytes = (await stat(f16)).size
        const outBytes = (await stat(join(dir, 'llama-quantize-q4_0.gguf'))).size
        anchor = { name: `llama-quantize Q4_0 (${cpus().length} threads)`, value: inBytes / GB / q.seconds, unit: 'GB/s' }
        rows.push({
          name: `llama-quantize F16 GGUF → Q4_0, ${cpus().length} threads`,
          value: anchor.value,
          unit: 'GB/s',
          reference: copy,
          note: `--pure --token-embedding-type f16; ${q.seconds.toFixed(1)} s wall${q.cpuSeconds === null ? '' : `, ${q.cpuSeconds.toFixed(1)} s CPU`} for ${mb(inBytes)} MB, ${mb(outBytes)} MB written; ${quantize}`,
        })
        if (q.peakRssMB !== null) rows.push({ name: '  peak RSS', value: q.peakRssMB, unit: 'MB', reference: modelRef })
        await rm(f16, { force: true })
        await rm(join(dir, 'llama-quantize-q4_0.gguf'), { force: true })
      }

      for (const [id, format] of EXPORT_FORMATS) {
        const c = CASES[id] ?? DEFAULT_CASE
        const out = join(dir, format.output === 'file' ? `${id}.${id}` : id)
        ctx.log(`${id} (${c.label}) …`)
        const r = await exportInChild({ model: synth.dir, format: id, spec: c.spec, out, ...(c.dtype ? { dtype: c.dtype } : {}) })
        rows.push(throughputRow(`${id} ${c.label}`, synth.weightBytes, r, id === 'gguf' ? anchor : copy, c.spec))
        rows.push({ name: '  peak RSS', value: r.peakRssMB, unit: 'MB', reference: modelRef, note: memoryNote(r) })
        if (r.layersPeakRssMB !== null) rows.push(layersRow(r, sizes.largestLayer, synth.tensors))
        await rm(out, { recursive: true, force: true })
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
    return rows
  },
}

function throughputRow(name: string, sourceBytes: number, r: ExportProbeResult, reference: BenchReference, spec?: string): BenchRow {
  return {
    name,
    value: sourceBytes / GB / r.seconds,
    unit: 'GB/s',
    reference,
    note: `${spec ? `${spec}, 1 thread; ` : ''}${r.seconds.toFixed(1)} s wall, ${r.cpuSeconds.toFixed(1)} s CPU, ${mb(r.bytes)} MB written${r.fallbacks ? `, ${r.fallbacks} fallbacks` : ''}`,
  }
}

/** RSS growth while the decoder layers stream (layers 1 … L-2), against one layer's stored bytes: the claim checked. */
function layersRow(r: ExportProbeResult, layerBytes: number, tensors: { name: string }[]): BenchRow {
  const layers = new Set(tensors.map((t) => /\.layers\.(\d+)\./.exec(t.name)?.[1]).filter(Boolean)).size
  return {
    name: `  RSS growth while writing layers 1–${layers - 2}`,
    value: r.layersPeakRssMB! - r.baselineRssMB,
    unit: 'MB',
    reference: { name: 'one layer (fp16)', value: layerBytes / MB, unit: 'MB' },
    note: `peak ${r.layersPeakRssMB!.toFixed(0)} MB then (sampled every 20 ms)`,
  }
}

/** One export in a fresh process (same loader flags as this one); its failure fails the bench with the child's message. */
async function exportInChild(req: ExportProbeRequest): Promise<ExportProbeResult> {
  try {
    const { stdout } = await run(process.execPath, [...process.execArgv, probe, JSON.stringify(req)], { cwd: root, maxBuffer: 16 << 20 })
    return JSON.parse(stdout.trim().split('\n').at(-1)!) as ExportProbeResult
  } catch (err) {
    const e = err as { code?: number; stderr?: string; message: string }
    throw new Error(`export bench: ${req.format} export (${req.spec ?? 'keep all'}) failed (exit ${e.code ?? '?'}): ${(e.stderr ?? e.message).trim().split('\n').slice(-3).join(' | ')}`)
  }
}

// ---- llama.cpp ------------------------------------------------------------------------------------

/** The first executable llama-quantize: $LLAMA_QUANTIZE, PATH, node-llama-cpp's bins, a llama.cpp build in the temp folder. */
function findLlamaQuantize(): string | null {
  const candidates: string[] = []
  if (process.env.LLAMA_QUANTIZE) candidates.push(process.env.LLAMA_QUANTIZE)
  for (const d of (process.env.PATH ?? '').split(delimiter)) if (d) candidates.push(join(d, 'llama-quantize'))
  // node-llama-cpp 3.21.1 ships only the llama library and its addon, but a later release might add the tool.
  const nlc = join(root, 'node_modules', '@node-llama-cpp')
  if (existsSync(nlc)) {
    for (const pkg of readdirSync(nlc)) {
      const bins = join(nlc, pkg, 'bins')
      if (existsSync(bins)) for (const b of readdirSync(bins)) candidates.push(join(bins, b, 'llama-quantize'))
    }
  }
  // Where shared/toolchain.md's build recipe leaves it when run in the temp folder.
  candidates.push(join(tmpdir(), 'llama.cpp', 'build', 'bin', 'llama-quantize'))
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK)
      return c
    } catch {
      // not there or not executable
    }
  }
  return null
}

/**
 * llama-quantize F16 → Q4_0 with the same tensor choices as our `ggml:type=Q4_0` export: every
 * matrix Q4_0 (--pure: no k-quant mix), token embeddings kept F16. Timed from outside; peak RSS
 * and CPU time from /usr/bin/time -v when present.
 */
async function runLlamaQuantize(bin: string, input: string, output: string): Promise<{ seconds: number; cpuSeconds: number | null; peakRssMB: number | null }> {
  const args = ['--pure', '--token-embedding-type', 'f16', input, output, 'Q4_0']
  const time = existsSync('/usr/bin/time') ? '/usr/bin/time' : null
  const t0 = performance.now()
  let stderr: string
  try {
    ;({ stderr } = time ? await run(time, ['-v', bin, ...args], { maxBuffer: 64 << 20 }) : await run(bin, args, { maxBuffer: 64 << 20 }))
  } catch (err) {
    const e = err as { code?: number; stderr?: string; message: string }
    throw new Error(`export bench: llama-quantize failed (exit ${e.code ?? '?'}): ${(e.stderr ?? e.message).trim().split('\n').slice(-3).join(' | ')}`)
  }
  const seconds = (performance.now() - t0) / 1000
  const field = (name: string) => {
    const m = new RegExp(`${name}: ([\\d.]+)`).exec(stderr)
    return m ? Number(m[1]) : null
  }
  const user = field('User time \\(seconds\\)')
  const sys = field('System time \\(seconds\\)')
  const rssKb = field('Maximum resident set size \\(kbytes\\)')
  return { seconds, cpuSeconds: user === null || sys === null ? null : user + sys, peakRssMB: rssKb === null ? null : rssKb / 1024 }
}

// ---- sizes and references -----------------------------------------------------------------------

function weightSizes(tensors: { name: string; shape: number[] }[]): { largestLayer: number; largestTensor: { name: string; bytes: number } } {
  const layers = new Map<number, number>()
  let largestTensor = { name: '', bytes: 0 }
  for (const t of tensors) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * 2
    const layer = /\.layers\.(\d+)\./.exec(t.name)
    if (layer) layers.set(Number(layer[1]), (layers.get(Number(layer[1])) ?? 0) + bytes)
    if (bytes > largestTensor.bytes) largestTensor = { name: t.name, bytes }
  }
  return { largestLayer: Math.max(...layers.values()), largestTensor }
}

const mb = (bytes: number): string => (bytes / MB).toFixed(1)

/** Copies `total` bytes through two 256 MB buffers (larger than any cache); best of 3. */
function memoryCopyGBps(total: number): number {
  const size = Math.min(total, 256 << 20)
  const src = Buffer.alloc(size, 1)
  const dst = Buffer.alloc(size)
  let best = Infinity
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now()
    for (let done = 0; done < total; done += size) src.copy(dst, 0, 0, Math.min(size, total - done))
    best = Math.min(best, performance.now() - t0)
  }
  return total / GB / (best / 1000)
}
