// Our own kernels library (kernels/ builds it): C ABI, a stream as the last argument of every launch,
// each returning the cudaError_t of the launch. The runtime is loaded first by absolute path so the
// library's DT_NEEDED libcudart resolves to the same copy (bun's dlopen is RTLD_LOCAL).

import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { LibraryNotFoundError, LibraryOverrideError } from "./errors.ts";
import { type Bound, bind } from "./ffi.ts";
import { check, cudart } from "./runtime.ts";

const u = ["ptr", "ptr", "ptr", "i64", "ptr"] as const; // (a, b, out, n, stream)
const attnFwd = ["ptr", "ptr", "ptr", "ptr", "ptr", "i32", "i32", "i32", "i32", "i32", "f32", "i32", "i32", "ptr"] as const;
const attnMerge = ["ptr", "ptr", "ptr", "ptr", "i32", "i32", "i32", "ptr"] as const;
/** The one declaration table of liblightseq.so (kernels.test.ts checks it against the C headers). */
export const kernelSymbols = {
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
  // p2p.cu: the experimental copy-engine transport (@lightseq/comm experimental/copy-engine.ts).
  ls_p2p_init: { args: [], returns: "i32" },
  ls_ipc_get_handle: { args: ["ptr", "ptr"], returns: "i32" },
  ls_ipc_open_handle: { args: ["ptr", "ptr"], returns: "i32" },
  ls_ipc_close_handle: { args: ["ptr"], returns: "i32" },
  ls_stream_wait_u32: { args: ["ptr", "u32", "ptr"], returns: "i32" },
  ls_stream_write_u32: { args: ["ptr", "u32", "ptr"], returns: "i32" },
  // (src, bytes, remote_slots, slot_bytes, nslots, first_chunk, local_freed, remote_full, stream)
  ls_p2p_send: { args: ["ptr", "i64", "ptr", "i64", "i32", "u64", "ptr", "ptr", "ptr"], returns: "i32" },
  // (dst, bytes, local_slots, slot_bytes, nslots, first_chunk, local_full, remote_freed, stream)
  ls_p2p_recv: { args: ["ptr", "i64", "ptr", "i64", "i32", "u64", "ptr", "ptr", "ptr"], returns: "i32" },
  // Block attention (kernels/src/attention.cuh; @lightseq/attention's cuda.ts wraps them).
  // (q, k, v, o, lse, Tq, Tk, Hq, Hkv, D, scale, causal, kernels, stream); kernels: KERNELS_AUTO | _MMA | _WGMMA
  ls_attn_fwd_bf16: { args: attnFwd, returns: "i32" },
  ls_attn_fwd_bf16_f32out: { args: attnFwd, returns: "i32" },
  // (q, k, v, o, lse, dout, dq, dk, dv, workspace, Tq, Tk, Hq, Hkv, D, scale, causal, kernels, stream)
  ls_attn_bwd_bf16: {
    args: [
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "ptr",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "i32",
      "i32",
      "ptr",
    ],
    returns: "i32",
  },
  ls_attn_bwd_workspace_bytes: { args: ["i32", "i32", "i32"], returns: "i64" },
  // (device, kernels) -> 1 wgmma, 0 mma.sync, or minus the code a launch would return (ATTN_ERR_*, cudaError_t)
  ls_attn_kernel: { args: ["i32", "i32"], returns: "i32" },
  // (acc_o, acc_lse, o_part, lse_part, Tq, Hq, D, stream)
  ls_attn_merge_f32: { args: attnMerge, returns: "i32" },
  ls_attn_merge_bf16: { args: attnMerge, returns: "i32" },
  // Llama ops (kernels/src/llama_*.cu; packages/llama/src/ops/*.ts call them)
  // (tokens, table, out, T, V, C, stream)
  ls_llama_embedding_fwd_bf16: { args: ["ptr", "ptr", "ptr", "i64", "i64", "i64", "ptr"], returns: "i32" },
  // (dx, perm, seg_tok, seg_start, seg_slot, segments, multi_tok, multi_start, multi, scratch, C, dtable, stream)
  ls_llama_embedding_bwd_bf16: {
    args: ["ptr", "ptr", "ptr", "ptr", "ptr", "i64", "ptr", "ptr", "i64", "ptr", "i64", "ptr", "ptr"],
    returns: "i32",
  },
  // (x, w, y, rstd, T, C, eps, stream)
  ls_llama_rmsnorm_fwd_bf16: { args: ["ptr", "ptr", "ptr", "ptr", "i64", "i64", "f32", "ptr"], returns: "i32" },
  // (x, r, w, h, y, rstd, T, C, eps, stream)
  ls_llama_residual_rmsnorm_fwd_bf16: { args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "i64", "i64", "f32", "ptr"], returns: "i32" },
  // (T) -> blocks of the backward (rows of its dw partials)
  ls_llama_rmsnorm_bwd_blocks: { args: ["i64"], returns: "i64" },
  // (x, w, rstd, dy, residual|null, dx, partials, blocks, dw, T, C, stream)
  ls_llama_rmsnorm_bwd_bf16: {
    args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "i64", "ptr", "i64", "i64", "ptr"],
    returns: "i32",
  },
  // (qkv, cos, sin, q, k, v, T, Hq, Hkv, D, stream)
  ls_llama_rope_qkv_fwd_bf16: { args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "i64", "i32", "i32", "i32", "ptr"], returns: "i32" },
  // (dq, dk, dv, cos, sin, dqkv, T, Hq, Hkv, D, stream)
  ls_llama_rope_qkv_bwd_bf16: { args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "i64", "i32", "i32", "i32", "ptr"], returns: "i32" },
  // (gu, a, T, F, stream)
  ls_llama_swiglu_fwd_bf16: { args: ["ptr", "ptr", "i64", "i64", "ptr"], returns: "i32" },
  // (gu, da, dgu, T, F, stream)
  ls_llama_swiglu_bwd_bf16: { args: ["ptr", "ptr", "ptr", "i64", "i64", "ptr"], returns: "i32" },
  // (logits f32, labels, grad_scale, dlogits bf16|null, row_loss f32, rows, V, stream)
  ls_llama_cross_entropy_f32: { args: ["ptr", "ptr", "f32", "ptr", "ptr", "i64", "i64", "ptr"], returns: "i32" },
  // (p, g, m, v, w, n, grad_scale, decay, 1-beta1, beta2, 1-beta2, step_size, sqrt(bc2), eps, stream)
  ls_adamw_f32: {
    args: ["ptr", "ptr", "ptr", "ptr", "ptr", "i64", "f32", "f32", "f32", "f32", "f32", "f32", "f32", "f32", "ptr"],
    returns: "i32",
  },
} as const;

