/**
 * Quantscope's headless CLI over the same engine as the app: `npm run cli -- <command>`.
 * Contract: with --json, stdout carries exactly one JSON document; every log and progress
 * line goes to stderr. Failures exit non-zero with one clear line on stderr.
 */
import { parseArgs, UsageError, type ParsedArgs } from './args'
import { inspectModel, type InspectReport } from './inspect'
import { runEval } from './eval'
import { runExportCommand } from './export'
import { runRecipe } from './recipe'
import { runGenerate } from './generate'
import { runImportance } from './importance'
import { runPlan } from './plan'
import { runSweep } from './sweep'
import { runQuantize } from './quantize'
import { formatBytes, formatCount, progressLine } from './format'
import { LLAMA_CPP_PRESETS } from '../plan/llama-cpp-presets'

const USAGE = `usage: npm run cli -- <command> [options]

commands:
  inspect PATH [--stats] [--threads N] [--json]
      PATH: a Hugging Face folder, a .safetensors file, a *.safetensors.index.json,
      a .gguf or an .onnx file. --stats computes per-tensor statistics.
  eval MODEL --text FILE [--quant SPEC | --plan FILE | --preset NAME [--calib FILE]] [--ctx 256] [--max-windows N]
       [--backend wasm|native] [--threads N] [--kld [--base PATH] [--kld-cache auto|on|off]]
       [--tokenizer FILE] [--json] [--kv-bits N [--kv-group G] [--kv-smooth] [--kv-past-only]]
       [--act int:bits=B,outliers=K|kmeans:bits=B,outliers=K] [--no-calib-cache]
      Perplexity on the text (windows of ctx tokens, remainder dropped); --kld adds the KL
      divergence against the base model (default: MODEL itself). --quant applies one method
      to every decoder linear weight (e.g. rtn:bits=4,group=128,sym=false, nf4:group=64,
      any4:group=128, kmeans:bits=3,per=row,outliers=0.005, gptq:bits=3,group=128,
      awq:bits=4,group=128); --plan FILE applies a plan; --preset NAME applies llama.cpp's mix
      of that name (the ggml type llama-quantize gives each tensor): ${LLAMA_CPP_PRESETS.join(', ')};
      --calib replaces the calibration text.
  quantize MODEL (--quant SPEC | --plan FILE | --preset NAME) [--calib FILE] [--tokenizer FILE] [--threads N] [--json]
      Quantizes every planned tensor without evaluating, N tensors at a time on worker
      threads (default 2): per tensor method, bytes, MSE, SQNR and seconds, plus totals.
  export MODEL (--plan FILE | --quant SPEC | --preset NAME) --format gguf|onnx|safetensors|compressed-tensors --out PATH
       [--dtype bf16|fp16|fp32] [--gguf-fallback TYPE] [--calib FILE] [--tokenizer FILE] [--json]
      Writes the model as planned in a format other runtimes load (staged beside PATH, renamed
      when complete) and <name>.report.json beside it: per tensor method, written type and bytes.
      GGUF writes methods it cannot store as a ggml type: --gguf-fallback Q8_0|Q4_0|…|Q6_K
      (default the nearest in bits), each listed in the report.
  recipe --plan FILE --for llama.cpp|llm-compressor
      The plan as a recipe for the tools that quantize big models: llama-quantize --tensor-type
      overrides and command, or an llm-compressor recipe YAML (config_groups by role pattern).
  generate MODEL --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--seed S]
       [--compare MODEL2] [--backend wasm|native] [--threads N] [--tokenizer FILE] [--json]
       [--kv-bits N [--kv-group G] [--kv-smooth] [--kv-past-only]] [--act SPEC] [--no-calib-cache]
      Continues the prompt (greedy unless --temperature > 0); --compare runs a second model
      on the same prompt and settings, side by side. --kv-bits/--act as for eval; past-only:
      each step uses its own K/V at full precision, which enter the cache quantized after it.
      KV smoothing statistics and k-means codebooks are cached on disk; --no-calib-cache recomputes.
  importance MODEL --text FILE --method lsaq|cosine|sensitivity|local [--k 10] [--no-final-norm]
       [--quant SPEC [--calib FILE]] [--ctx 256] [--max-windows N] [--backend wasm|native] [--threads N]
       [--tokenizer FILE] [--json]
      Per decoder block importance on the text: lsaq = 1 − Jaccard of the logit-lens top-k
      token sets of the block's input and output residual (final norm then lm_head; off with
      --no-final-norm), cosine = 1 − cos(input, output), sensitivity = ΔKLD against the model
      with only that block quantized by --quant SPEC (ΔPPL beside it; cached), local = relative
      error of the block's linear outputs on the calibration text (--calib, default
      resources/eval/calibration.txt) with --quant SPEC (default rtn:bits=4,group=128), no forward
      pass per block. Reports the Spearman rank agreement between the methods computed.
  plan MODEL --budget SIZE --allocator lsaq|greedy|optimal [--options "SPEC;SPEC;…"] [--all-tensors]
       [--text FILE] [--ctx 256] [--max-windows 4] [--format native|gguf] [--kv-ctx N [--kv-batch N] [--kv-bits N]]
       [--importance-file FILE] [--cost kld|local] --out plan.json [--json]
      Allocates a plan under a budget (bytes, 12MB, 1.5GiB, or bits per weight: 3.5bpw) over the
      options (default rtn:bits=4,group=128;rtn:bits=3,group=128; 'keep' = stored): lsaq puts the
      most important blocks (logit-lens importance on the text, or --importance-file) at the larger
      option; greedy and optimal minimise the summed per-tensor ΔKLD measured on the text (cached),
      or with --cost local the relative local error on the calibration text (no evaluations).
      --all-tensors also plans embeddings and lm_head; --format gguf sizes tensors as the GGUF export.
  plan MODEL --preset NAME --out plan.json [--json]
      Writes llama.cpp's mix of that name (--preset of eval/quantize/export) as a plan file.
  sweep MODEL --allocator lsaq|greedy|optimal --budgets SIZE,SIZE,… [--options "SPEC;…"] [--all-tensors]
       [--format native|gguf] [--text FILE] [--calib-windows 4] [--eval-text FILE] [--max-windows N]
       [--ctx 256] [--backend wasm|native] [--threads N] [--kld] [--json]
      A plan per budget (as plan; ΔKLD or importance on --text, default the calibration text),
      each evaluated on --eval-text (default the held-out text), beside uniform plans of each option.
  help
`

