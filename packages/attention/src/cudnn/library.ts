// Loading cuDNN 9 and checking its calls. locateLibrary(CUDNN) finds libcudnn.so.9. cuDNN 9 splits into
// sub-libraries that it dlopens by soname (graph, engines, heuristic, ops, ...) and some engines need
// NVRTC and cuBLASLt. bun's dlopen is RTLD_LOCAL, so we first load those by absolute path with libc's
// dlopen(RTLD_NOW | RTLD_GLOBAL): glibc then resolves cuDNN's own dlopen calls to the copies already
// loaded. Every cuDNN status goes through check(), which throws a CudnnError with cuDNN's own text.

import { CString } from "bun:ffi";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { type Bound, bind, CUBLASLT, CUDNN, cudart, cudartPath, type LibrarySpec, locateLibrary, runtimeVersion } from "@lightseq/cuda";
import { CUDNN_ABI as C } from "./abi.ts";

const cudnnSymbols = {
  cudnnGetVersion: { args: [], returns: "u64" },
  cudnnGetCudartVersion: { args: [], returns: "u64" },
  cudnnGetErrorString: { args: ["i32"], returns: "ptr" },
  cudnnGetLastErrorString: { args: ["ptr", "u64"], returns: "void" },
  cudnnCreate: { args: ["ptr"], returns: "i32" },
  cudnnSetStream: { args: ["ptr", "ptr"], returns: "i32" },
  cudnnBackendCreateDescriptor: { args: ["i32", "ptr"], returns: "i32" },
  cudnnBackendDestroyDescriptor: { args: ["ptr"], returns: "i32" },
  cudnnBackendFinalize: { args: ["ptr"], returns: "i32" },
  // (descriptor, attribute name, attribute type, element count, const void* elements)
  cudnnBackendSetAttribute: { args: ["ptr", "i32", "i32", "i64", "ptr"], returns: "i32" },
  // (descriptor, attribute name, attribute type, requested count, int64_t* count out, void* elements)
  cudnnBackendGetAttribute: { args: ["ptr", "i32", "i32", "i64", "ptr", "ptr"], returns: "i32" },
  cudnnBackendExecute: { args: ["ptr", "ptr", "ptr"], returns: "i32" },
} as const;

type Cudnn = Bound<typeof cudnnSymbols>;

/** A failed cuDNN call: the call, the status, cuDNN's name for it and cuDNN's own last-error text. */
export class CudnnError extends Error {
  override name = "CudnnError";
  constructor(
    readonly call: string,
    readonly status: number,
    readonly statusName: string,
    readonly libraryMessage: string,
    readonly context?: string,
  ) {
    super(`${call} failed: ${statusName} (${status})${libraryMessage ? `: ${libraryMessage}` : ""}${context ? ` [${context}]` : ""}`);
  }
}

export interface Library {
  fns: Cudnn;
  path: string;
  /** cudnnGetVersion(), e.g. 91300 */
  version: number;
  /** CUDA runtime version cuDNN was built against, e.g. 13000 */
  cudaVersion: number;
  /** Loaded by absolute path before cuDNN's first real call, and what could not be. */
  preloaded: string[];
  notPreloaded: string[];
}

let library: Library | null = null;
let libraryError: string | null = null;

const RTLD_NOW = 2;
const RTLD_GLOBAL = 0x100;

const libcSymbols = { dlopen: { args: ["ptr", "i32"], returns: "ptr" }, dlerror: { args: [], returns: "ptr" } } as const;
let libc: Bound<typeof libcSymbols> | null = null;

/** libc's dlopen, which (unlike bun's) takes flags: RTLD_GLOBAL lets cuDNN's own dlopen calls find the copies. */
function preload(path: string): string | null {
  if (libc === null) {
    for (const name of ["libc.so.6", "libdl.so.2"]) {
      try {
        libc = bind(name, libcSymbols);
        break;
      } catch {}
    }
  }
  if (libc === null) return "no dlopen found in libc.so.6 or libdl.so.2";
  if (libc.dlopen(Buffer.from(`${path}\0`), RTLD_NOW | RTLD_GLOBAL)) return null;
  const e = libc.dlerror();
  return e ? new CString(e as never).toString() : "dlopen failed";
}

/** cuDNN 9's sub-libraries in dependency order (graph first); those absent from the folder are skipped. */
const CUDNN_SUBLIBRARIES = [
  "libcudnn_graph.so.9",
  "libcudnn_engines_precompiled.so.9",
  "libcudnn_engines_runtime_compiled.so.9",
  "libcudnn_heuristic.so.9",
  "libcudnn_ops.so.9",
  "libcudnn_cnn.so.9",
  "libcudnn_adv.so.9",
];

