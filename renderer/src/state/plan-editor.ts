/**
 * The layer grid's plan editor (part of the workbench): which linear weight gets which method
 * and bits, the cells selected, the method "brush" new cells get, the exact size of the model
 * as planned (planSize, asked again after every edit), the plans saved for the model, and the
 * weight error of each planned tensor (quantizePreview, one job over the planned tensors).
 */
import { markRaw, reactive } from 'vue'
import type { ApiError, ModelSummary, Plan, PlanSizeInfo, QuantErrorInfo, QuantMethodInfo, SavedPlan } from '../../../worker/api/contract'
import { asApiError, startJob, type ApiClient, type Job } from '../api'
import { buildPlan, defaultParams, entryBits, entrySpec, methodMap, nextBits, withBits, type MethodEntry, type QuantParams } from './plan-cells'
import type { JobView } from './job-view'

export interface PlanEditorState {
  modelId: string | null
  /** The open model's fingerprint (plans carry it); null until known. */
  fingerprint: string | null
  methods: QuantMethodInfo[]
  methodsError: ApiError | null
  /** Planned tensors; every other tensor is kept as stored. */
  entries: Record<string, MethodEntry>
  /** Selected cells (tensor names). */
  selection: string[]
  /** The method and params cells get when they are first given bits. */
  brush: { method: string; params: QuantParams }
  /** Name of the plan (saved plans, runs of the plan). */
  name: string
  /** The saved plan being edited (Save replaces it), or null. */
  savedId: string | null
  /** Description of the plan last loaded (a saved plan, a file, a llama.cpp preset); null for a plan made here. */
  description: string | null
  size: PlanSizeInfo | null
  /** The plan the size belongs to changed and a new size is on its way. */
  sizePending: boolean
  sizeError: ApiError | null
  saved: SavedPlan[]
  plansError: ApiError | null
  /** Weight error of planned tensors by `tensor|spec`, from quantizePreview. */
  errors: Record<string, QuantErrorInfo>
  errorJob: JobView | null
  errorError: ApiError | null
}

export type PlanEditor = ReturnType<typeof createPlanEditor>

/** Appended to a loaded plan's description once its entries are edited. */
const EDITED = ' — edited in Quantscope from there'

/** The entries as one comparable string (tensor order and param order do not matter). */
function entriesKey(entries: Readonly<Record<string, MethodEntry>>): string {
  return Object.keys(entries)
    .sort()
    .map((t) => `${t}=${entrySpec(entries[t]!)}`)
    .join('\n')
}

export function errorKey(tensor: string, entry: MethodEntry): string {
  return `${tensor}|${entrySpec(entry)}`
}