/** The `kernels` argument of the attention calls (attention.cuh LS_ATTN_KERNELS_*). */
export const ATTN_KERNELS = { auto: 0, mma: 1, wgmma: 2 } as const;
/** What an attention call returns, without launching, when its `kernels` cannot run (attention.cuh LS_ATTN_ERR_*). */
export const ATTN_ERR = { kernelsUnknown: 20001, kernelsUnavailable: 20002 } as const;

export type Kernels = Bound<typeof kernelSymbols>;

export const KERNELS_ABI_VERSION = 4;

let lib: Kernels | null = null;

/** What to run when liblightseq.so is missing or stale, for every error that says so. */
export const KERNELS_BUILD_HINT =
  "Build it with `bunx lightseq-build-kernels` (needs nvcc; in the lightseq-ts repository `bun run build:kernels` does the same), or set LIGHTSEQ_KERNELS_SO to a built liblightseq.so.";

/**
 * Path of liblightseq.so: $LIGHTSEQ_KERNELS_SO (which must exist: LibraryOverrideError
 * otherwise; nothing else is tried), else build/liblightseq.so of the @lightseq/kernels package, where its build command
 * writes it (kernels/ in this repository, node_modules/@lightseq/kernels in a project that installed
 * the packages), or, where that package does not resolve (a checkout whose node_modules predates
 * it), this repository's kernels/build. `path` is "" when the file does not exist.
 */
export function kernelsPath(): { path: string; tried: string[] } {
  const env = process.env.LIGHTSEQ_KERNELS_SO;
  if (env) {
    if (!existsSync(env)) throw new LibraryOverrideError("LIGHTSEQ_KERNELS_SO", env, "lightseq kernels (liblightseq.so)");
    return { path: env, tried: [`$LIGHTSEQ_KERNELS_SO=${env}`] };
  }
  const tried = ["$LIGHTSEQ_KERNELS_SO (unset)"];
  let candidate: string;
  try {
    candidate = join(dirname(Bun.resolveSync("@lightseq/kernels/package.json", import.meta.dir)), "build", "liblightseq.so");
  } catch {
    tried.push("@lightseq/kernels (not installed)");
    candidate = resolve(import.meta.dir, "../../../kernels/build/liblightseq.so");
  }
  if (existsSync(candidate)) return { path: candidate, tried };
  tried.push(candidate);
  return { path: "", tried };
}

export function kernels(): Kernels {
  if (lib) return lib;
  cudart(); // the runtime first, by absolute path
  const { path, tried } = kernelsPath();
  if (!path) throw new LibraryNotFoundError("lightseq kernels (liblightseq.so)", tried, KERNELS_BUILD_HINT);
  const loaded = bind(path, kernelSymbols);
  const abi = loaded.ls_abi_version();
  if (abi !== KERNELS_ABI_VERSION) {
    throw new LibraryNotFoundError(
      "lightseq kernels (liblightseq.so)",
      [path],
      `ABI version ${abi}, expected ${KERNELS_ABI_VERSION}. ${KERNELS_BUILD_HINT.replace("Build", "Rebuild")}`,
    );
  }
  lib = loaded;
  return lib;
}

/** Checks the cudaError_t a launch wrapper returned. */
export function checkLaunch(code: number, kernel: string, context?: string): void {
  check(code, kernel, context);
}
