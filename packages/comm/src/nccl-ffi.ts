// libnccl through bun:ffi: the declarations (nccl.h), loading with a version check, and NcclError.
// The library is found by locateLibrary(NCCL) (LIGHTSEQ_NCCL_SO, pip wheel folders, the toolkit,
// ldconfig); the version is read through a one-symbol table first, because opening the full table
// on an old library would fail on a missing symbol before we could say which version it is.

import { CString } from "bun:ffi";
import { type Bound, bind, LibraryNotFoundError, locateLibrary, NCCL } from "@lightseq/cuda";
import type { DType } from "@lightseq/tensor";
import type { ReduceOp } from "./communicator.ts";

// Declarations (nccl.h). ncclComm_t, cudaStream_t and buffers are pointers; size_t counts are u64
// passed as numbers (< 2^53).

const versionSymbols = { ncclGetVersion: { args: ["ptr"], returns: "i32" } } as const;

const ncclSymbols = {
  ncclGetVersion: { args: ["ptr"], returns: "i32" },
  ncclGetUniqueId: { args: ["ptr"], returns: "i32" },
  ncclCommInitRankScalable: { args: ["ptr", "i32", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  ncclCommSplit: { args: ["ptr", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  ncclCommCount: { args: ["ptr", "ptr"], returns: "i32" },
  ncclCommUserRank: { args: ["ptr", "ptr"], returns: "i32" },
  ncclCommCuDevice: { args: ["ptr", "ptr"], returns: "i32" },
  ncclGroupStart: { args: [], returns: "i32" },
  ncclGroupEnd: { args: [], returns: "i32" },
  // (buf, count, dtype, peer, comm, stream)
  ncclSend: { args: ["ptr", "u64", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  ncclRecv: { args: ["ptr", "u64", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  // (send, recv, count, dtype, op, comm, stream)
  ncclAllReduce: { args: ["ptr", "ptr", "u64", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  // (send, recv, sendcount, dtype, comm, stream)
  ncclAllGather: { args: ["ptr", "ptr", "u64", "i32", "ptr", "ptr"], returns: "i32" },
  // (send, recv, recvcount, dtype, op, comm, stream)
  ncclReduceScatter: { args: ["ptr", "ptr", "u64", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  // (send, recv, count, dtype, root, comm, stream)
  ncclBroadcast: { args: ["ptr", "ptr", "u64", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  ncclCommGetAsyncError: { args: ["ptr", "ptr"], returns: "i32" },
  ncclCommFinalize: { args: ["ptr"], returns: "i32" },
  ncclCommAbort: { args: ["ptr"], returns: "i32" },
  ncclCommDestroy: { args: ["ptr"], returns: "i32" },
  ncclGetErrorString: { args: ["i32"], returns: "ptr" },
  ncclGetLastError: { args: ["ptr"], returns: "ptr" },
} as const;

// Typed (and the argument counts checked) by @lightseq/cuda's ffi.ts: pointers and handles are plain
// numbers, out-parameters typed arrays passed fresh on every call.
export type Nccl = Bound<typeof ncclSymbols>;

export const NCCL_MIN_VERSION = 22300;

/** ncclResult_t names (nccl.h). */
const RESULT_NAMES = [
  "ncclSuccess",
  "ncclUnhandledCudaError",
  "ncclSystemError",
  "ncclInternalError",
  "ncclInvalidArgument",
  "ncclInvalidUsage",
  "ncclRemoteError",
  "ncclInProgress",
  "ncclTimeout",
];
/** ncclInProgress: a non-blocking call still running (ncclCommGetAsyncError). */
export const IN_PROGRESS = 7;
/** ncclCommSplit's color for a rank that takes no part. */
export const SPLIT_NOCOLOR = -1;

export const NCCL_DTYPE: Record<DType, number> = { f32: 7, bf16: 9, i32: 2 };
export const NCCL_OP: Record<ReduceOp, number> = { sum: 0, max: 2, avg: 4 };

export class NcclError extends Error {
  override name = "NcclError";
  constructor(
    readonly call: string,
    readonly code: number,
    readonly libraryMessage: string,
    readonly lastError: string,
    readonly context?: string,
  ) {
    super(
      `${call} failed: ${RESULT_NAMES[code] ?? "ncclResult"} (${code}): ${libraryMessage}${lastError ? `; last error: ${lastError}` : ""}${context ? ` [${context}]` : ""}`,
    );
  }
}

let lib: { fns: Nccl; path: string; version: number } | null = null;

/** A C string NCCL returned (null: empty). */
export function cstr(p: number | null): string {
  return p ? new CString(p as never).toString() : "";
}

/** Loads libnccl once and checks its version; throws LibraryNotFoundError or a version error. */
export function nccl(): Nccl {
  if (lib) return lib.fns;
  const found = locateLibrary(NCCL);
  if (found.path === null) {
    throw new LibraryNotFoundError(
      NCCL.name,
      found.tried,
      "Install it with `pip install nvidia-nccl-cu13`, or set LIGHTSEQ_NCCL_SO to the library file.",
    );
  }
  const out = new Int32Array(new ArrayBuffer(4));
  const probe = bind(found.path, versionSymbols);
  const code = probe.ncclGetVersion(out);
  if (code !== 0) throw new NcclError("ncclGetVersion", code, "", "", found.path);
  const version = out[0] as number;
  if (version < NCCL_MIN_VERSION) {
    throw new Error(
      `NCCL ${fmtVersion(version)} at ${found.path} is too old: need >= ${fmtVersion(NCCL_MIN_VERSION)} (ncclCommInitRankScalable). Set LIGHTSEQ_NCCL_SO to a newer libnccl.so.2.`,
    );
  }
  lib = { fns: bind(found.path, ncclSymbols), path: found.path, version };
  return lib.fns;
}

export function ncclVersion(): { version: number; text: string; path: string } {
  nccl();
  const l = lib as NonNullable<typeof lib>;
  return { version: l.version, text: fmtVersion(l.version), path: l.path };
}

function fmtVersion(v: number): string {
  return `${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}`;
}

/** Throws an NcclError with NCCL's message and its last-error text for `comm`. */
export function ncclCheck(code: number, call: string, comm: number | null, context?: string): void {
  if (code === 0) return;
  const f = nccl();
  throw new NcclError(call, code, cstr(f.ncclGetErrorString(code)), cstr(f.ncclGetLastError(comm)), context);
}

/** A fresh unique id (rank 0 makes it; it also hosts NCCL's bootstrap root, so it must live until init ends). */
export function ncclUniqueId(): Uint8Array {
  const id = new Uint8Array(new ArrayBuffer(128));
  ncclCheck(nccl().ncclGetUniqueId(id), "ncclGetUniqueId", null);
  return id;
}
