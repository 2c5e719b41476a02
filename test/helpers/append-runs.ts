/**
 * Child process for the runs-file concurrency test: appends `count` runs of one model to the
 * runs file as fast as it can. Usage: tsx append-runs.ts FILE MODEL PREFIX COUNT
 */
import { EvalRunsFile } from '../../main/runs-store'
import type { EvalRun } from '../../worker/api/contract'

const [file, model, prefix, count] = process.argv.slice(2) as [string, string, string, string]
const store = new EvalRunsFile(file, 10_000)
for (let i = 0; i < Number(count); i++) {
  const run: EvalRun = {
    id: `${prefix}-${i}`,
    modelPath: model,
    createdAt: Date.now(),
    variant: { kind: 'listed', id: 'base' },
    variantLabel: 'base',
    text: { kind: 'heldout' },
    textLabel: 'held-out text',
    ctx: 256,
    maxWindows: 1,
    windows: 1,
    tokens: 256,
    textTokens: 99401,
    backend: 'wasm',
    threads: 1,
    ppl: 36 + i / 1000,
    nll: Math.log(36 + i / 1000),
    kld: null,
    seconds: 1,
    tokensPerSecond: 256,
  }
  await store.add(run)
}
