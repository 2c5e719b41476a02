/**
 * Import rules checked in `npm test` (npm run lint:layers). The engine's folders are layers:
 * a folder may import its own files and lower layers only, never a higher one, so the
 * quantizers, plans and exporters that come next cannot tangle the readers and kernels.
 */
const LAYERS = ['common', 'io', 'formats', 'model', 'kernels', 'jobs', 'stats', 'inference', 'quant', 'plan', 'importance', 'export', 'api', 'cli']

const layerRules = LAYERS.map((layer, i) => ({
  name: `layer-${layer}`,
  comment: `worker/${layer} may import only ${LAYERS.slice(0, i).join(', ') || 'nothing else in worker/'} (lower layers)`,
  severity: 'error',
  from: { path: `^worker/${layer}/` },
  to: { path: `^worker/(${LAYERS.slice(i + 1).join('|')})/` },
}))

module.exports = {
  forbidden: [
    {
      name: 'worker-is-plain-node',
      comment: 'the engine runs under plain Node and in worker threads: no Electron, no main/, no renderer/',
      severity: 'error',
      from: { path: '^worker/' },
      to: { path: '^(main|renderer)/|^node_modules/electron/|^electron$' },
    },
    {
      name: 'worker-core-modules',
      comment: 'electron is reached as a core-like module name too',
      severity: 'error',
      from: { path: '^worker/' },
      to: { dependencyTypes: ['core'], path: '^electron' },
    },
    {
      name: 'renderer-only-api-types',
      comment: 'the UI sees the engine only through the API contract, and only its types',
      severity: 'error',
      from: { path: '^renderer/' },
      to: { path: '^(worker|main)/', pathNot: '^worker/api/contract\\.ts$' },
    },
    {
      name: 'renderer-type-only-contract',
      comment: 'importing the contract must not pull engine code into the UI bundle',
      severity: 'error',
      from: { path: '^renderer/' },
      to: { path: '^worker/api/contract\\.ts$', dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'renderer-no-node',
      comment: 'the renderer is sandboxed web code',
      severity: 'error',
      from: { path: '^renderer/' },
      to: { dependencyTypes: ['core'] },
    },
    {
      name: 'engine-not-from-tests-or-bench',
      comment: 'shipped code never imports test helpers or benchmarks',
      severity: 'error',
      from: { path: '^(worker|main|renderer)/' },
      to: { path: '^(test|bench)/' },
    },
    ...layerRules,
    {
      name: 'no-circular',
      severity: 'error',
      from: { path: '^(worker|main|renderer)/' },
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.node.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'], extensions: ['.ts', '.vue', '.js', '.mjs'] },
  },
}
