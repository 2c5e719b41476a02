/**
 * Hostile and degenerate inputs to the readers (issue 8): header numbers that would allocate
 * gigabytes, non-regular files that would block open(2), duplicate names that JSON.parse or a
 * map would silently collapse, and tensor counts that expose quadratic work.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { ModelFormatError } from '../../worker/common/errors'
import { openModel } from '../../worker/formats/open-model'
import { onnxFormat } from '../../worker/formats/onnx/reader'
import { tokensOf } from '../../worker/inference/text-source'
import { computeTensorStats } from '../../worker/stats/tensor-stats'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { readRegularTextFile } from '../../worker/io/regular-file'
import { buildGguf } from '../helpers/gguf-writer'
import { DataType, encodeModel } from '../helpers/onnx-builder'
import { writeTinyLlama } from '../helpers/tiny-llama'

const root = resolve(__dirname, '../..')
const F32 = 0

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-harden-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

interface CliResult {
  code: number | null
  signal: string | null
  stdout: string
  stderr: string
  ms: number
}

function cli(args: string[]): Promise<CliResult> {
  const t0 = Date.now()
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', 'worker/cli/main.ts', ...args], { cwd: root, maxBuffer: 1 << 28 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number; signal?: string }) | null
      done({ code: e ? (e.code ?? null) : 0, signal: e?.signal ?? null, stdout, stderr, ms: Date.now() - t0 })
    })
  })
}

/** A safetensors file from a header object (every tensor empty, so no data section). */
async function safetensors(name: string, header: string | Record<string, unknown>): Promise<string> {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header))
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(json.length))
  const path = join(dir, name)
  await writeFile(path, Buffer.concat([len, json]))
  return path
}

const empty = (shape: number[]) => ({ dtype: 'F32', shape, data_offsets: [0, 0] })

async function expectFormatError(promise: Promise<unknown>, ...parts: (string | RegExp)[]): Promise<void> {
  const err = await promise.then(() => null, (e: unknown) => e)
  expect(err).toBeInstanceOf(ModelFormatError)
  for (const p of parts) expect((err as Error).message).toMatch(p)
}

