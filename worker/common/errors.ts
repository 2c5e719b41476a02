/**
 * The one error type of every model reader. Its message always names the file, the tensor
 * when there is one, and the problem, so the UI and the CLI can show it as it is.
 */
export class ModelFormatError extends Error {
  constructor(
    readonly file: string,
    readonly tensor: string | null,
    readonly problem: string,
  ) {
    super(tensor ? `${file}: tensor '${tensor}': ${problem}` : `${file}: ${problem}`)
    this.name = 'ModelFormatError'
  }
}