const BOOLEAN_FLAGS = new Set(['json', 'stats', 'help', 'kld', 'no-final-norm', 'all-tensors', 'kv-smooth', 'kv-past-only', 'no-calib-cache'])
const VALUE_FLAGS = new Set([
  'threads',
  // eval / generate
  'text', 'ctx', 'max-windows', 'backend', 'base', 'kld-cache', 'tokenizer', 'kv-group', 'act',
  // quantization
  'quant', 'plan', 'preset', 'calib',
  // export
  'format', 'out', 'dtype', 'for', 'gguf-fallback',
  // importance
  'method', 'k',
  // plan
  'budget', 'allocator', 'options', 'importance-file', 'kv-ctx', 'kv-batch', 'kv-bits', 'cost',
  // sweep
  'budgets', 'eval-text', 'calib-windows',
  'prompt', 'max-tokens', 'temperature', 'top-p', 'seed', 'compare',
])

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv, BOOLEAN_FLAGS, VALUE_FLAGS)
  if (args.command === null || args.command === 'help' || args.flags.has('help')) {
    process.stderr.write(USAGE)
    return args.command === null ? 2 : 0
  }
  switch (args.command) {
    case 'inspect':
      return runInspect(args)
    case 'eval':
      return runEval(args)
    case 'generate':
      return runGenerate(args)
    case 'quantize':
      return runQuantize(args)
    case 'export':
      return runExportCommand(args)
    case 'recipe':
      return runRecipe(args)
    case 'importance':
      return runImportance(args)
    case 'plan':
      return runPlan(args)
    case 'sweep':
      return runSweep(args)
    default:
      throw new UsageError(`unknown command '${args.command}'`)
  }
}

async function runInspect(args: ParsedArgs): Promise<number> {
  const path = args.positionals[0]
  if (!path || args.positionals.length > 1) throw new UsageError('inspect takes exactly one PATH')
  const threadsFlag = args.flags.get('threads')
  const threads = threadsFlag === undefined ? undefined : Number(threadsFlag)
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) throw new UsageError('--threads must be a positive integer')
  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const report = await inspectModel(path, {
    stats: args.flags.has('stats'),
    threads,
    signal: controller.signal,
    onProgress: (done, total) => progressLine('statistics', done, total),
  })
  if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
  else process.stdout.write(renderInspect(report))
  return 0
}

function renderInspect(r: InspectReport): string {
  const lines = [
    `format        ${r.format}`,
    `architecture  ${r.architecture ?? '(unknown)'}`,
    `parameters    ${formatCount(r.params)}`,
    `bytes         ${formatBytes(r.bytes)}`,
    `files         ${r.files.join('\n              ')}`,
    `tensors       ${r.tensors.length}`,
    '',
  ]
  // A reduce, not Math.max(...names): a spread of 300,000 arguments overflows the stack.
  const nameWidth = Math.min(60, r.tensors.reduce((w, t) => Math.max(w, t.name.length), 4))
  const num = (v: number | null): string => (v === null ? 'none' : v.toPrecision(4))
  for (const t of r.tensors) {
    const where = t.layer === null ? (t.role ?? '') : `L${t.layer} ${t.role ?? ''}`
    let line = `${t.name.padEnd(nameWidth)}  ${t.dtype.padEnd(8)} ${JSON.stringify(t.shape).padEnd(16)} ${where}`
    if (t.stats) {
      const s = t.stats
      line += `  absmax=${num(s.absmax)} std=${num(s.std)} kurt=${num(s.kurtosis)}`
      if (s.nan || s.inf) line += ` nan=${s.nan} inf=${s.inf}`
    }
    lines.push(line)
  }
  return lines.join('\n') + '\n'
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    const e = err as Error
    const message = e instanceof UsageError ? `${e.message}\n${USAGE}` : e.name === 'AbortError' ? 'cancelled' : e.message
    process.stderr.write(`error: ${message}\n`)
    process.exitCode = e instanceof UsageError ? 2 : 1
  },
)
