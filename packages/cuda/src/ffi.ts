// Typing of our FFI tables: device addresses and handles are plain JS numbers (< 2^53) on our side,
// which bun:ffi accepts for "ptr" arguments. This maps a declaration table to functions that take
// numbers (or typed arrays, passed fresh on every call) and keeps the arity checked.

import { dlopen } from "bun:ffi";

type Arg = number | bigint | NodeJS.TypedArray | null;
type Ret<R> = R extends "i64" | "u64" ? bigint : R extends "ptr" ? number | null : R extends "void" ? undefined : number;

export interface Decl {
  readonly args: readonly string[];
  readonly returns: string;
}

type Args<A extends readonly unknown[]> = { -readonly [I in keyof A]: Arg };

export type Bound<T extends Record<string, Decl>> = {
  [K in keyof T]: (...args: Args<T[K]["args"]>) => Ret<T[K]["returns"]>;
};

export function bind<T extends Record<string, Decl>>(path: string, table: T): Bound<T> {
  return dlopen(path, table as never).symbols as unknown as Bound<T>;
}