describe('resource bounds from header numbers', () => {
  // Each expectation: the CLI exits 0 or 1 (never 134: V8 out of memory, or a signal), with one
  // clear line on stderr when it fails, and well before the OOM took (~30 s here).
  const assertClean = (r: CliResult) => {
    expect(r.signal).toBeNull()
    expect([0, 1]).toContain(r.code)
    expect(r.ms).toBeLessThan(25_000)
    if (r.code === 1) expect(r.stderr.trim().split('\n')).toHaveLength(1)
  }

  it('safetensors: empty tensors with huge dims cost nothing and have null moments', async () => {
    const path = await safetensors('huge-empty.safetensors', {
      a: empty([536870912, 0]),
      b: empty([2 ** 53 - 1, 0]),
      c: empty([0, 2 ** 53 - 1]),
      d: empty([2 ** 26, 2 ** 26, 0]),
    })
    const r = await cli(['inspect', path, '--stats', '--json'])
    assertClean(r)
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.params).toBe(0)
    expect(report.tensors.map((t: { shape: number[] }) => t.shape)).toEqual([[536870912, 0], [2 ** 53 - 1, 0], [0, 2 ** 53 - 1], [2 ** 26, 2 ** 26, 0]])
    for (const t of report.tensors) {
      expect(t.stats).toEqual({ min: null, max: null, mean: null, std: null, absmax: null, kurtosis: null, nan: 0, inf: 0 })
    }
  })

  it('GGUF: the same empty tensors (ne innermost first)', async () => {
    const path = join(dir, 'huge-empty.gguf')
    await writeFile(path, buildGguf({
      tensors: [
        { name: 'a', ne: [0, 536870912], type: F32, data: new Uint8Array(0) },
        { name: 'b', ne: [0, 2 ** 53 - 1], type: F32, data: new Uint8Array(0) },
        { name: 'c', ne: [2 ** 53 - 1, 0], type: F32, data: new Uint8Array(0) },
      ],
    }))
    const r = await cli(['inspect', path, '--stats', '--json'])
    assertClean(r)
    expect(r.code, r.stderr).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.tensors.map((t: { name: string; shape: number[] }) => [t.name, t.shape])).toEqual([
      ['a', [536870912, 0]],
      ['b', [2 ** 53 - 1, 0]],
      ['c', [0, 2 ** 53 - 1]],
    ])
    for (const t of report.tensors) expect(t.stats.absmax).toBeNull()
  })

  it('dims beyond 2^53, or rows or element counts beyond it, are errors naming file and tensor', async () => {
    const cases: [string, string | Uint8Array, RegExp][] = [
      ['dim.safetensors', `{"w":{"dtype":"F32","shape":[9007199254740992,0],"data_offsets":[0,0]}}`, /tensor 'w': dimension 9007199254740992 of shape/],
      ['rows.safetensors', JSON.stringify({ w: empty([2 ** 40, 2 ** 40, 0]) }), /tensor 'w': shape \[1099511627776, 1099511627776, 0\] has more than 2\^53 rows/],
      ['count.safetensors', JSON.stringify({ w: { dtype: 'F32', shape: [2 ** 30, 2 ** 30], data_offsets: [0, 0] } }), /tensor 'w': shape \[1073741824, 1073741824\] holds more than 2\^53 elements/],
      ['neg.safetensors', JSON.stringify({ w: empty([-1, 0]) }), /tensor 'w': dimension -1 of shape/],
      ['rows.gguf', buildGguf({ tensors: [{ name: 'w', ne: [0, 2 ** 30, 2 ** 30, 2 ** 30], type: F32, data: new Uint8Array(0) }] }), /tensor 'w': shape \[1073741824, 1073741824, 1073741824, 0\] has more than 2\^53 rows/],
    ]
    for (const [name, content, message] of cases) {
      const path = typeof content === 'string' ? await safetensors(name, content) : join(dir, name)
      if (typeof content !== 'string') await writeFile(path, content)
      await expectFormatError(openModel(path), path, message)
    }
    // The same through the CLI, once: exit 1, one line naming the file and the tensor.
    const path = join(dir, 'rows.gguf')
    const r = await cli(['inspect', path, '--stats', '--json'])
    assertClean(r)
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`${path}: tensor 'w': shape`)
    expect(r.stdout).toBe('')
  })

  it('ONNX: dims whose rows overflow 2^53 are refused', async () => {
    const path = join(dir, 'rows.onnx')
    await writeFile(path, encodeModel({ initializers: [{ name: 'w', dataType: DataType.FLOAT, dims: [2 ** 40, 2 ** 40, 0], raw: new Uint8Array(0) }] }))
    await expectFormatError(onnxFormat.open(path), path, /tensor 'w': shape \[1099511627776, 1099511627776, 0\] has more than 2\^53 rows/)
  })
})

describe('counts and lengths in GGUF and ONNX headers are bounded by the file size', () => {
  it('ONNX: a field length of 2^50 bytes in a 12-byte file fails at once, naming the field', async () => {
    // ModelProto field 7 (graph, wire type 2): tag 0x3a, then a varint length of 2^50.
    const bytes = [0x08, 0x08, 0x3a]
    let n = 2n ** 50n
    while (n >= 0x80n) {
      bytes.push(Number(n & 0x7fn) | 0x80)
      n >>= 7n
    }
    bytes.push(Number(n))
    const path = join(dir, 'long-field.onnx')
    await writeFile(path, Uint8Array.from(bytes))
    await expectFormatError(onnxFormat.open(path), `${path}: field 7 in ModelProto at byte 2 needs 1125899906842624 bytes`, /truncated\?/)
  })

  it('GGUF: tensor count 2^40 in a small file fails before allocating, through the CLI', async () => {
    const b = buildGguf({ tensors: [{ name: 'w', ne: [1], type: F32, data: new Uint8Array(4) }] })
    new DataView(b.buffer, b.byteOffset).setBigUint64(8, 2n ** 40n, true)
    const path = join(dir, 'count.gguf')
    await writeFile(path, b)
    const r = await cli(['inspect', path, '--stats', '--json'])
    expect([r.code, r.signal]).toEqual([1, null])
    expect(r.stderr.trim()).toMatch(new RegExp(`^error: ${path}: header declares 1099511627776 tensors .* cannot fit in a file of \\d+ bytes`))
  })
})