function nvrtcSpec(cudaMajor: number): LibrarySpec {
  return {
    name: "NVRTC (libnvrtc)",
    sonames: [`libnvrtc.so.${cudaMajor}`],
    envVar: "LIGHTSEQ_NVRTC_SO",
    wheelDirs: cudaMajor >= 13 ? ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] : ["nvidia/cuda_nvrtc/lib"],
    toolkitDirs: ["lib64", "targets/x86_64-linux/lib", "lib"],
  };
}

function openCudnn(): Library {
  cudart(); // our runtime first: cuDNN must be built for its CUDA major version
  const runtime = runtimeVersion();
  const found = locateLibrary(CUDNN);
  if (found.path === null) {
    throw new Error(
      `cuDNN not found. Looked in:\n  ${found.tried.join("\n  ")}\nInstall nvidia-cudnn-cu13 (pip) or libcudnn9, or set ${CUDNN.envVar}.`,
    );
  }
  // Dependencies before the first cuDNN call, best effort: a missing one only matters if an engine needs
  // it, and then plan finalization says so (with these notes in cudnnAvailable()'s reason).
  const preloaded: string[] = [];
  const notPreloaded: string[] = [];
  const load = (path: string) => {
    const err = preload(path);
    if (err === null) preloaded.push(path);
    else notPreloaded.push(`${path}: ${err}`);
  };
  const nvrtc = locateLibrary(nvrtcSpec(Math.floor(runtime / 1000)));
  if (nvrtc.path !== null) {
    // NVRTC loads its builtins (libnvrtc-builtins.so.M.m) by soname when it compiles.
    const dir = dirname(nvrtc.path);
    for (const n of readdirSync(dir)
      .filter((f) => f.startsWith("libnvrtc-builtins.so."))
      .sort())
      load(join(dir, n));
    load(nvrtc.path);
  } else notPreloaded.push(`NVRTC: not found (${nvrtc.tried.join("; ")})`);
  const lt = locateLibrary(CUBLASLT);
  if (lt.path !== null) load(lt.path);
  else notPreloaded.push(`cuBLASLt: not found (${lt.tried.join("; ")})`);
  const dir = dirname(found.path);
  for (const so of CUDNN_SUBLIBRARIES) if (existsSync(join(dir, so))) load(join(dir, so));

  const fns = bind(found.path, cudnnSymbols);
  const version = Number(fns.cudnnGetVersion());
  const cudaVersion = Number(fns.cudnnGetCudartVersion());
  if (version < 90000 || version >= 100000) {
    throw new Error(`${found.path} is cuDNN ${fmtVersion(version)}; this backend's constants and graphs are written for cuDNN 9.x`);
  }
  if (Math.floor(cudaVersion / 1000) !== Math.floor(runtime / 1000)) {
    throw new Error(
      `${found.path} (cuDNN ${fmtVersion(version)}) was built for CUDA ${fmtCuda(cudaVersion)} but the CUDA runtime is ${fmtCuda(runtime)} (${cudartPath()}): install the cuDNN build for CUDA ${Math.floor(runtime / 1000)}`,
    );
  }
  return { fns, path: found.path, version, cudaVersion, preloaded, notPreloaded };
}

export function lib(): Library {
  if (library) return library;
  if (libraryError !== null) throw new Error(libraryError);
  try {
    library = openCudnn();
  } catch (e) {
    libraryError = (e as Error).message;
    throw e;
  }
  return library;
}

export function fmtVersion(v: number): string {
  return `${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}`;
}

export function fmtCuda(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

export function statusName(status: number): string {
  const p = lib().fns.cudnnGetErrorString(status);
  return p ? new CString(p as never).toString() : `cudnnStatus ${status}`;
}

/** cuDNN's last error text (since 9.0; thread-local, cleared by reading). */
export function lastError(): string {
  const buf = new Uint8Array(new ArrayBuffer(4096));
  lib().fns.cudnnGetLastErrorString(buf, buf.length);
  const end = buf.indexOf(0);
  return new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end)).trim();
}

export function check(status: number, call: string, context?: string): void {
  if (status === C.CUDNN_STATUS_SUCCESS) return;
  const message = lastError(); // first: any later cuDNN call may replace it
  throw new CudnnError(call, status, statusName(status), message, context);
}
