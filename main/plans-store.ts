/**
 * Saved quantization plans, kept per model in plans.json in the engine's state folder (beside
 * eval-runs.json and recent-models.json), so a model's plans come back when it is opened again.
 * Shared safely between processes, and never overwritten on a bad read
 * (main/per-model-records.ts).
 *
 * File: { "version": 1, "models": { "/abs/model/path": [SavedPlan, …] } }
 */
import type { SavedPlan } from '../worker/api/contract'
import type { SavedPlansBackend } from '../worker/api/saved-plans'
import { savedPlanSchema } from '../worker/api/schemas'
import { PerModelRecordsFile } from './per-model-records'

export const PLANS_FILE_NAME = 'plans.json'
const MAX_PLANS_PER_MODEL = 500

export class SavedPlansFile implements SavedPlansBackend {
  private readonly records: PerModelRecordsFile<SavedPlan>

  constructor(
    readonly file: string,
    maxPerModel = MAX_PLANS_PER_MODEL,
    /** Where skipped records are reported (stderr by default). */
    warn?: (line: string) => void,
  ) {
    this.records = new PerModelRecordsFile<SavedPlan>({
      file,
      noun: 'plan',
      schema: savedPlanSchema,
      time: (p) => p.savedAt,
      id: (p) => p.id,
      modelPath: (p) => p.modelPath,
      maxPerModel,
      ...(warn ? { warn } : {}),
    })
  }

  list(modelPath: string): Promise<SavedPlan[]> {
    return this.records.list(modelPath)
  }

  save(plan: SavedPlan): Promise<void> {
    return this.records.put(plan)
  }

  remove(modelPath: string, id: string): Promise<boolean> {
    return this.records.remove(modelPath, id)
  }
}
