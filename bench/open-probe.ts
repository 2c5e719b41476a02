// Child-process probe for the open-model bench: a fresh process, so RSS growth and timings are
// not blurred by whatever the bench did before. Prints one JSON line.
// Usage: node --expose-gc --import tsx bench/open-probe.ts <model path>
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { openModel } from '../worker/formats/open-model'

const path = process.argv[2]
if (!path) throw new Error('usage: open-probe.ts <model path>')
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})
const rss = () => process.memoryUsage().rss

// Reference: the least any reader must do — read the 8-byte length and the JSON header, parse it.
const t0 = performance.now()
const fh = await open(join(path, 'model.safetensors'), 'r')
const len = Buffer.alloc(8)
await fh.read(len, 0, 8, 0)
const headerBytes = Number(len.readBigUInt64LE())
const header = Buffer.alloc(headerBytes)
await fh.read(header, 0, headerBytes, 8)
const parsed = JSON.parse(header.toString('utf8')) as Record<string, unknown>
await fh.close()
const headerMs = performance.now() - t0

gc()
const rss0 = rss()
const t1 = performance.now()
const model = await openModel(path)
const openMs = performance.now() - t1
gc()
const rssGrowth = rss() - rss0
const tensors = model.tensors.length
await model.close()

const t2 = performance.now()
await (await openModel(path)).close()
const warmOpenMs = performance.now() - t2

console.log(JSON.stringify({ openMs, warmOpenMs, rssGrowthMB: rssGrowth / 2 ** 20, headerMs, headerMB: headerBytes / 2 ** 20, tensors, parsedKeys: Object.keys(parsed).length }))
