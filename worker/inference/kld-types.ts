/**
 * The KL-divergence summary as plain types, apart from kld.ts (which opens models and
 * caches), so the API contract and the UI can name it without pulling in Node code.
 */

/** Where the base model's log-probs came from. */
export type KldBaseMode = 'cache-read' | 'cache-write' | 'recompute'

export const KLD_BASE_MODES: readonly KldBaseMode[] = ['cache-read', 'cache-write', 'recompute']

/** KL divergence of a model against its base on the same windows. */
export interface KldSummary {
  /** Mean KL(base ‖ model) per predicted token, nats. */
  mean: number
  median: number
  p99: number
  /** Fraction of predicted positions where both models' top-1 token agree. */
  top1: number
  basePpl: number
  /** ppl(model) − ppl(base). */
  deltaPpl: number
  /** Where the base log-probs came from. */
  baseSource: KldBaseMode
}