describe('only regular files are opened', () => {
  const fifo = (path: string) => execFileSync('mkfifo', [path])
  const FIFO = /not a regular file \(a FIFO\)/

  it('a FIFO as the model file, as config.json, as ONNX external data and as the eval text fails at once', async () => {
    const t0 = Date.now()
    const model = join(dir, 'fifo-model.safetensors')
    fifo(model)
    await expectFormatError(openModel(model), `${model}: `, FIFO)

    const hf = join(dir, 'fifo-config')
    await writeTinyLlama(hf, { layers: 1 })
    await rm(join(hf, 'config.json'))
    fifo(join(hf, 'config.json'))
    await expectFormatError(openModel(hf), `${join(hf, 'config.json')}: `, FIFO)

    const onnxDir = join(dir, 'fifo-onnx')
    await mkdir(onnxDir)
    const onnx = join(onnxDir, 'model.onnx')
    await writeFile(onnx, encodeModel({ initializers: [{ name: 'ext', dataType: DataType.FLOAT, dims: [4], external: { location: 'w.bin' } }] }))
    fifo(join(onnxDir, 'w.bin'))
    await expectFormatError(onnxFormat.open(onnx), `${onnx}: tensor 'ext'`, `(${join(onnxDir, 'w.bin')})`, FIFO)

    const text = join(dir, 'fifo.txt')
    fifo(text)
    const err = await tokensOf({ file: text }, () => Promise.reject(new Error('tokenizer not needed'))).catch((e: Error) => e)
    expect((err as Error).message).toMatch(new RegExp(`cannot read the text file ${text}: not a regular file \\(a FIFO\\)`))
    expect(Date.now() - t0).toBeLessThan(10_000)
  })

  it('many FIFO opens at once do not stall later file reads (libuv has four pool threads)', async () => {
    const paths = Array.from({ length: 8 }, (_, i) => join(dir, `many-fifo-${i}.gguf`))
    for (const p of paths) fifo(p)
    const results = await Promise.allSettled(paths.map((p) => openModel(p)))
    expect(results.every((r) => r.status === 'rejected' && FIFO.test(String(r.reason)))).toBe(true)
    const plain = join(dir, 'plain.txt')
    await writeFile(plain, 'still readable')
    expect(await readRegularTextFile(plain, 1000)).toBe('still readable')
  })

  it('a directory or a FIFO under tokenizer.json is no tokenizer, and a folder is no text', async () => {
    expect(await readRegularTextFile(dir, 10).catch((e: Error) => e.message)).toBe(`${dir}: not a regular file (a directory)`)
    const big = join(dir, 'big.txt')
    await writeFile(big, 'x'.repeat(100))
    expect(await readRegularTextFile(big, 10).catch((e: Error) => e.message)).toBe(`${big}: file is 100 bytes, more than the 10 bytes allowed for it`)
  })

  it('a Hugging Face cache snapshot (every file a symlink to a blob) still opens', async () => {
    const src = join(dir, 'hf-src')
    const ref = await writeTinyLlama(src, { layers: 1, dtype: 'F32' })
    const blobs = join(dir, 'hub', 'blobs')
    const snap = join(dir, 'hub', 'snapshots', 'abc123')
    await mkdir(blobs, { recursive: true })
    await mkdir(snap, { recursive: true })
    for (const name of ['config.json', 'model.safetensors']) {
      await rename(join(src, name), join(blobs, `blob-${name}`))
      await symlink(join('..', '..', 'blobs', `blob-${name}`), join(snap, name))
    }
    const m = await openModel(snap)
    try {
      expect(m.config?.numLayers).toBe(1)
      const name = 'model.layers.0.mlp.down_proj.weight'
      const got = await m.readRows(name, 0, 1)
      const want = ref.get(name)!
      expect(Array.from(got)).toEqual(Array.from(want.subarray(0, got.length), Math.fround))
    } finally {
      await m.close()
    }
  })
})