export function createPlanEditor(client: ApiClient, jobView: (label: string, cancel: () => void) => JobView, onCancelled: (label: string) => void) {
  const state = reactive<PlanEditorState>({
    modelId: null,
    fingerprint: null,
    methods: [],
    methodsError: null,
    entries: {},
    selection: [],
    brush: { method: 'rtn', params: {} },
    name: 'untitled plan',
    savedId: null,
    description: null,
    size: null,
    sizePending: false,
    sizeError: null,
    saved: [],
    plansError: null,
    errors: {},
    errorJob: null,
    errorError: null,
  })
  let model: ModelSummary | null = null
  let methodsFor: QuantMethodInfo[] | null = null
  let methodsMap = new Map<string, QuantMethodInfo>()
  let sizeTimer: ReturnType<typeof setTimeout> | null = null
  let sizeSeq = 0
  let errorJob: Job<unknown> | null = null
  let loadedFor: string | null = null
  /** The entries as last loaded or saved: anything else is an edit a replacement would lose. */
  let baseline = ''
  /** The entries as last loaded: the loaded description holds until they change. */
  let loadedKey = ''

  /** Methods by id; reads `state.methods`, so renders that use it follow the list. */
  function methods(): ReadonlyMap<string, QuantMethodInfo> {
    if (methodsFor !== state.methods) {
      methodsFor = state.methods
      methodsMap = methodMap(state.methods)
    }
    return methodsMap
  }

  /** A new model: an empty plan, its saved plans loaded lazily. */
  function setModel(m: ModelSummary | null): void {
    cancelErrors()
    model = m
    baseline = loadedKey = ''
    Object.assign(state, { modelId: m?.modelId ?? null, fingerprint: null, entries: {}, selection: [], name: 'untitled plan', savedId: null, description: null, size: null, sizeError: null, saved: [], plansError: null, errors: {}, errorError: null })
    loadedFor = null
    if (!m) return
    state.fingerprint = m.fingerprint
    requestSize()
  }

  /** Methods (once) and the model's saved plans (once per model). */
  async function load(): Promise<void> {
    const modelId = state.modelId
    if (state.methods.length === 0) {
      try {
        const list = await client.call('listQuantMethods', {})
        state.methods = list
        const brush = methods().get(state.brush.method) ?? list[0]
        if (brush) state.brush = { method: brush.id, params: defaultParams(brush) }
        state.methodsError = null
      } catch (err) {
        state.methodsError = asApiError(err)
      }
    }
    if (modelId && loadedFor !== modelId) {
      loadedFor = modelId
      await refreshSaved()
    }
  }

  async function refreshSaved(): Promise<void> {
    const modelId = state.modelId
    if (!modelId) return
    try {
      const list = await client.call('listPlans', { modelId })
      if (state.modelId === modelId) state.saved = list.map((p) => markRaw(p))
      state.plansError = null
    } catch (err) {
      if (state.modelId === modelId) state.plansError = asApiError(err)
    }
  }

  /** The plan as the engine takes it, or null while the model's fingerprint is unknown. */
  function currentPlan(): Plan | null {
    const fingerprint = state.fingerprint
    if (!model || !fingerprint) return null
    return buildPlan(model.name, fingerprint, state.entries, currentDescription())
  }

  /** The loaded plan's description while its entries are unchanged; after an edit it says the plan started there. */
  function currentDescription(): string | undefined {
    const d = state.description
    if (!d) return undefined
    return entriesKey(state.entries) === loadedKey || d.endsWith(EDITED) ? d : `${d}${EDITED}`
  }

  /** True when planned entries would be lost by replacing the plan: they differ from what was last loaded or saved. */
  function hasEdits(): boolean {
    return Object.keys(state.entries).length > 0 && entriesKey(state.entries) !== baseline
  }

  function plannedCount(): number {
    return Object.keys(state.entries).length
  }

  /** planSize of the current plan, a moment after the last edit (a drag edits many cells). */
  function requestSize(): void {
    state.sizePending = true
    if (sizeTimer) clearTimeout(sizeTimer)
    sizeTimer = setTimeout(() => void fetchSize(), 120)
  }

  async function fetchSize(): Promise<void> {
    sizeTimer = null
    const modelId = state.modelId
    const plan = currentPlan()
    const seq = ++sizeSeq
    if (!modelId || !plan) {
      state.sizePending = false
      return
    }
    try {
      const size = await client.call('planSize', { modelId, plan })
      if (seq !== sizeSeq) return
      state.size = markRaw(size)
      state.sizeError = null
    } catch (err) {
      if (seq !== sizeSeq) return
      state.size = null
      state.sizeError = asApiError(err)
    } finally {
      if (seq === sizeSeq) state.sizePending = false
    }
  }

  function bitsOf(tensor: string): number {
    return entryBits(state.entries[tensor], methods())
  }

  /** Sets the width of the tensors (16 = keep); cells that were kept get the brush's method. */
  function setBits(tensors: readonly string[], bits: number): void {
    for (const t of tensors) {
      const entry = withBits(state.entries[t] ?? { method: state.brush.method, params: { ...state.brush.params } }, bits, methods())
      if (entry === 'keep') delete state.entries[t]
      else state.entries[t] = entry
    }
    requestSize()
  }

  /** One click: the next width in 16 → 8 → 4 → 3 → 2 → 16. */
  function cycle(tensor: string): void {
    setBits([tensor], nextBits(bitsOf(tensor)))
  }

  /** The brush takes the method (at its defaults); planned cells among `tensors` switch to it at their bits. */
  function setMethod(tensors: readonly string[], methodId: string): void {
    const info = methods().get(methodId)
    if (!info) return
    const keepGroup = state.brush.params.group
    state.brush = { method: info.id, params: defaultParams(info) }
    if (keepGroup !== undefined && 'group' in state.brush.params) state.brush.params.group = keepGroup
    for (const t of tensors) {
      const old = state.entries[t]
      if (!old) continue
      // Keep the cell's width where the new method can have it (RTN 3 → GPTQ 3, Q4_K → RTN 4); else the method's own.
      const fresh = { method: info.id, params: { ...state.brush.params } }
      const next = withBits(fresh, entryBits(old, methods()), methods())
      if (next === 'keep' || next.method !== info.id) {
        state.entries[t] = fresh
        continue
      }
      state.entries[t] = next
    }
    requestSize()
  }

  /** Sets one param on the brush and on the planned cells among `tensors` whose method has it. */
  function setParam(tensors: readonly string[], key: string, value: number | boolean | string): void {
    if (methods().get(state.brush.method)?.params.some((p) => p.key === key)) state.brush.params[key] = value
    for (const t of tensors) {
      const e = state.entries[t]
      if (e && methods().get(e.method)?.params.some((p) => p.key === key)) state.entries[t] = { method: e.method, params: { ...(e.params ?? {}), [key]: value } }
    }
    requestSize()
  }

  function clear(): void {
    state.entries = {}
    requestSize()
  }

  /** Shows a plan (saved or imported) in the grid; tensors outside the grid keep their entries too. */
  function applyPlan(plan: Plan, name: string, savedId: string | null): void {
    const entries: Record<string, MethodEntry> = {}
    for (const [t, e] of Object.entries(plan.tensors)) if (e !== 'keep') entries[t] = { method: e.method, params: { ...(e.params ?? {}) } }
    state.entries = entries
    state.name = name
    state.savedId = savedId
    state.description = plan.description?.trim() || null
    state.selection = []
    baseline = loadedKey = entriesKey(entries)
    requestSize()
  }

  async function save(): Promise<void> {
    const modelId = state.modelId
    const plan = currentPlan()
    if (!modelId || !plan) return
    try {
      const saved = await client.call('savePlan', { modelId, name: state.name.trim() || 'untitled plan', plan, ...(state.savedId ? { id: state.savedId } : {}) })
      baseline = entriesKey(plan.tensors as Record<string, MethodEntry>)
      state.savedId = saved.id
      state.name = saved.name
      state.plansError = null
      await refreshSaved()
    } catch (err) {
      state.plansError = asApiError(err)
    }
  }

  /** Save as a new plan even when a saved one is loaded. */
  async function saveAsNew(): Promise<void> {
    state.savedId = null
    await save()
  }

  function loadSaved(id: string): void {
    const p = state.saved.find((s) => s.id === id)
    if (p) applyPlan(p.plan, p.name, p.id)
  }

  async function deleteSaved(id: string): Promise<void> {
    const modelId = state.modelId
    if (!modelId) return
    try {
      await client.call('deletePlan', { modelId, planId: id })
      if (state.savedId === id) state.savedId = null
      await refreshSaved()
    } catch (err) {
      state.plansError = asApiError(err)
    }
  }

  function cancelErrors(): void {
    errorJob?.cancel()
    errorJob = null
    state.errorJob = null
  }

  /**
   * Weight error of every planned tensor not measured yet for its current setting, one
   * quantizePreview job per tensor, one after another; progress counts tensors.
   */
  async function computeErrors(): Promise<void> {
    const modelId = state.modelId
    if (!modelId || state.errorJob) return
    const todo = Object.entries(state.entries).filter(([t, e]) => !(errorKey(t, e) in state.errors))
    if (todo.length === 0) return
    state.errorError = null
    let stop = false
    const view = jobView(`Quantization error of ${todo.length} planned ${todo.length === 1 ? 'tensor' : 'tensors'}`, () => {
      stop = true
      errorJob?.cancel()
    })
    view.total = todo.length
    state.errorJob = view
    try {
      for (const [tensor, entry] of todo) {
        if (stop || state.modelId !== modelId) break
        const job = startJob(client, 'quantizePreview', { modelId, tensor, methods: [{ methodId: entry.method, params: entry.params ?? {} }], bins: 2, heatmapSize: 1 }, () => {})
        errorJob = job
        const result = await job.promise
        state.errors[errorKey(tensor, entry)] = result.methods[0]!.metrics
        view.done++
      }
    } catch (err) {
      const e = asApiError(err)
      if (e.cancelled) {
        if (view.cancelRequested) onCancelled(view.label)
      } else state.errorError = e
    } finally {
      errorJob = null
      state.errorJob = null
    }
  }

  /** The measured error of a planned tensor at its current setting, or null. */
  function errorOf(tensor: string): QuantErrorInfo | null {
    const e = state.entries[tensor]
    return e ? (state.errors[errorKey(tensor, e)] ?? null) : null
  }

  return {
    state,
    methods,
    setModel,
    load,
    currentPlan,
    hasEdits,
    plannedCount,
    bitsOf,
    setBits,
    cycle,
    setMethod,
    setParam,
    clear,
    applyPlan,
    save,
    saveAsNew,
    loadSaved,
    deleteSaved,
    computeErrors,
    cancelErrors,
    errorOf,
  }
}
