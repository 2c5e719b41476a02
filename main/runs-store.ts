/**
 * Evaluation runs, kept per model in eval-runs.json in the engine's state folder (Electron:
 * userData; browser mode: $XDG_CONFIG_HOME/quantscope or --state-dir), beside
 * recent-models.json: newest first, the oldest beyond a limit dropped. Shared safely between
 * processes, and never overwritten on a bad read (main/per-model-records.ts).
 *
 * File: { "version": 1, "models": { "/abs/model/path": [EvalRun, …] } }
 */
import type { EvalRun } from '../worker/api/contract'
import type { EvalRunsBackend } from '../worker/api/evaluate-service'
import { evalRunSchema } from '../worker/api/schemas'
import { PerModelRecordsFile } from './per-model-records'

export const RUNS_FILE_NAME = 'eval-runs.json'
const MAX_RUNS_PER_MODEL = 200

export class EvalRunsFile implements EvalRunsBackend {
  private readonly records: PerModelRecordsFile<EvalRun>

  constructor(
    readonly file: string,
    maxPerModel = MAX_RUNS_PER_MODEL,
    /** Where skipped records are reported (stderr by default). */
    warn?: (line: string) => void,
  ) {
    this.records = new PerModelRecordsFile<EvalRun>({
      file,
      noun: 'run',
      schema: evalRunSchema,
      time: (r) => r.createdAt,
      id: (r) => r.id,
      modelPath: (r) => r.modelPath,
      maxPerModel,
      ...(warn ? { warn } : {}),
    })
  }

  list(modelPath: string): Promise<EvalRun[]> {
    return this.records.list(modelPath)
  }

  add(run: EvalRun): Promise<void> {
    return this.records.put(run)
  }

  remove(modelPath: string, id: string): Promise<boolean> {
    return this.records.remove(modelPath, id)
  }
}
