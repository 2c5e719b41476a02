/**
 * Where the workbench is, kept in the URL's fragment: the model path, the tab and the tensor
 * (`#model=/abs/path&tab=tensor&tensor=model.layers.0.mlp.up_proj.weight`). The fragment,
 * not the query, so it works the same on the desktop app's file URL and in browser mode,
 * whose access token travels in the query (and then in sessionStorage) untouched. Each
 * change is a history entry, so Back returns to the previous tab or tensor and a reload
 * reopens the same view.
 */
export const TABS = ['overview', 'grid', 'tensor', 'evaluate', 'importance'] as const
export type Tab = (typeof TABS)[number]

export interface UrlState {
  model: string | null
  tab: Tab | null
  tensor: string | null
}

export function parseUrlState(hash: string): UrlState {
  const params = new URLSearchParams(hash.replace(/^#/, ''))
  const tab = params.get('tab')
  return {
    model: params.get('model') || null,
    tab: (TABS as readonly string[]).includes(tab ?? '') ? (tab as Tab) : null,
    tensor: params.get('tensor') || null,
  }
}

export function formatUrlState(s: UrlState): string {
  const params = new URLSearchParams()
  if (s.model) params.set('model', s.model)
  if (s.tab) params.set('tab', s.tab)
  if (s.tensor) params.set('tensor', s.tensor)
  const text = params.toString()
  return text ? `#${text}` : ''
}

/** Writes the state into the address bar: a new history entry (`push`) or in place. */
export function writeUrlState(s: UrlState, push: boolean): void {
  const hash = formatUrlState(s)
  if (hash === window.location.hash || (hash === '' && window.location.hash === '')) return
  const url = window.location.pathname + window.location.search + hash
  if (push) window.history.pushState(null, '', url)
  else window.history.replaceState(null, '', url)
}
