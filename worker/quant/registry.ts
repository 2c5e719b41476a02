/**
 * Every weight quantizer, by id — like onnxruntime-web's op table: a method is one file and one
 * line here. Ids are what a CLI spec names (`rtn:bits=4`, `any3:group=128`, `gptq:bits=3`).
 */
import type { QuantMethod } from './contract'
import { rtnMethod } from './rtn'
import { nf4Method } from './nf4'
import { fp4Method } from './fp4'
import { any2Method, any3Method, any4Method } from './anyn'
import { kmeansMethod } from './kmeans'
import { gptqMethod } from './gptq'
import { awqMethod } from './awq'
import { ggmlMethod } from './ggml'

/** A method with its params type erased; its schema restores the params. */
export type AnyQuantMethod = QuantMethod<object>

const METHODS: readonly AnyQuantMethod[] = [rtnMethod, nf4Method, fp4Method, any4Method, any3Method, any2Method, kmeansMethod, gptqMethod, awqMethod, ggmlMethod]

export const QUANT_METHODS: ReadonlyMap<string, AnyQuantMethod> = new Map(METHODS.map((m) => [m.id, m]))

if (QUANT_METHODS.size !== METHODS.length) throw new Error('quant registry: two methods share an id')
