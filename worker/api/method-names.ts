/**
 * The API's method names as a plain list, for the sandboxed preload: it builds one bridge
 * function per name and must not bundle the schema library. schemas.ts keys its table by
 * exactly these names (a `satisfies` check), and contract.ts derives ApiMethod from that
 * table, so a name missing here, in the schemas or in the contract is a type error.
 */
export const API_METHOD_NAMES = [
  'openModel',
  'closeModel',
  'listRecent',
  'defaultModelPath',
  'tensorStats',
  'layerGridStats',
  'cancelJob',
  'evaluate',
  'generate',
  'listBackends',
  'listRuns',
  'deleteRun',
  'listVariants',
  'listQuantMethods',
  'planSize',
  'quantizePreview',
  'listPlans',
  'savePlan',
  'deletePlan',
  'llamaCppPresets',
  'llamaCppPresetPlan',
  'exportFormats',
  'exportSupport',
  'exportModel',
  'layerImportance',
  'allocatePlan',
  'paretoSweep',
  'activationView',
  'kvView',
  'kvSweep',
] as const

export type ApiMethodName = (typeof API_METHOD_NAMES)[number]
