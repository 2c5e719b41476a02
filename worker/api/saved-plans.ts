/**
 * Where plans are kept per model (listPlans / savePlan / deletePlan): the interface the engine
 * uses, and an in-memory store for when no state folder is configured. The apps keep them in
 * a file beside the runs (main/plans-store.ts).
 */
import { resolve } from 'node:path'
import type { SavedPlan } from './contract'

export interface SavedPlansBackend {
  /** Plans of the model at this path, newest first. */
  list(modelPath: string): Promise<SavedPlan[]>
  /** Adds the plan, or replaces the one with its id. */
  save(plan: SavedPlan): Promise<void>
  /** Removes plan `id` of the model at this path; false when there was none. */
  remove(modelPath: string, id: string): Promise<boolean>
}

/** Plans kept for the life of the process only. */
export class MemorySavedPlans implements SavedPlansBackend {
  private readonly plans = new Map<string, SavedPlan[]>()
  async list(modelPath: string): Promise<SavedPlan[]> {
    return [...(this.plans.get(resolve(modelPath)) ?? [])].sort((a, b) => b.savedAt - a.savedAt)
  }
  async save(plan: SavedPlan): Promise<void> {
    const key = resolve(plan.modelPath)
    this.plans.set(key, [plan, ...(this.plans.get(key) ?? []).filter((p) => p.id !== plan.id)])
  }
  async remove(modelPath: string, id: string): Promise<boolean> {
    const key = resolve(modelPath)
    const plans = this.plans.get(key) ?? []
    const kept = plans.filter((p) => p.id !== id)
    this.plans.set(key, kept)
    return kept.length < plans.length
  }
}
