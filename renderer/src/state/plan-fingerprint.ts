/**
 * The model fingerprint a plan must carry (worker/plan/plan.ts `modelFingerprint`: sha256 of
 * the architecture and every stored tensor's name, dtype and shape, sorted by name; first 32
 * hex digits). The engine's ModelSummary does not report it yet, so until it does the UI
 * recomputes it from the summary. That agrees with the engine when the summary lists only
 * stored tensors and its architecture is the format's own (safetensors/GGUF models); where it
 * does not, planSize and savePlan refuse the plan with both fingerprints in the message.
 */
import type { ModelSummary } from '../../../worker/api/contract'

export async function summaryFingerprint(model: ModelSummary): Promise<string> {
  const reported = (model as ModelSummary & { fingerprint?: unknown }).fingerprint
  if (typeof reported === 'string' && reported.length > 0) return reported
  // Sorted by UTF-16 code units, as the engine's `<` comparison sorts.
  const tensors = [...model.tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  let text = `${model.architecture ?? ''}\n`
  for (const t of tensors) text += `${t.name}\u0000${t.dtype}\u0000${t.shape.join(',')}\n`
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text))
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('').slice(0, 32)
}