describe('duplicate names are refused, not collapsed', () => {
  it('safetensors: a tensor named twice in one header (JSON.parse would keep the last)', async () => {
    const entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    const path = await safetensors('dup.safetensors', `{"w":${entry},"w":${entry}}`)
    await writeFile(path, Buffer.concat([await readFile(path), Buffer.alloc(4)]))
    await expectFormatError(openModel(path), `${path}: tensor 'w': tensor appears twice in the header`)
    const nested = await safetensors('dup-field.safetensors', '{"w":{"dtype":"F32","shape":[0],"dtype":"F16","data_offsets":[0,0]}}')
    await expectFormatError(openModel(nested), `${nested}: tensor 'w': key 'dtype' appears twice`)
    const meta = await safetensors('dup-meta.safetensors', '{"__metadata__":{"format":"pt","format":"np"}}')
    await expectFormatError(openModel(meta), `${meta}: key 'format' appears twice in __metadata__`)
    // Escapes are compared decoded: "a\u0062" is "ab".
    const escaped = await safetensors('dup-escaped.safetensors', `{"ab":${entry.replace('[0,4]', '[0,0]').replace('[1]', '[0]')},"a\\u0062":${entry.replace('[0,4]', '[0,0]').replace('[1]', '[0]')}}`)
    await expectFormatError(openModel(escaped), `tensor 'ab': tensor appears twice`)
  })

  it('a sharded index naming a tensor twice, and a tensor in two shards', async () => {
    const shardDir = join(dir, 'shards')
    await mkdir(shardDir)
    const shard = (name: string, tensors: string[]) =>
      safetensors(join('shards', name), Object.fromEntries(tensors.map((t) => [t, empty([0])])))
    await shard('a.safetensors', ['x', 'y'])
    await shard('b.safetensors', ['y'])
    const index = join(shardDir, 'model.safetensors.index.json')
    await writeFile(index, '{"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors","y":"a.safetensors"}}')
    await expectFormatError(openModel(index), `${index}: tensor 'y': weight_map names this tensor twice`)
    // Shard a also holds y, which the index places in b: one of the two copies would be lost.
    await writeFile(index, JSON.stringify({ weight_map: { x: 'a.safetensors', y: 'b.safetensors' } }))
    await expectFormatError(openModel(index), `${join(shardDir, 'a.safetensors')}: tensor 'y': index maps this tensor to 'b.safetensors'`)
  })

  it('ONNX: two initializers with one name', async () => {
    const path = join(dir, 'dup.onnx')
    const w = { name: 'w', dataType: DataType.FLOAT, dims: [1], raw: new Uint8Array(4) }
    await writeFile(path, encodeModel({ initializers: [w, w] }))
    await expectFormatError(onnxFormat.open(path), `${path}: tensor 'w': duplicate initializer name`)
  })
})

describe('cost linear in tensor count', () => {
  const manyEmpty = (name: string, n: number) => {
    const header: Record<string, unknown> = {}
    for (let i = 0; i < n; i++) header[`model.layers.${i % 1000}.mlp.t${i}.weight`] = empty([i % 7, 0])
    return safetensors(name, header)
  }
  let large: Promise<string> | null = null
  const largeFile = () => (large ??= manyEmpty('many-300k.safetensors', 300_000))
  /** CPU time of opening (and closing) a model: less disturbed by other processes than wall time. */
  const openCpuMs = async (path: string, n: number): Promise<number> => {
    const before = process.cpuUsage()
    const m = await openModel(path)
    const used = process.cpuUsage(before)
    expect(m.tensors).toHaveLength(n)
    expect(m.tensors[n - 1]!.name).toBe(`model.layers.${(n - 1) % 1000}.mlp.t${n - 1}.weight`)
    await m.close()
    return (used.user + used.system) / 1000
  }

  it('opening 300,000 empty tensors costs about 3× opening 100,000 (quadratic work would be 9×)', async () => {
    const small = await manyEmpty('many-100k.safetensors', 100_000)
    const path = await largeFile()
    await openCpuMs(small, 100_000) // warm-up: compiled code, not first-call costs, is compared
    const t0 = Date.now()
    const a = await openCpuMs(small, 100_000)
    const b = await openCpuMs(path, 300_000)
    expect(b / a, `100k: ${a} ms, 300k: ${b} ms of CPU`).toBeLessThan(6)
    // A few seconds on an idle machine; generous for a loaded 2-core one.
    expect(Date.now() - t0).toBeLessThan(60_000)
  }, 120_000)

  it('inspect (table and --json) lists 300,000 tensors', async () => {
    const path = await largeFile()
    const table = await cli(['inspect', path])
    expect(table.code, table.stderr).toBe(0)
    expect(table.stdout).toContain('tensors       300000')
    const json = await cli(['inspect', path, '--json'])
    expect(json.code, json.stderr).toBe(0)
    expect(JSON.parse(json.stdout).tensors).toHaveLength(300_000)
    expect(table.ms + json.ms).toBeLessThan(90_000)
  }, 120_000)
})

