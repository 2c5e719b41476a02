/**
 * The bench registry's contract. Each file in bench/sections/ exports `section`; run.ts
 * discovers them, so adding a benchmark (inference, quantizers …) is adding a file.
 */
export interface BenchContext {
  /** Smaller inputs and fewer repetitions, for a quick check on a busy machine. */
  quick: boolean
  /** Progress lines (stderr), so the table on stdout stays clean. */
  log(message: string): void
}

/** A figure measured in the same run that the row's value should be read against. */
export interface BenchReference {
  name: string
  value: number
  unit: string
}

export interface BenchRow {
  name: string
  value: number
  unit: string
  reference?: BenchReference
  /** e.g. '<= 100 ms', '>= 1 GB/s'. */
  target?: string
  /** Whether `target` was met; undefined when there is none. */
  ok?: boolean
  note?: string
}

export interface BenchSection {
  name: string
  /** One line on what the section measures. */
  description: string
  run(ctx: BenchContext): Promise<BenchRow[]>
}
