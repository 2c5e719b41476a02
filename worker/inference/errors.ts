/**
 * Errors about what the user asked for (text too short for one window, no tokenizer, a
 * prompt longer than the model's positions …), as opposed to a broken model file
 * (ModelFormatError). Their message is meant to be shown as it is.
 */
export class InferenceInputError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'InferenceInputError'
  }
}
