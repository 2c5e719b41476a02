import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, open, rm, readFile, writeFile, truncate, readdir, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import { readSafetensorsHeader } from '../../worker/formats/safetensors/reader'
import { writeSafetensorsFile } from '../../worker/formats/safetensors/writer'
import { encode, gaussian, writeTinyLlama } from '../helpers/tiny-llama'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-st-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** Hand-assembles a safetensors file from a header object and a data section. */
async function rawFile(name: string, header: unknown, data: Uint8Array, lengthOverride?: bigint): Promise<string> {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header))
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length))
  const path = join(dir, name)
  await writeFile(path, Buffer.concat([len, json, data]))
  return path
}

describe('safetensors reader', () => {
  it('reads every dtype and decodes rows lazily', async () => {
    const values = Float64Array.from([0.5, -1.25, 3, 65504, -0.0001, 7])
    const path = join(dir, 'all.safetensors')
    const specs = [
      { name: 'f32', dtype: 'F32', shape: [2, 3] },
      { name: 'f16', dtype: 'F16', shape: [3, 2] },
      { name: 'bf16', dtype: 'BF16', shape: [6] },
      { name: 'f64', dtype: 'F64', shape: [1, 6] },
      { name: 'i64', dtype: 'I64', shape: [2] },
      { name: 'u8', dtype: 'U8', shape: [3] },
      { name: 'e4m3', dtype: 'F8_E4M3', shape: [2] },
      { name: 'scalar', dtype: 'F32', shape: [] },
    ]
    await writeSafetensorsFile(path, specs, (s) => {
      if (s.name === 'i64') return new Uint8Array(BigInt64Array.of(-3n, 1n << 40n).buffer)
      if (s.name === 'u8') return Uint8Array.of(0, 128, 255)
      if (s.name === 'e4m3') return Uint8Array.of(0x38, 0x7e) // 1, 448
      if (s.name === 'scalar') return encode('F32', [42])
      return encode(s.dtype, values)
    }, { format: 'pt' })
    const m = await openModel(path)
    try {
      expect(m.format).toBe('safetensors')
      expect(m.metadata.format).toBe('pt')
      expect(m.tensors.map((t) => t.name)).toEqual(specs.map((s) => s.name))
      expect(Array.from(await m.readRows('f32', 1, 2))).toEqual([65504, Math.fround(-0.0001), 7])
      const f16 = await m.readRows('f16', 0, 3)
      expect(f16[3]).toBe(65504)
      expect(f16[4]).toBeCloseTo(-0.0001, 6)
      expect((await m.readRows('bf16', 0, 1))[1]).toBe(-1.25)
      expect(Array.from(await m.readRows('f64', 0, 1))).toEqual(Array.from(values, (v) => Math.fround(v)))
      expect(Array.from(await m.readRows('i64', 0, 1))).toEqual([-3, 2 ** 40])
      expect(Array.from(await m.readRows('u8', 0, 1))).toEqual([0, 128, 255])
      expect(Array.from(await m.readRows('e4m3', 0, 1))).toEqual([1, 448])
      expect(Array.from(await m.readRows('scalar', 0, 1))).toEqual([42])
      await expect(m.readRows('f32', 1, 3)).rejects.toThrow(/tensor 'f32': row range \[1, 3\) outside \[0, 2\)/)
      await expect(m.readRows('nope', 0, 1)).rejects.toThrow(/tensor 'nope': no such tensor/)
      expect((await m.readRaw('u8')).length).toBe(3)
    } finally {
      await m.close()
    }
  })

  it('the data section starts 8-byte aligned and absolute offsets are right', async () => {
    const path = join(dir, 'align.safetensors')
    await writeSafetensorsFile(path, [{ name: 'a', dtype: 'F32', shape: [3] }], () => encode('F32', [1, 2, 3]))
    const h = await readSafetensorsHeader(path)
    expect(h.dataStart % 8).toBe(0)
    const bytes = await readFile(path)
    expect(new Float32Array(bytes.buffer.slice(h.tensors[0]!.byteOffset, h.tensors[0]!.byteOffset + 12))).toEqual(Float32Array.of(1, 2, 3))
  })

  it('opens an HF folder with config.json and a sharded index', async () => {
    const folder = join(dir, 'sharded')
    const single = join(dir, 'single')
    const ref = await writeTinyLlama(single, { dtype: 'BF16', layers: 3 })
    await mkdir(folder)
    // Split the single file's tensors over 3 shards + index, as save_pretrained does.
    const m1 = await openModel(single)
    const names = m1.tensors.map((t) => t.name)
    const weightMap: Record<string, string> = {}
    for (let s = 0; s < 3; s++) {
      const part = names.filter((_, i) => i % 3 === s)
      const file = `model-0000${s + 1}-of-00003.safetensors`
      part.forEach((n) => (weightMap[n] = file))
      await writeSafetensorsFile(join(folder, file), part.map((n) => m1.tensors.find((t) => t.name === n)!), (spec) => m1.readRaw(spec.name))
    }
    await m1.close()
    await writeFile(join(folder, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 1 }, weight_map: weightMap }))
    await writeFile(join(folder, 'config.json'), await readFile(join(single, 'config.json')))
    const m = await openModel(folder)
    try {
      expect(m.architecture).toBe('llama')
      expect(m.config?.numLayers).toBe(3)
      expect(m.files.filter((f) => f.endsWith('.safetensors'))).toHaveLength(3)
      const name = 'model.layers.2.mlp.down_proj.weight'
      const got = await m.readRows(name, 5, 7)
      const want = ref.get(name)!.subarray(5 * 64, 7 * 64)
      expect(Array.from(got)).toEqual(Array.from(want, (v) => Math.fround(v)))
    } finally {
      await m.close()
    }
    // Opening the index directly gives the same model.
    const viaIndex = await openModel(join(folder, 'model.safetensors.index.json'))
    expect(viaIndex.tensors).toHaveLength(names.length)
    await viaIndex.close()
  })

  it('rejects an index whose shard lacks a tensor', async () => {
    const folder = join(dir, 'badindex')
    await mkdir(folder)
    await writeSafetensorsFile(join(folder, 'a.safetensors'), [{ name: 'x', dtype: 'F32', shape: [1] }], () => encode('F32', [1]))
    await writeFile(join(folder, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { x: 'a.safetensors', y: 'a.safetensors' } }))
    await expect(openModel(folder)).rejects.toThrow(/tensor 'y': index names this tensor but shard 'a.safetensors' lacks it/)
  })

  describe('malformed files give precise errors', () => {
    const data = new Uint8Array(16)
    const ok = { t: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } }
    it('truncated data section', async () => {
      const p = await rawFile('trunc.safetensors', ok, data)
      await truncate(p, (await readFile(p)).length - 4)
      await expect(openModel(p)).rejects.toThrow(/trunc\.safetensors: tensor 't': data_offsets \[0, 16\] run past the data section of 12 bytes/)
    })
    it('header length beyond the file', async () => {
      const p = await rawFile('hlen.safetensors', ok, data, 10_000n)
      await expect(openModel(p)).rejects.toThrow(/hlen\.safetensors: header length 10000 runs past the end/)
    })
    it('absurd header length', async () => {
      const p = await rawFile('huge.safetensors', ok, data, 1n << 60n)
      await expect(openModel(p)).rejects.toThrow(/huge\.safetensors: header length \d+ exceeds/)
    })
    it('file shorter than 8 bytes', async () => {
      const p = join(dir, 'tiny.safetensors')
      await writeFile(p, Uint8Array.of(1, 2, 3))
      await expect(openModel(p)).rejects.toThrow(/tiny\.safetensors: file is 3 bytes/)
    })
    it('invalid JSON', async () => {
      const p = await rawFile('json.safetensors', '{"t": {', data)
      await expect(openModel(p)).rejects.toThrow(/json\.safetensors: header is not valid JSON/)
    })
    it('overlapping tensors', async () => {
      const p = await rawFile('overlap.safetensors', {
        a: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
        b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
      }, data)
      await expect(openModel(p)).rejects.toThrow(/overlap\.safetensors: tensor 'b': data_offsets overlap tensor 'a'/)
    })
    it('unknown dtype', async () => {
      const p = await rawFile('dtype.safetensors', { t: { dtype: 'F12', shape: [4], data_offsets: [0, 16] } }, data)
      await expect(openModel(p)).rejects.toThrow(/dtype\.safetensors: tensor 't': unknown dtype 'F12'/)
    })
    it('shape × dtype size ≠ byte length', async () => {
      const p = await rawFile('size.safetensors', { t: { dtype: 'F16', shape: [4], data_offsets: [0, 16] } }, data)
      await expect(openModel(p)).rejects.toThrow(/tensor 't': shape \[4\] × F16 needs 8 bytes but data_offsets span 16/)
    })
    it('offsets reversed', async () => {
      const p = await rawFile('rev.safetensors', { t: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, data)
      await expect(openModel(p)).rejects.toThrow(/tensor 't': data_offsets \[8, 4\] end before they begin/)
    })
    it('non-string metadata', async () => {
      const p = await rawFile('meta.safetensors', { ...ok, __metadata__: { a: 1 } }, data)
      await expect(openModel(p)).rejects.toThrow(/meta\.safetensors: __metadata__\['a'\] is not a string/)
    })
    it('an unrecognised file and a missing path', async () => {
      const p = join(dir, 'x.bin')
      await writeFile(p, 'hello world, not a model')
      await expect(openModel(p)).rejects.toThrow(/x\.bin: unrecognised model file/)
      await expect(openModel(join(dir, 'missing'))).rejects.toThrow(/missing: no such file or folder/)
    })
  })

  it('the writer leaves no file under the final name when filling fails', async () => {
    const p = join(dir, 'fail.safetensors')
    await expect(writeSafetensorsFile(p, [{ name: 'a', dtype: 'F32', shape: [2] }], () => new Uint8Array(4))).rejects.toThrow(/fill returned 4 bytes, expected 8/)
    expect((await readdir(dir)).filter((f) => f.startsWith('fail.safetensors'))).toEqual([])
  })

  it('reads tensors beyond 4 GiB in a (sparse) file over 4 GiB', async () => {
    const pad = 4_400_000_000 // > 2^32 bytes of zeros that the filesystem never stores
    const header = { pad: { dtype: 'U8', shape: [pad], data_offsets: [0, pad] }, tail: { dtype: 'F32', shape: [2, 2], data_offsets: [pad, pad + 16] } }
    const p = await rawFile('sparse.safetensors', header, new Uint8Array(0))
    const dataStart = (await readFile(p)).length
    const fh = await open(p, 'r+')
    try {
      await fh.truncate(dataStart + pad + 16)
      await fh.write(new Uint8Array(Float32Array.of(1.5, -2, 3.25, 1e30).buffer), 0, 16, dataStart + pad)
    } finally {
      await fh.close()
    }
    const m = await openModel(p)
    try {
      expect(m.tensors.find((t) => t.name === 'tail')!.byteOffset).toBe(dataStart + pad)
      expect(Array.from(await m.readRows('tail', 1, 2))).toEqual([3.25, Math.fround(1e30)])
    } finally {
      await m.close()
    }
  })

  it('large tensors decode row ranges without reading the rest', async () => {
    const p = join(dir, 'rows.safetensors')
    const v = gaussian(1000 * 37, 5)
    await writeSafetensorsFile(p, [{ name: 'w', dtype: 'F32', shape: [1000, 37] }], () => encode('F32', v))
    const m = await openModel(p)
    const rows = await m.readRows('w', 999, 1000)
    expect(rows.length).toBe(37)
    expect(rows[36]).toBe(Math.fround(v[1000 * 37 - 1]!))
    await m.close()
  })
})