describe('F64 values are counted in float64; tensors without finite values have null moments', () => {
  // Beyond float32's range (±3.4e38): float32 decoding would make them ±Infinity.
  const wide = [1e300, -1e39, -1e300, 0.5, 3e-320, -7]
  /** Population moments in float64 of values scaled by 1e300 (a different scale than the engine's). */
  function reference(v: number[]) {
    const s = v.map((x) => x / 1e300)
    const mean = s.reduce((a, b) => a + b, 0) / s.length
    const m2 = s.reduce((a, b) => a + (b - mean) ** 2, 0) / s.length
    const m4 = s.reduce((a, b) => a + (b - mean) ** 4, 0) / s.length
    return { mean: mean * 1e300, std: Math.sqrt(m2) * 1e300, kurtosis: m4 / m2 ** 2 }
  }
  const f64 = (v: number[]) => new Uint8Array(Float64Array.from(v).buffer)
  const f32 = (v: number[]) => new Uint8Array(Float32Array.from(v).buffer)

  it('inspect --stats --json: F64 extremes, moments, and null moments for all-NaN / all-Inf / empty', async () => {
    const path = join(dir, 'wide.safetensors')
    const specs = [
      { name: 'wide', dtype: 'F64', shape: [2, 3] },
      { name: 'nan', dtype: 'F32', shape: [2, 3] },
      { name: 'inf', dtype: 'F32', shape: [3] },
      { name: 'empty', dtype: 'F32', shape: [4, 0] },
    ]
    await writeSafetensorsFile(path, specs, (spec) =>
      spec.name === 'wide' ? f64(wide) : spec.name === 'nan' ? f32(Array(6).fill(NaN)) : spec.name === 'inf' ? f32([Infinity, -Infinity, NaN]) : new Uint8Array(0),
    )
    const r = await cli(['inspect', path, '--stats', '--json'])
    expect(r.code, r.stderr).toBe(0)
    const stats = Object.fromEntries(JSON.parse(r.stdout).tensors.map((t: { name: string; stats: unknown }) => [t.name, t.stats]))
    const ref = reference(wide)
    expect(stats.wide).toMatchObject({ min: -1e300, max: 1e300, absmax: 1e300, nan: 0, inf: 0 })
    expect(stats.wide.mean / ref.mean - 1).toBeLessThan(1e-12)
    expect(Math.abs(stats.wide.std / ref.std - 1)).toBeLessThan(1e-12)
    expect(Math.abs(stats.wide.kurtosis / ref.kurtosis - 1)).toBeLessThan(1e-12)
    const none = { min: null, max: null, mean: null, std: null, absmax: null, kurtosis: null }
    expect(stats.nan).toEqual({ ...none, nan: 6, inf: 0 })
    expect(stats.inf).toEqual({ ...none, nan: 1, inf: 2 })
    expect(stats.empty).toEqual({ ...none, nan: 0, inf: 0 })
  })

  it('per-channel absmax, top-k and histogram stay in float64 (ONNX double_data, GGUF F64)', async () => {
    const onnx = join(dir, 'wide.onnx')
    await writeFile(onnx, encodeModel({ initializers: [{ name: 'w', dataType: DataType.DOUBLE, dims: [2, 3], doubleData: wide }] }))
    const gguf = join(dir, 'wide.gguf')
    await writeFile(gguf, buildGguf({ tensors: [{ name: 'w', ne: [3, 2], type: 28 /* F64 */, data: f64(wide) }] }))
    for (const path of [onnx, gguf]) {
      const m = await openModel(path)
      try {
        expect(Array.from(await m.readRows64!('w', 1, 2))).toEqual(wide.slice(3))
        const s = await computeTensorStats(m, 'w', { bins: 4, topK: 2 })
        expect([s.min, s.max, s.inf, s.nan, s.count]).toEqual([-1e300, 1e300, 0, 0, 6])
        expect(s.rowAbsmax).toEqual([1e300, 7])
        expect(s.colAbsmax).toEqual([1e300, 1e39, 1e300])
        expect(s.topK.map((e) => [e.value, e.index])).toEqual([[1e300, 0], [-1e300, 2]])
        // The documented bin rule floor((x − lo)·bins/(hi − lo)) in float64: the four small
        // values land in bin 2, since −1e39 − (−1e300) rounds to 1e300.
        const want = [0, 0, 0, 0]
        for (const x of wide) want[Math.min(3, Math.floor((x + 1e300) * (4 / 2e300)))]!++
        expect(want).toEqual([1, 0, 4, 1])
        expect(s.histogram).toEqual({ lo: -1e300, hi: 1e300, counts: want })
        expect(Math.abs(s.std / reference(wide).std - 1)).toBeLessThan(1e-12)
      } finally {
        await m.close()
      }
    }
  })
})
