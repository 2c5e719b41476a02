import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import { describeModelFiles, formatByContent, formatByFileName, MODEL_FORMATS, modelFileExtensions } from '../../worker/formats/registry'
import { buildGguf, str } from '../helpers/gguf-writer'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-registry-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

const GGML_TYPE_F32 = 0
const validGguf = () =>
  buildGguf({ kv: [['general.name', str('x')]], tensors: [{ name: 'w', ne: [4], type: GGML_TYPE_F32, data: new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer) }] })

describe('format registry', () => {
  it('owns each ending once, longest ending first', () => {
    const exts = modelFileExtensions()
    expect(new Set(exts).size).toBe(exts.length)
    expect(formatByFileName('/m/model.safetensors.index.json')?.id).toBe('safetensors')
    expect(formatByFileName('/m/MODEL.GGUF')?.id).toBe('gguf')
    expect(formatByFileName('/m/model.onnx')?.id).toBe('onnx')
    expect(formatByFileName('/m/config.json')).toBeNull()
    expect(formatByFileName('/m/model.onnx.data')).toBeNull()
    expect(describeModelFiles()).toBe('.safetensors, .safetensors.index.json, .gguf or .onnx')
    expect(MODEL_FORMATS.map((f) => f.id)).toEqual(['safetensors', 'gguf', 'onnx'])
  })

  it('recognises content by magic bytes only where the format has them', () => {
    expect(formatByContent(validGguf().subarray(0, 16))?.id).toBe('gguf')
    expect(formatByContent(new Uint8Array(16))).toBeNull()
  })

  it('reports a corrupt .gguf as a GGUF problem, not as an unrecognised file', async () => {
    const bytes = validGguf()
    bytes[0] = 0x58 // 'XGUF'
    const p = join(dir, 'corrupt.gguf')
    await writeFile(p, bytes)
    await expect(openModel(p)).rejects.toThrow(/not a GGUF file/)
  })

  it('opens a GGUF under a foreign name by its magic, and names the endings for an unknown file', async () => {
    const p = join(dir, 'weights.bin')
    await writeFile(p, validGguf())
    const m = await openModel(p)
    expect(m.format).toBe('gguf')
    await m.close()
    const q = join(dir, 'notes.txt')
    await writeFile(q, 'hello, this is no model at all')
    await expect(openModel(q)).rejects.toThrow(`${q}: unrecognised model file (expected .safetensors, .safetensors.index.json, .gguf or .onnx)`)
  })

  it('opens a folder holding only a GGUF file', async () => {
    const sub = await mkdtemp(join(dir, 'folder-'))
    await writeFile(join(sub, 'README.md'), 'x')
    await writeFile(join(sub, 'model.gguf'), validGguf())
    const m = await openModel(sub)
    expect(m.format).toBe('gguf')
    await m.close()
  })
})
