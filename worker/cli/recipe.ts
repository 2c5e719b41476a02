import { resolve } from 'node:path'
import { recipeFor, type RecipeTarget } from '../export/recipe'
import { readRegularTextFile } from '../io/regular-file'
import { parsePlan } from '../plan/plan'
import { UsageError, type ParsedArgs } from './args'

/** `recipe --plan FILE --for llama.cpp|llm-compressor`: the plan as a recipe for a big-model tool, on stdout. */
export async function runRecipe(args: ParsedArgs): Promise<number> {
  if (args.positionals.length > 0) throw new UsageError('recipe takes no positional arguments (only --plan FILE --for TOOL)')
  const file = args.flags.get('plan')
  if (typeof file !== 'string') throw new UsageError('recipe needs --plan FILE')
  const target = args.flags.get('for')
  if (target !== 'llama.cpp' && target !== 'llm-compressor') throw new UsageError(`--for must be llama.cpp or llm-compressor, got '${String(target)}'`)
  const source = resolve(file)
  const plan = parsePlan(await readRegularTextFile(source, 64 << 20), source)
  const recipe = recipeFor(plan, target as RecipeTarget)
  for (const w of recipe.warnings) process.stderr.write(`warning: ${w}\n`)
  process.stdout.write(recipe.text)
  return 0
}
