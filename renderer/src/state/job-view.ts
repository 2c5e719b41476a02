/** A job as the progress bars show it (statistics, plan error, method comparison). */
export interface JobView {
  label: string
  done: number
  total: number
  /** The user asked to cancel it (then a "cancelled" notice replaces the progress). */
  cancelRequested?: boolean
  cancel(): void
}
