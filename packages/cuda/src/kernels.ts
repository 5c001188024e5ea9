// Our own kernels library (kernels/ builds it): C ABI, a stream as the last argument of every launch,
// each returning the cudaError_t of the launch. The runtime is loaded first by absolute path so the
// library's DT_NEEDED libcudart resolves to the same copy (bun's dlopen is RTLD_LOCAL).

import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { LibraryNotFoundError } from "./errors.ts";
import { type Bound, bind } from "./ffi.ts";
import { check, cudart } from "./runtime.ts";

const u = ["ptr", "ptr", "ptr", "i64", "ptr"] as const; // (a, b, out, n, stream)
const kernelSymbols = {
  ls_abi_version: { args: [], returns: "i32" },
  ls_noop: { args: ["ptr"], returns: "i32" },
  ls_spin_ns: { args: ["u64", "ptr"], returns: "i32" },
  ls_fill_u32: { args: ["ptr", "u32", "i64", "ptr"], returns: "i32" },
  ls_fill_u16: { args: ["ptr", "u16", "i64", "ptr"], returns: "i32" },
  ls_rand_uniform_f32: { args: ["ptr", "i64", "u64", "u64", "f32", "f32", "ptr"], returns: "i32" },
  ls_rand_uniform_bf16: { args: ["ptr", "i64", "u64", "u64", "f32", "f32", "ptr"], returns: "i32" },
  ls_rand_normal_f32: { args: ["ptr", "i64", "u64", "u64", "f32", "f32", "ptr"], returns: "i32" },
  ls_rand_normal_bf16: { args: ["ptr", "i64", "u64", "u64", "f32", "f32", "ptr"], returns: "i32" },
  ls_cast_f32_bf16: { args: ["ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_cast_bf16_f32: { args: ["ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_add_f32: { args: u, returns: "i32" },
  ls_add_bf16: { args: u, returns: "i32" },
  ls_add_i32: { args: u, returns: "i32" },
  ls_mul_f32: { args: u, returns: "i32" },
  ls_mul_bf16: { args: u, returns: "i32" },
  ls_mul_i32: { args: u, returns: "i32" },
  ls_scale_f32: { args: ["ptr", "ptr", "f32", "i64", "ptr"], returns: "i32" },
  ls_scale_bf16: { args: ["ptr", "ptr", "f32", "i64", "ptr"], returns: "i32" },
  ls_axpy_f32: { args: ["f32", "ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_axpy_bf16: { args: ["f32", "ptr", "ptr", "i64", "ptr"], returns: "i32" },
  ls_sumsq_f32: { args: ["ptr", "i64", "ptr", "ptr", "ptr"], returns: "i32" },
  ls_sumsq_bf16: { args: ["ptr", "i64", "ptr", "ptr", "ptr"], returns: "i32" },
  ls_sumsq_partials: { args: [], returns: "i64" },
  // (p, g, m, v, w, n, grad_scale, decay, 1-beta1, beta2, 1-beta2, step_size, sqrt(bc2), eps, stream)
  ls_adamw_f32: {
    args: ["ptr", "ptr", "ptr", "ptr", "ptr", "i64", "f32", "f32", "f32", "f32", "f32", "f32", "f32", "f32", "ptr"],
    returns: "i32",
  },
} as const;

export type Kernels = Bound<typeof kernelSymbols>;

export const KERNELS_ABI_VERSION = 3;

let lib: Kernels | null = null;

/** Path of liblightseq.so: $LIGHTSEQ_KERNELS_SO, else kernels/build/liblightseq.so of this repo. */
export function kernelsPath(): { path: string; tried: string[] } {
  const env = process.env.LIGHTSEQ_KERNELS_SO;
  const repoBuild = resolve(import.meta.dir, "../../../kernels/build/liblightseq.so");
  const tried = [
    env ? `$LIGHTSEQ_KERNELS_SO=${env}` : "$LIGHTSEQ_KERNELS_SO (unset)",
    repoBuild,
    join(process.cwd(), "kernels/build/liblightseq.so"),
  ];
  for (const p of [env, repoBuild, join(process.cwd(), "kernels/build/liblightseq.so")]) {
    if (p && existsSync(p)) return { path: p, tried };
  }
  return { path: "", tried };
}

export function kernels(): Kernels {
  if (lib) return lib;
  cudart(); // the runtime first, by absolute path
  const { path, tried } = kernelsPath();
  if (!path)
    throw new LibraryNotFoundError("lightseq kernels (liblightseq.so)", tried, "Build it with `bun run build:kernels` (needs nvcc).");
  const loaded = bind(path, kernelSymbols);
  const abi = loaded.ls_abi_version();
  if (abi !== KERNELS_ABI_VERSION) {
    throw new LibraryNotFoundError(
      "lightseq kernels (liblightseq.so)",
      [path],
      `ABI version ${abi}, expected ${KERNELS_ABI_VERSION}: rebuild with \`bun run build:kernels\`.`,
    );
  }
  lib = loaded;
  return lib;
}

/** Checks the cudaError_t a launch wrapper returned. */
export function checkLaunch(code: number, kernel: string, context?: string): void {
  check(code, kernel, context);
}
