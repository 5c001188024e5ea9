// cuDNN 9 fused attention behind the block contract of block.ts, through cuDNN's backend (graph) API.
// Layouts: layout.ts. No C shim: every backend call takes handles, pointers and scalars.
//
//   cudnnBackend.forward(q, k, v)              bf16 q [Tq,Hq,D], k/v [Tk,Hkv,D] -> o bf16, lse [Hq,Tq] f32 (natural log)
//   cudnnBackend.backward(q, k, v, o, lse, dO) -> dq, dk, dv bf16
//   cudnnForwardInto / cudnnBackwardInto        the same into preallocated outputs (benchmarks, DistAttn)
//
// Our tensors seen as cuDNN's BHSD with B = 1 (no data moves):
//   q, o, dO, dq  dims [1, Hq, Tq, D]   strides [Tq*Hq*D, D, Hq*D, 1]
//   k, dk         dims [1, Hkv, Tk, D]  strides [Tk*Hkv*D, D, Hkv*D, 1]  (k enters the graph as K^T: last two swapped)
//   v, dv         like k                                                (v enters the backward as V^T)
//   lse           dims [1, Hq, Tq, 1]   strides [Hq*Tq, Tq, 1, 1]       ("Stats": exactly our [Hq, Tq])
//
// The graphs are the operation patterns cuDNN's fused flash-attention engines recognise, in the order
// cudnn-frontend's composite SDPA nodes lower them (node/scaled_dot_product_flash_attention.h,
// node/softmax.h, node/diagonal_band_mask.h; read to learn the pattern, written here from scratch):
//   forward:  S = Q K^T; S *= scale; [causal mask]; M = rowmax S; E = exp(S - M); Z = rowsum E;
//             Stats = M + log Z; P = E / Z (bf16); O = P V
//   backward: Delta = rowsum(dO * O) * 1; S = Q K^T * scale - Stats; [mask]; P = exp S;
//             dV = P^T dO; dS = (dO V^T - Delta) * P * scale; dK = dS^T Q; dQacc = dS K (f32); dQ = dQacc
//   GQA:      K/V keep Hkv heads (cuDNN broadcasts them over Hq / Hkv query heads); dK, dV are computed
//             per query head (virtual bf16) and reduced onto the kv heads by an ADD reduction.
//   mask:     keep key j for query i iff i + (Tk - Tq) >= j (bottom-right, layout.ts): GEN_INDEX rows and
//             columns, (rows + Tk - Tq) >= cols, BINARY_SELECT(S, -inf, keep). With Tq == Tk the shift
//             ops are left out (the plain causal graph).
// Delta and dQacc are non-virtual scratch (f32) that we allocate next to the plan's workspace.
//
// What cuDNN cannot do, we refuse or reshape, never route elsewhere:
// - causal with Tq > Tk: cuDNN's bottom-right mask needs Tq <= Tk. The first Tq - Tk query rows see no
//   key (o = 0, lse = -inf, dq = 0, by the contract); we write those and run cuDNN on the last Tk rows,
//   which is square causal attention. Their lse columns are not a contiguous view of lse [Hq, Tq], so
//   they go through a [Hq, Tk] temporary and a 2D copy (Hq*Tk*4 bytes; DistAttn never takes this path).
// - o in f32 (`outDtype: "f32"`): cuDNN writes o in the input dtype, so the f32 o is the bf16 o widened
//   (one extra cast pass; the partial then merges in f32 as usual, but carries bf16 rounding).
// - `accumulate` (f32 dq, dk, dv += this block): cuDNN writes bf16 gradients, so they land in bf16
//   temporaries, are cast to f32 and added with axpy. Extra cost per gradient element: a bf16 and an f32
//   temporary (6 bytes) and about 10 bytes of extra traffic (cast reads 2 and writes 4, axpy reads 4
//   more) on top of the accumulator's own read and write; and each block's gradient is rounded to bf16
//   once before it is summed in f32 (the CUDA backend adds unrounded f32).
// - Tq = 0 or Tk = 0 never reach cuDNN (zero-sized tensors): outputs are filled per the contract.
// - bf16 only, D in FAST_HEAD_DIMS, scale > 0, 16-byte aligned tensors on one device, compute
//   capability >= 8.0, cuDNN 9.x built for the same CUDA major version as the runtime.
//
// Plans are built once per shape (device, pass, Tq, Tk, Hq, Hkv, D, causal) and cached with their
// workspace size. The scale is NOT in the key: it is a by-value scalar read at execution, so one plan
// serves every scale (a plan build can take seconds when cuDNN compiles its kernel at run time).
// Workspace and scratch are allocated from the stream-ordered pool per call and freed on the same stream.
//
// Loading: locateLibrary(CUDNN) finds libcudnn.so.9. cuDNN 9 splits into sub-libraries that it dlopens
// by soname (graph, engines, heuristic, ops, ...) and some engines need NVRTC and cuBLASLt. bun's dlopen
// is RTLD_LOCAL, so we first load those by absolute path with libc's dlopen(RTLD_NOW | RTLD_GLOBAL):
// glibc then resolves cuDNN's own dlopen calls to the copies already loaded.

import { CString, ptr } from "bun:ffi";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import {
  type Bound,
  bind,
  CUBLASLT,
  CUDNN,
  check as checkCuda,
  cudart,
  cudartPath,
  DeviceAttr,
  deviceAttribute,
  type LibrarySpec,
  locateLibrary,
  MemcpyKind,
  memsetAsync,
  probeGpus,
  runtimeVersion,
  type Stream,
  setDevice,
} from "@lightseq/cuda";
import { axpy, cast, deviceName, empty, fill, type Tensor } from "@lightseq/tensor";
import {
  type AttentionBackend,
  type AttentionGrads,
  type AttentionOptions,
  type AttentionOutput,
  type BackwardOptions,
  type CheckedCall,
  checkBackwardArgs,
  checkForwardArgs,
  type ForwardOptions,
} from "./block.ts";
import { checkGrads, checkOut as checkOutput, fail, streamFor } from "./gpu-args.ts";
import { FAST_HEAD_DIMS } from "./layout.ts";

// ---- constants ---------------------------------------------------------------------------------------------
//
// Every enum value this file passes to cuDNN, with its name in the headers. Source: cudnn_graph.h of
// cuDNN 9 (included by cudnn.h; cudnn_backend.h is a shim over it). The attribute names carry explicit
// values in the header; descriptor and attribute *types* are sequential enums that cuDNN 9 only appends
// to. Checked: compiled bench/cudnn-abi.c against the cuDNN 9.6.0 headers (identical output); the GPU
// machine's headers are checked by bench/cudnn-check.ts, which compares cudnn-abi.c's output with this
// table before anything else runs.

export const CUDNN_ABI = Object.freeze({
  CUDNN_STATUS_SUCCESS: 0,
  // cudnnDataType_t
  CUDNN_DATA_FLOAT: 0,
  CUDNN_DATA_INT32: 4,
  CUDNN_DATA_BFLOAT16: 9,
  CUDNN_DATA_BOOLEAN: 11,
  // cudnnBackendDescriptorType_t
  CUDNN_BACKEND_POINTWISE_DESCRIPTOR: 0,
  CUDNN_BACKEND_ENGINE_DESCRIPTOR: 2,
  CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: 3,
  CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: 4,
  CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: 5,
  CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: 13,
  CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: 15,
  CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: 16,
  CUDNN_BACKEND_TENSOR_DESCRIPTOR: 17,
  CUDNN_BACKEND_MATMUL_DESCRIPTOR: 18,
  CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR: 19,
  CUDNN_BACKEND_REDUCTION_DESCRIPTOR: 21,
  CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR: 22,
  CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR: 31,
  // cudnnBackendAttributeType_t
  CUDNN_TYPE_HANDLE: 0,
  CUDNN_TYPE_DATA_TYPE: 1,
  CUDNN_TYPE_BOOLEAN: 2,
  CUDNN_TYPE_INT64: 3,
  CUDNN_TYPE_FLOAT: 4,
  CUDNN_TYPE_VOID_PTR: 6,
  CUDNN_TYPE_HEUR_MODE: 8,
  CUDNN_TYPE_POINTWISE_MODE: 14,
  CUDNN_TYPE_BACKEND_DESCRIPTOR: 15,
  CUDNN_TYPE_REDUCTION_OPERATOR_TYPE: 18,
  // cudnnBackendAttributeName_t
  CUDNN_ATTR_POINTWISE_MODE: 0,
  CUDNN_ATTR_POINTWISE_MATH_PREC: 1,
  CUDNN_ATTR_POINTWISE_AXIS: 9,
  CUDNN_ATTR_ENGINEHEUR_MODE: 200,
  CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH: 201,
  CUDNN_ATTR_ENGINEHEUR_RESULTS: 202,
  CUDNN_ATTR_ENGINECFG_ENGINE: 300,
  CUDNN_ATTR_EXECUTION_PLAN_HANDLE: 400,
  CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG: 401,
  CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE: 402,
  CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR: 750,
  CUDNN_ATTR_OPERATION_POINTWISE_XDESC: 751,
  CUDNN_ATTR_OPERATION_POINTWISE_BDESC: 752,
  CUDNN_ATTR_OPERATION_POINTWISE_YDESC: 753,
  CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1: 754,
  CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2: 755,
  CUDNN_ATTR_OPERATION_POINTWISE_TDESC: 758,
  CUDNN_ATTR_OPERATIONGRAPH_HANDLE: 800,
  CUDNN_ATTR_OPERATIONGRAPH_OPS: 801,
  CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT: 900,
  CUDNN_ATTR_TENSOR_DATA_TYPE: 901,
  CUDNN_ATTR_TENSOR_DIMENSIONS: 902,
  CUDNN_ATTR_TENSOR_STRIDES: 903,
  CUDNN_ATTR_TENSOR_UNIQUE_ID: 906,
  CUDNN_ATTR_TENSOR_IS_VIRTUAL: 907,
  CUDNN_ATTR_TENSOR_IS_BY_VALUE: 908,
  CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS: 1000,
  CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS: 1001,
  CUDNN_ATTR_VARIANT_PACK_WORKSPACE: 1003,
  CUDNN_ATTR_ENGINE_GLOBAL_INDEX: 1301,
  CUDNN_ATTR_MATMUL_COMP_TYPE: 1500,
  CUDNN_ATTR_OPERATION_MATMUL_ADESC: 1520,
  CUDNN_ATTR_OPERATION_MATMUL_BDESC: 1521,
  CUDNN_ATTR_OPERATION_MATMUL_CDESC: 1522,
  CUDNN_ATTR_OPERATION_MATMUL_DESC: 1523,
  CUDNN_ATTR_REDUCTION_OPERATOR: 1600,
  CUDNN_ATTR_REDUCTION_COMP_TYPE: 1601,
  CUDNN_ATTR_OPERATION_REDUCTION_XDESC: 1610,
  CUDNN_ATTR_OPERATION_REDUCTION_YDESC: 1611,
  CUDNN_ATTR_OPERATION_REDUCTION_DESC: 1612,
  CUDNN_ATTR_OPERATION_RESHAPE_XDESC: 2200,
  CUDNN_ATTR_OPERATION_RESHAPE_YDESC: 2201,
  // cudnnPointwiseMode_t
  CUDNN_POINTWISE_ADD: 0,
  CUDNN_POINTWISE_MUL: 1,
  CUDNN_POINTWISE_DIV: 6,
  CUDNN_POINTWISE_SUB: 9,
  CUDNN_POINTWISE_EXP: 13,
  CUDNN_POINTWISE_LOG: 15,
  CUDNN_POINTWISE_IDENTITY: 21,
  CUDNN_POINTWISE_CMP_GE: 303,
  CUDNN_POINTWISE_GEN_INDEX: 501,
  CUDNN_POINTWISE_BINARY_SELECT: 601,
  // cudnnReduceTensorOp_t
  CUDNN_REDUCE_TENSOR_ADD: 0,
  CUDNN_REDUCE_TENSOR_MAX: 3,
  // cudnnBackendHeurMode_t
  CUDNN_HEUR_MODE_FALLBACK: 2,
  CUDNN_HEUR_MODE_A: 3,
} as const);

const C = CUDNN_ABI;

// ---- FFI ---------------------------------------------------------------------------------------------------

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

interface Library {
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

function lib(): Library {
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

function fmtVersion(v: number): string {
  return `${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}`;
}

function fmtCuda(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

function statusName(status: number): string {
  const p = lib().fns.cudnnGetErrorString(status);
  return p ? new CString(p as never).toString() : `cudnnStatus ${status}`;
}

/** cuDNN's last error text (since 9.0; thread-local, cleared by reading). */
function lastError(): string {
  const buf = new Uint8Array(new ArrayBuffer(4096));
  lib().fns.cudnnGetLastErrorString(buf, buf.length);
  const end = buf.indexOf(0);
  return new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end)).trim();
}

function check(status: number, call: string, context?: string): void {
  if (status === C.CUDNN_STATUS_SUCCESS) return;
  const message = lastError(); // first: any later cuDNN call may replace it
  throw new CudnnError(call, status, statusName(status), message, context);
}

// ---- descriptors -------------------------------------------------------------------------------------------

type Desc = number;

const outDesc = new BigUint64Array(new ArrayBuffer(8));
const outCount = new BigInt64Array(new ArrayBuffer(8));
const outI64 = new BigInt64Array(new ArrayBuffer(8));

/** Every descriptor made for one plan, destroyed together (reverse order) when the plan goes. */
class Descriptors {
  readonly all: Desc[] = [];

  create(type: number, what: string): Desc {
    check(lib().fns.cudnnBackendCreateDescriptor(type, outDesc), "cudnnBackendCreateDescriptor", what);
    const d = Number(outDesc[0]);
    this.all.push(d);
    return d;
  }

  /** Destroys one descriptor now (a plan that did not finalize). */
  drop(d: Desc): void {
    const i = this.all.lastIndexOf(d);
    if (i >= 0) this.all.splice(i, 1);
    lib().fns.cudnnBackendDestroyDescriptor(d);
  }

  destroy(): void {
    for (let i = this.all.length - 1; i >= 0; i--) lib().fns.cudnnBackendDestroyDescriptor(this.all[i] as Desc);
    this.all.length = 0;
  }
}

function setAttr(d: Desc, attr: number, type: number, count: number, values: NodeJS.TypedArray, what: string): void {
  check(lib().fns.cudnnBackendSetAttribute(d, attr, type, count, values), "cudnnBackendSetAttribute", `${what}, attribute ${attr}`);
}

const setDescs = (d: Desc, attr: number, descs: readonly Desc[], what: string) =>
  setAttr(
    d,
    attr,
    C.CUDNN_TYPE_BACKEND_DESCRIPTOR,
    descs.length,
    BigUint64Array.from(descs, (x) => BigInt(x)),
    what,
  );
const setInt64 = (d: Desc, attr: number, xs: readonly number[], what: string) =>
  setAttr(
    d,
    attr,
    C.CUDNN_TYPE_INT64,
    xs.length,
    BigInt64Array.from(xs, (x) => BigInt(x)),
    what,
  );
/** C enums are 32-bit ints. */
const setEnum = (d: Desc, attr: number, type: number, value: number, what: string) => setAttr(d, attr, type, 1, Int32Array.of(value), what);
const setFloat = (d: Desc, attr: number, value: number, what: string) =>
  setAttr(d, attr, C.CUDNN_TYPE_FLOAT, 1, Float32Array.of(value), what);
/** C bool: one byte. */
const setBool = (d: Desc, attr: number, value: boolean, what: string) =>
  setAttr(d, attr, C.CUDNN_TYPE_BOOLEAN, 1, Uint8Array.of(value ? 1 : 0), what);
const setHandle = (d: Desc, attr: number, handle: number, what: string) =>
  setAttr(d, attr, C.CUDNN_TYPE_HANDLE, 1, BigUint64Array.of(BigInt(handle)), what);
const setPointers = (d: Desc, attr: number, ptrs: readonly number[], what: string) =>
  setAttr(
    d,
    attr,
    C.CUDNN_TYPE_VOID_PTR,
    ptrs.length,
    BigUint64Array.from(ptrs, (x) => BigInt(x)),
    what,
  );

function finalize(d: Desc, what: string): void {
  check(lib().fns.cudnnBackendFinalize(d), "cudnnBackendFinalize", what);
}

// ---- graphs ------------------------------------------------------------------------------------------------

/** Unique ids of the tensors bound at execution; virtual tensors count up from VIRTUAL_UID. */
const UID = {
  q: 1,
  k: 2,
  v: 3,
  o: 4,
  stats: 5,
  dO: 6,
  dq: 7,
  dk: 8,
  dv: 9,
  delta: 10,
  dqAccum: 11,
  scale: 20,
  negInf: 21,
  sKv: 22,
  sQ: 23,
  one: 24,
} as const;
const VIRTUAL_UID = 1000;

/** Byte offsets of the by-value scalars in a plan's host scalar block (read by cuDNN at execution). */
const SCALAR = { scale: 0, negInf: 4, sKv: 8, sQ: 12, one: 16, bytes: 32 } as const;

interface TensorRef {
  desc: Desc;
  uid: number;
  dims: readonly number[];
  strides: readonly number[];
}

/** Builds one operation graph: tensors, then operations in the order they are added. */
class GraphBuilder {
  readonly ops: Desc[] = [];
  #nextUid = VIRTUAL_UID;

  constructor(readonly d: Descriptors) {}

  tensor(
    uid: number,
    dims: readonly number[],
    strides: readonly number[],
    dtype: number,
    kind: "real" | "virtual" | "by-value",
  ): TensorRef {
    const what = `tensor uid ${uid} dims [${dims.join(", ")}]`;
    const t = this.d.create(C.CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    setEnum(t, C.CUDNN_ATTR_TENSOR_DATA_TYPE, C.CUDNN_TYPE_DATA_TYPE, dtype, what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_DIMENSIONS, dims, what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_STRIDES, strides, what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_UNIQUE_ID, [uid], what);
    setInt64(t, C.CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, [16], what);
    if (kind === "virtual") setBool(t, C.CUDNN_ATTR_TENSOR_IS_VIRTUAL, true, what);
    if (kind === "by-value") setBool(t, C.CUDNN_ATTR_TENSOR_IS_BY_VALUE, true, what);
    finalize(t, what);
    return { desc: t, uid, dims, strides };
  }

  virtual(dims: readonly number[], strides: readonly number[], dtype: number): TensorRef {
    return this.tensor(this.#nextUid++, dims, strides, dtype, "virtual");
  }

  /** A scalar passed by value at execution (shaped [1, 1, 1, 1] to match the 4-d operands). */
  scalar(uid: number, dtype: number): TensorRef {
    return this.tensor(uid, [1, 1, 1, 1], [1, 1, 1, 1], dtype, "by-value");
  }

  /** y = mode(x[, b[, t]]); y defaults to a virtual tensor shaped like x. */
  pointwise(
    name: string,
    mode: number,
    x: TensorRef,
    o: { b?: TensorRef; t?: TensorRef; y?: TensorRef; yType?: number; compute?: number; axis?: number } = {},
  ): TensorRef {
    const y = o.y ?? this.virtual(x.dims, x.strides, o.yType ?? C.CUDNN_DATA_FLOAT);
    const pw = this.d.create(C.CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    setEnum(pw, C.CUDNN_ATTR_POINTWISE_MODE, C.CUDNN_TYPE_POINTWISE_MODE, mode, name);
    setEnum(pw, C.CUDNN_ATTR_POINTWISE_MATH_PREC, C.CUDNN_TYPE_DATA_TYPE, o.compute ?? C.CUDNN_DATA_FLOAT, name);
    if (o.axis !== undefined) setInt64(pw, C.CUDNN_ATTR_POINTWISE_AXIS, [o.axis], name);
    finalize(pw, name);
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, [pw], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_XDESC, [x.desc], name);
    if (o.b) setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_BDESC, [o.b.desc], name);
    if (o.t) setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_TDESC, [o.t.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_POINTWISE_YDESC, [y.desc], name);
    setFloat(op, C.CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, 1, name);
    setFloat(op, C.CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, 1, name);
    finalize(op, name);
    this.ops.push(op);
    return y;
  }

  /** c = a @ b over the last two dims, batched (and broadcast: kv heads over query heads) over the rest. */
  matmul(name: string, a: TensorRef, b: TensorRef, c: TensorRef): TensorRef {
    const mm = this.d.create(C.CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    setEnum(mm, C.CUDNN_ATTR_MATMUL_COMP_TYPE, C.CUDNN_TYPE_DATA_TYPE, C.CUDNN_DATA_FLOAT, name);
    finalize(mm, name);
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_ADESC, [a.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_BDESC, [b.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_CDESC, [c.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_MATMUL_DESC, [mm], name);
    finalize(op, name);
    this.ops.push(op);
    return c;
  }

  /** y = reduce(x) over the dims where y is smaller. */
  reduction(name: string, operator: number, x: TensorRef, y: TensorRef): TensorRef {
    const rd = this.d.create(C.CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    setEnum(rd, C.CUDNN_ATTR_REDUCTION_COMP_TYPE, C.CUDNN_TYPE_DATA_TYPE, C.CUDNN_DATA_FLOAT, name);
    setEnum(rd, C.CUDNN_ATTR_REDUCTION_OPERATOR, C.CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, operator, name);
    finalize(rd, name);
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_REDUCTION_DESC, [rd], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_REDUCTION_XDESC, [x.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_REDUCTION_YDESC, [y.desc], name);
    finalize(op, name);
    this.ops.push(op);
    return y;
  }

  /** y = x seen with other dims/strides (a transpose view; no data moves). */
  reshape(name: string, x: TensorRef, y: TensorRef): TensorRef {
    const op = this.d.create(C.CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_RESHAPE_XDESC, [x.desc], name);
    setDescs(op, C.CUDNN_ATTR_OPERATION_RESHAPE_YDESC, [y.desc], name);
    finalize(op, name);
    this.ops.push(op);
    return y;
  }
}

/** Sizes of one plan (Tq: the query rows cuDNN sees, after any empty causal rows are cut off). */
interface PlanShape {
  Tq: number;
  Tk: number;
  Hq: number;
  Hkv: number;
  D: number;
  causal: boolean;
}

const BF16 = C.CUDNN_DATA_BFLOAT16;
const F32 = C.CUDNN_DATA_FLOAT;

/** q-like [1, Hq, T, D] over our [T, Hq, D]. */
const headsView = (T: number, H: number, D: number) => ({ dims: [1, H, T, D], strides: [T * H * D, D, H * D, 1] });
/** Its transpose [1, H, D, T] (K^T, V^T) over the same memory. */
const headsViewT = (T: number, H: number, D: number) => ({ dims: [1, H, D, T], strides: [T * H * D, D, 1, H * D] });

/** Scores [1, Hq, Tq, Tk], row vectors [1, Hq, Tq, 1] and transposed scores [1, Hq, Tk, Tq] (virtual). */
function scoreLayouts(s: PlanShape) {
  const { Tq, Tk, Hq } = s;
  return {
    score: { dims: [1, Hq, Tq, Tk], strides: [Hq * Tq * Tk, Tq * Tk, Tk, 1] },
    row: { dims: [1, Hq, Tq, 1], strides: [Hq * Tq, Tq, 1, 1] },
    scoreT: { dims: [1, Hq, Tk, Tq], strides: [Hq * Tq * Tk, Tq * Tk, 1, Tk] },
  };
}

/** S with every key j > i + (Tk - Tq) of query row i replaced by -inf. */
function causalMask(g: GraphBuilder, s: TensorRef, shape: PlanShape): TensorRef {
  const I32 = C.CUDNN_DATA_INT32;
  const BOOL = C.CUDNN_DATA_BOOLEAN;
  let row = g.pointwise("row index", C.CUDNN_POINTWISE_GEN_INDEX, s, { axis: 2, yType: I32 });
  const col = g.pointwise("column index", C.CUDNN_POINTWISE_GEN_INDEX, s, { axis: 3, yType: I32 });
  if (shape.Tq !== shape.Tk) {
    const add = { compute: I32, yType: I32 };
    row = g.pointwise("row + Tk", C.CUDNN_POINTWISE_ADD, row, { b: g.scalar(UID.sKv, I32), ...add });
    row = g.pointwise("row + Tk - Tq", C.CUDNN_POINTWISE_SUB, row, { b: g.scalar(UID.sQ, I32), ...add });
  }
  const keep = g.pointwise("row >= column", C.CUDNN_POINTWISE_CMP_GE, row, { b: col, compute: BOOL, yType: BOOL });
  return g.pointwise("causal select", C.CUDNN_POINTWISE_BINARY_SELECT, s, { b: g.scalar(UID.negInf, F32), t: keep });
}

/** Forward graph; returns the uids bound at execution. */
function buildForward(g: GraphBuilder, shape: PlanShape): number[] {
  const { Tq, Tk, Hq, Hkv, D } = shape;
  const L = scoreLayouts(shape);
  const qv = headsView(Tq, Hq, D);
  const q = g.tensor(UID.q, qv.dims, qv.strides, BF16, "real");
  const kt = headsViewT(Tk, Hkv, D);
  const kT = g.tensor(UID.k, kt.dims, kt.strides, BF16, "real");
  const vv = headsView(Tk, Hkv, D);
  const v = g.tensor(UID.v, vv.dims, vv.strides, BF16, "real");
  const o = g.tensor(UID.o, qv.dims, qv.strides, BF16, "real");
  const stats = g.tensor(UID.stats, L.row.dims, L.row.strides, F32, "real");
  const scale = g.scalar(UID.scale, F32);

  let s = g.matmul("S = Q K^T", q, kT, g.virtual(L.score.dims, L.score.strides, F32));
  s = g.pointwise("S * scale", C.CUDNN_POINTWISE_MUL, s, { b: scale });
  if (shape.causal) s = causalMask(g, s, shape);
  const m = g.reduction("M = rowmax S", C.CUDNN_REDUCE_TENSOR_MAX, s, g.virtual(L.row.dims, L.row.strides, F32));
  const centred = g.pointwise("S - M", C.CUDNN_POINTWISE_SUB, s, { b: m });
  const e = g.pointwise("E = exp(S - M)", C.CUDNN_POINTWISE_EXP, centred);
  const z = g.reduction("Z = rowsum E", C.CUDNN_REDUCE_TENSOR_ADD, e, g.virtual(L.row.dims, L.row.strides, F32));
  const logZ = g.pointwise("log Z", C.CUDNN_POINTWISE_LOG, z);
  g.pointwise("Stats = M + log Z", C.CUDNN_POINTWISE_ADD, m, { b: logZ, y: stats });
  const p = g.pointwise("P = E / Z", C.CUDNN_POINTWISE_DIV, e, { b: z, y: g.virtual(L.score.dims, L.score.strides, BF16) });
  g.matmul("O = P V", p, v, o);
  const uids: number[] = [UID.q, UID.k, UID.v, UID.o, UID.stats, UID.scale];
  if (shape.causal) uids.push(UID.negInf, ...(Tq !== Tk ? [UID.sKv, UID.sQ] : []));
  return uids;
}

/** Backward graph; returns the uids bound at execution. */
function buildBackward(g: GraphBuilder, shape: PlanShape): number[] {
  const { Tq, Tk, Hq, Hkv, D } = shape;
  const L = scoreLayouts(shape);
  const qv = headsView(Tq, Hq, D);
  const kvv = headsView(Tk, Hkv, D);
  const kvt = headsViewT(Tk, Hkv, D);
  const q = g.tensor(UID.q, qv.dims, qv.strides, BF16, "real");
  const kT = g.tensor(UID.k, kvt.dims, kvt.strides, BF16, "real");
  const vT = g.tensor(UID.v, kvt.dims, kvt.strides, BF16, "real");
  const o = g.tensor(UID.o, qv.dims, qv.strides, BF16, "real");
  const dO = g.tensor(UID.dO, qv.dims, qv.strides, BF16, "real");
  const stats = g.tensor(UID.stats, L.row.dims, L.row.strides, F32, "real");
  const dq = g.tensor(UID.dq, qv.dims, qv.strides, BF16, "real");
  const dk = g.tensor(UID.dk, kvv.dims, kvv.strides, BF16, "real");
  const dv = g.tensor(UID.dv, kvv.dims, kvv.strides, BF16, "real");
  // Our scratch: Delta [1, Hq, Tq, 1] and the f32 dq accumulator [1, Hq, Tq, D] (head-major).
  const delta = g.tensor(UID.delta, L.row.dims, L.row.strides, F32, "real");
  const dqAccum = g.tensor(UID.dqAccum, [1, Hq, Tq, D], [Hq * Tq * D, Tq * D, D, 1], F32, "real");
  const scale = g.scalar(UID.scale, F32);
  const one = g.scalar(UID.one, F32);
  const gqa = Hq !== Hkv;
  const perQueryHead = { dims: [1, Hq, Tk, D], strides: [Hq * Tk * D, Tk * D, D, 1] };

  // Delta = rowsum(dO * O): the product laid out [b, h, s, d] with strides of a [s, h, d] tensor.
  const dOo = g.pointwise("dO * O", C.CUDNN_POINTWISE_MUL, dO, {
    b: o,
    y: g.virtual([1, Hq, Tq, D], [Hq * Tq * D, Tq * D, Hq * D, 1], F32),
  });
  const rowsum = g.reduction("rowsum(dO * O)", C.CUDNN_REDUCE_TENSOR_ADD, dOo, g.virtual(L.row.dims, L.row.strides, F32));
  g.pointwise("Delta = rowsum * 1", C.CUDNN_POINTWISE_MUL, rowsum, { b: one, y: delta });

  // P = exp(S * scale - Stats), masked
  let s = g.matmul("S = Q K^T", q, kT, g.virtual(L.score.dims, L.score.strides, F32));
  s = g.pointwise("S * scale", C.CUDNN_POINTWISE_MUL, s, { b: scale });
  s = g.pointwise("S - Stats", C.CUDNN_POINTWISE_SUB, s, { b: stats });
  if (shape.causal) s = causalMask(g, s, shape);
  const p = g.pointwise("P = exp", C.CUDNN_POINTWISE_EXP, s);

  // dV = P^T dO (per query head, then summed onto kv heads for GQA)
  const pT = g.reshape("P^T", p, g.virtual(L.scoreT.dims, L.scoreT.strides, BF16));
  if (!gqa) g.matmul("dV = P^T dO", pT, dO, dv);
  else {
    const full = g.matmul("dV per query head", pT, dO, g.virtual(perQueryHead.dims, perQueryHead.strides, BF16));
    g.reduction("dV = sum over the group", C.CUDNN_REDUCE_TENSOR_ADD, full, dv);
  }

  // dS = (dO V^T - Delta) * P * scale
  let ds = g.matmul("dP = dO V^T", dO, vT, g.virtual(L.score.dims, L.score.strides, F32));
  ds = g.pointwise("dP - Delta", C.CUDNN_POINTWISE_SUB, ds, { b: delta });
  ds = g.pointwise("* P", C.CUDNN_POINTWISE_MUL, ds, { b: p });
  ds = g.pointwise("dS = * scale", C.CUDNN_POINTWISE_MUL, ds, { b: scale });

  // dK = dS^T Q
  const dsT = g.reshape("dS^T", ds, g.virtual(L.scoreT.dims, L.scoreT.strides, BF16));
  if (!gqa) g.matmul("dK = dS^T Q", dsT, q, dk);
  else {
    const full = g.matmul("dK per query head", dsT, q, g.virtual(perQueryHead.dims, perQueryHead.strides, BF16));
    g.reduction("dK = sum over the group", C.CUDNN_REDUCE_TENSOR_ADD, full, dk);
  }

  // dQ = dS K, accumulated in f32, then written in bf16
  const k = g.reshape("K = (K^T)^T", kT, g.virtual(kvv.dims, kvv.strides, F32));
  g.matmul("dQacc = dS K", ds, k, dqAccum);
  g.pointwise("dQ = dQacc", C.CUDNN_POINTWISE_IDENTITY, dqAccum, { y: dq });

  const uids: number[] = [
    UID.q,
    UID.k,
    UID.v,
    UID.o,
    UID.dO,
    UID.stats,
    UID.dq,
    UID.dk,
    UID.dv,
    UID.delta,
    UID.dqAccum,
    UID.scale,
    UID.one,
  ];
  if (shape.causal) uids.push(UID.negInf, ...(Tq !== Tk ? [UID.sKv, UID.sQ] : []));
  return uids;
}

// ---- plans -------------------------------------------------------------------------------------------------

type Pass = "forward" | "backward";

interface Plan {
  key: string;
  pass: Pass;
  shape: PlanShape;
  device: number;
  exec: Desc;
  workspaceBytes: number;
  /** cuDNN's global index of the engine the heuristics chose (-1 if it could not be read). */
  engine: number;
  buildMs: number;
  uids: number[];
  /** Host memory of the by-value scalars: an explicit ArrayBuffer, so its address is stable. */
  scalars: ArrayBuffer;
  descs: Descriptors;
}

/** What the plan cache holds (for logs and benchmarks). */
export interface CudnnPlanInfo {
  key: string;
  pass: Pass;
  engine: number;
  workspaceBytes: number;
  buildMs: number;
}

const plans = new Map<string, Plan>();
const handles = new Map<number, number>();

function handleFor(device: number): number {
  const h = handles.get(device);
  if (h !== undefined) return h;
  setDevice(device);
  const major = deviceAttribute(DeviceAttr.computeCapabilityMajor, device);
  const minor = deviceAttribute(DeviceAttr.computeCapabilityMinor, device);
  if (major < 8) throw new Error(`cuda:${device} has compute capability ${major}.${minor}; cuDNN's fused attention needs 8.0 or newer`);
  check(lib().fns.cudnnCreate(outDesc), "cudnnCreate", `cuda:${device}`);
  const handle = Number(outDesc[0]);
  handles.set(device, handle);
  return handle;
}

function getAttrInt64(d: Desc, attr: number, what: string): number {
  check(lib().fns.cudnnBackendGetAttribute(d, attr, C.CUDNN_TYPE_INT64, 1, outCount, outI64), "cudnnBackendGetAttribute", what);
  return Number(outI64[0]);
}

function engineIndex(descs: Descriptors, cfg: Desc): number {
  try {
    const engine = descs.create(C.CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine query");
    const arr = BigUint64Array.of(BigInt(engine));
    check(
      lib().fns.cudnnBackendGetAttribute(cfg, C.CUDNN_ATTR_ENGINECFG_ENGINE, C.CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, outCount, arr),
      "cudnnBackendGetAttribute(ENGINECFG_ENGINE)",
    );
    return getAttrInt64(engine, C.CUDNN_ATTR_ENGINE_GLOBAL_INDEX, "ENGINE_GLOBAL_INDEX");
  } catch {
    return -1;
  }
}

/** Heuristics (mode A, then fallback) and the first engine configuration whose plan finalizes. */
function makeExecutionPlan(
  descs: Descriptors,
  handle: number,
  graph: Desc,
  what: string,
): { exec: Desc; engine: number; workspaceBytes: number } {
  const fns = lib().fns;
  const tried: string[] = [];
  let lastStatus: number = C.CUDNN_STATUS_SUCCESS;
  for (const [modeName, mode] of [
    ["A", C.CUDNN_HEUR_MODE_A],
    ["FALLBACK", C.CUDNN_HEUR_MODE_FALLBACK],
  ] as const) {
    const heur = descs.create(C.CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics");
    setDescs(heur, C.CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, [graph], "engine heuristics");
    setEnum(heur, C.CUDNN_ATTR_ENGINEHEUR_MODE, C.CUDNN_TYPE_HEUR_MODE, mode, "engine heuristics");
    let status = fns.cudnnBackendFinalize(heur);
    if (status !== C.CUDNN_STATUS_SUCCESS) {
      lastStatus = status;
      const message = lastError();
      tried.push(`heuristics mode ${modeName}: ${statusName(status)}: ${message}`);
      continue;
    }
    status = fns.cudnnBackendGetAttribute(heur, C.CUDNN_ATTR_ENGINEHEUR_RESULTS, C.CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, outCount, null);
    check(status, "cudnnBackendGetAttribute(ENGINEHEUR_RESULTS count)", what);
    const count = Number(outCount[0]);
    if (count === 0) {
      tried.push(`heuristics mode ${modeName}: no engine configuration (${lastError() || "cuDNN gave no reason"})`);
      continue;
    }
    const cfgs = Array.from({ length: count }, () => descs.create(C.CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine configuration"));
    const arr = BigUint64Array.from(cfgs, (x) => BigInt(x));
    status = fns.cudnnBackendGetAttribute(heur, C.CUDNN_ATTR_ENGINEHEUR_RESULTS, C.CUDNN_TYPE_BACKEND_DESCRIPTOR, count, outCount, arr);
    check(status, "cudnnBackendGetAttribute(ENGINEHEUR_RESULTS)", what);
    const returned = Number(outCount[0]);
    for (let i = 0; i < returned; i++) {
      const cfg = cfgs[i] as Desc;
      const exec = descs.create(C.CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
      setHandle(exec, C.CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle, "execution plan");
      setDescs(exec, C.CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, [cfg], "execution plan");
      status = fns.cudnnBackendFinalize(exec);
      if (status === C.CUDNN_STATUS_SUCCESS) {
        const workspaceBytes = getAttrInt64(exec, C.CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, "EXECUTION_PLAN_WORKSPACE_SIZE");
        return { exec, engine: engineIndex(descs, cfg), workspaceBytes };
      }
      lastStatus = status;
      const message = lastError();
      tried.push(`mode ${modeName} config ${i} (engine ${engineIndex(descs, cfg)}): ${statusName(status)}: ${message}`);
      descs.drop(exec);
    }
  }
  throw new CudnnError(
    "cudnnBackendFinalize(EXECUTION_PLAN)",
    lastStatus,
    lastStatus === C.CUDNN_STATUS_SUCCESS ? "no engine" : statusName(lastStatus),
    `no engine configuration finalized for this graph:\n  ${tried.join("\n  ")}`,
    what,
  );
}

function planKey(device: number, pass: Pass, s: PlanShape): string {
  return `cuda:${device} ${pass} Tq=${s.Tq} Tk=${s.Tk} Hq=${s.Hq} Hkv=${s.Hkv} D=${s.D} causal=${s.causal}`;
}

function getPlan(device: number, pass: Pass, shape: PlanShape): Plan {
  const key = planKey(device, pass, shape);
  const hit = plans.get(key);
  if (hit) return hit;
  const started = performance.now();
  const handle = handleFor(device);
  const descs = new Descriptors();
  try {
    const g = new GraphBuilder(descs);
    const uids = pass === "forward" ? buildForward(g, shape) : buildBackward(g, shape);
    const graph = descs.create(C.CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    setHandle(graph, C.CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle, "operation graph");
    setDescs(graph, C.CUDNN_ATTR_OPERATIONGRAPH_OPS, g.ops, "operation graph");
    finalize(graph, `${pass} operation graph (${g.ops.length} operations) for ${key}`);
    const { exec, engine, workspaceBytes } = makeExecutionPlan(descs, handle, graph, key);
    const scalars = new ArrayBuffer(SCALAR.bytes);
    const view = new DataView(scalars);
    // cuDNN before 9.10 wants the most negative float rather than -inf for masked scores (cudnn-frontend).
    view.setFloat32(SCALAR.negInf, lib().version < 91000 ? -3.4028234663852886e38 : Number.NEGATIVE_INFINITY, true);
    view.setInt32(SCALAR.sKv, shape.Tk, true);
    view.setInt32(SCALAR.sQ, shape.Tq, true);
    view.setFloat32(SCALAR.one, 1, true);
    const plan: Plan = {
      key,
      pass,
      shape,
      device,
      exec,
      workspaceBytes,
      engine,
      buildMs: performance.now() - started,
      uids,
      scalars,
      descs,
    };
    plans.set(key, plan);
    return plan;
  } catch (e) {
    descs.destroy();
    throw e;
  }
}

/** The plans built so far. */
export function cudnnPlans(): CudnnPlanInfo[] {
  return [...plans.values()].map((p) => ({
    key: p.key,
    pass: p.pass,
    engine: p.engine,
    workspaceBytes: p.workspaceBytes,
    buildMs: p.buildMs,
  }));
}

/** Destroys every cached plan (after the device has finished with them). */
export function clearCudnnPlans(): void {
  for (const p of plans.values()) p.descs.destroy();
  plans.clear();
}

/** Binds the tensors of `plan` (uid -> device address, scalars from the plan's host block) and runs it on `stream`. */
function execute(plan: Plan, stream: Stream, bound: Partial<Record<keyof typeof UID, number>>, workspace: number, scale: number): void {
  const fns = lib().fns;
  const handle = handleFor(plan.device);
  new DataView(plan.scalars).setFloat32(SCALAR.scale, scale, true);
  const host = ptr(new Uint8Array(plan.scalars));
  const scalarAt: Record<number, number> = {
    [UID.scale]: host + SCALAR.scale,
    [UID.negInf]: host + SCALAR.negInf,
    [UID.sKv]: host + SCALAR.sKv,
    [UID.sQ]: host + SCALAR.sQ,
    [UID.one]: host + SCALAR.one,
  };
  const byUid = new Map<number, number>();
  for (const [name, addr] of Object.entries(bound)) byUid.set(UID[name as keyof typeof UID], addr as number);
  const ptrs = plan.uids.map((uid) => {
    const p = scalarAt[uid] ?? byUid.get(uid);
    if (p === undefined) throw new Error(`cudnn: internal error: no address bound for tensor uid ${uid} of ${plan.key}`);
    return p;
  });
  const what = `variant pack of ${plan.key}`;
  const descs = new Descriptors();
  try {
    const pack = descs.create(C.CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, what);
    setInt64(pack, C.CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, plan.uids, what);
    setPointers(pack, C.CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, ptrs, what);
    setPointers(pack, C.CUDNN_ATTR_VARIANT_PACK_WORKSPACE, [workspace], what);
    finalize(pack, what);
    check(fns.cudnnSetStream(handle, stream.handle), "cudnnSetStream");
    check(fns.cudnnBackendExecute(handle, plan.exec, pack), "cudnnBackendExecute", plan.key);
  } finally {
    descs.destroy(); // the launch has read the pack; the scalar block lives as long as the plan
  }
}

// ---- argument checks ---------------------------------------------------------------------------------------

/** What cuDNN can take beyond the contract's checks: refuses loudly, launches nothing. Returns the device. */
function requireSupported(who: string, c: CheckedCall, tensors: Record<string, Tensor>): number {
  let device = -1;
  for (const [name, t] of Object.entries(tensors)) {
    if (t.device.kind !== "cuda")
      fail(who, `${name}: the cuDNN backend needs tensors on a cuda device, got ${t.describe()} (use the reference backend on the cpu)`);
    if (device < 0) device = t.device.index;
    else if (t.device.index !== device)
      fail(who, `${name}: expected device cuda:${device} (as the other inputs), got ${deviceName(t.device)}`);
    if (t.numel > 0 && t.ptr(name) % 16 !== 0) {
      fail(
        who,
        `${name}: cuDNN's tensors are declared 16-byte aligned, got an address 16n + ${t.ptr(name) % 16}; a narrow() view must start on a whole row`,
      );
    }
  }
  if (c.dtype !== "bf16")
    fail(
      who,
      `q: the cuDNN backend takes bf16 q, k, v (its fused attention runs on bf16 tensor cores), got ${c.dtype}: cast to bf16 or use the reference backend`,
    );
  if (!FAST_HEAD_DIMS.includes(c.D))
    fail(who, `q: head dim D = ${c.D} is not supported by the cuDNN backend (D in ${FAST_HEAD_DIMS.join(", ")})`);
  if (!(c.scale > 0)) fail(who, `opts.scale: the cuDNN backend is validated for scale > 0 only, got ${c.scale}`);
  let L: Library;
  try {
    L = lib();
    handleFor(device);
  } catch (e) {
    return fail(who, `cuDNN is not available: ${(e as Error).message}`);
  }
  const v = L.version;
  if (v === 91000 || v === 91001)
    fail(who, `cuDNN ${fmtVersion(v)} has known SDPA forward bugs (cudnn-frontend refuses it too): install 9.10.2 or newer`);
  if (c.causal && c.Tq < c.Tk && v < 90600 && (c.Tq % 64 !== 0 || c.Tk % 64 !== 0)) {
    fail(
      who,
      `causal attention with Tq (${c.Tq}) < Tk (${c.Tk}) needs the bottom-right mask, which cuDNN ${fmtVersion(v)} supports only for Tq and Tk multiples of 64 (9.6.0 lifts this)`,
    );
  }
  return device;
}

/** cuDNN's reason for the alignment, in checkOut's messages. */
const CUDNN_ALIGN = "cuDNN's tensors are declared 16-byte aligned";

/** checkOut (gpu-args.ts) with cuDNN's reason for the alignment. */
function checkOut(who: string, t: Tensor, name: string, dtypes: readonly string[], shape: readonly number[], device: number): void {
  checkOutput(who, t, name, dtypes, shape, device, 16, CUDNN_ALIGN);
}

const dims = (c: CheckedCall) => `Tq=${c.Tq} Tk=${c.Tk} Hq=${c.Hq} Hkv=${c.Hkv} D=${c.D} causal=${c.causal} scale=${c.scale}`;

// ---- lse column copies (the causal Tq > Tk case) -----------------------------------------------------------

let memcpy2d: Bound<{ cudaMemcpy2DAsync: { args: ["ptr", "u64", "ptr", "u64", "u64", "u64", "i32", "ptr"]; returns: "i32" } }> | null =
  null;

/** rows x (width bytes) from src (pitch srcPitch) to dst (pitch dstPitch), ordered on `stream`. */
function copy2d(dst: number, dstPitch: number, src: number, srcPitch: number, width: number, rows: number, stream: Stream): void {
  if (width === 0 || rows === 0) return;
  if (memcpy2d === null) {
    cudart();
    const path = cudartPath();
    if (path === null) throw new Error("cudnn: the CUDA runtime is not loaded");
    memcpy2d = bind(path, {
      cudaMemcpy2DAsync: { args: ["ptr", "u64", "ptr", "u64", "u64", "u64", "i32", "ptr"], returns: "i32" },
    } as const);
  }
  checkCuda(
    memcpy2d.cudaMemcpy2DAsync(dst, dstPitch, src, srcPitch, width, rows, MemcpyKind.deviceToDevice, stream.handle),
    "cudaMemcpy2DAsync",
    `${rows} rows of ${width} bytes`,
  );
}

// ---- forward -----------------------------------------------------------------------------------------------

function runForward(who: string, c: CheckedCall, device: number, s: Stream, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor): void {
  if (c.Tq === 0) return;
  if (c.Tk === 0) {
    fill(o, 0, s);
    fill(lse, Number.NEGATIVE_INFINITY, s);
    return;
  }
  // Causal Tq > Tk: the first Tq - Tk rows see no key (top of this file).
  const skip = c.causal ? Math.max(0, c.Tq - c.Tk) : 0;
  const rows = c.Tq - skip;
  const temps: Tensor[] = [];
  const keep = <T extends Tensor>(t: T): T => {
    temps.push(t);
    return t;
  };
  try {
    let qRows = q;
    let oRows = o;
    let lseRows = lse;
    if (skip > 0) {
      fill(keep(o.narrow(0, skip)), 0, s);
      fill(lse, Number.NEGATIVE_INFINITY, s);
      qRows = keep(q.narrow(skip, rows));
      oRows = keep(o.narrow(skip, rows));
      lseRows = keep(empty([c.Hq, rows], { dtype: "f32", device: q.device, stream: s }));
    }
    const oBf16 = oRows.dtype === "bf16" ? oRows : keep(empty([rows, c.Hq, c.D], { dtype: "bf16", device: q.device, stream: s }));
    const plan = getPlan(device, "forward", { Tq: rows, Tk: c.Tk, Hq: c.Hq, Hkv: c.Hkv, D: c.D, causal: c.causal });
    const ws =
      plan.workspaceBytes > 0 ? keep(empty([Math.ceil(plan.workspaceBytes / 4)], { dtype: "f32", device: q.device, stream: s })) : null;
    try {
      execute(plan, s, { q: qRows.ptr(), k: k.ptr(), v: v.ptr(), o: oBf16.ptr(), stats: lseRows.ptr() }, ws ? ws.ptr() : 0, c.scale);
    } catch (e) {
      if (e instanceof CudnnError) throw new CudnnError(e.call, e.status, e.statusName, e.libraryMessage, `${who}: ${dims(c)}`);
      throw e;
    }
    if (oBf16 !== oRows) keep(cast(oBf16, "f32", { out: oRows, stream: s }));
    if (lseRows !== lse) copy2d(lse.ptr() + skip * 4, c.Tq * 4, lseRows.ptr(), rows * 4, rows * 4, c.Hq, s);
  } finally {
    for (const t of temps) t.dispose(); // stream-ordered frees, after the work that uses them
  }
}

/**
 * o, lse <- attention(q, k, v) into preallocated outputs: o [Tq, Hq, D] bf16 (or f32: the bf16 result
 * widened), lse [Hq, Tq] f32. Enqueued on opts.stream (default: the device's current stream).
 */
export function cudnnForwardInto(q: Tensor, k: Tensor, v: Tensor, out: AttentionOutput, opts: AttentionOptions): void {
  const who = "cudnn.forwardInto";
  const c = checkForwardArgs(who, q, k, v, opts);
  const device = requireSupported(who, c, { q, k, v });
  checkOut(who, out.o, "out.o", ["bf16", "f32"], q.shape, device);
  checkOut(who, out.lse, "out.lse", ["f32"], [c.Hq, c.Tq], device);
  runForward(who, c, device, streamFor(device, opts.stream), q, k, v, out.o, out.lse);
}

// ---- backward ----------------------------------------------------------------------------------------------

const align256 = (n: number) => Math.ceil(n / 256) * 256;

function runBackward(
  who: string,
  c: CheckedCall,
  device: number,
  s: Stream,
  t: { q: Tensor; k: Tensor; v: Tensor; o: Tensor; lse: Tensor; dO: Tensor },
  g: AttentionGrads,
): void {
  if (c.Tq === 0 || c.Tk === 0) {
    for (const x of [g.dq, g.dk, g.dv]) fill(x, 0, s);
    return;
  }
  const skip = c.causal ? Math.max(0, c.Tq - c.Tk) : 0;
  const rows = c.Tq - skip;
  const temps: Tensor[] = [];
  const keep = <T extends Tensor>(x: T): T => {
    temps.push(x);
    return x;
  };
  try {
    const view = (x: Tensor) => (skip > 0 ? keep(x.narrow(skip, rows)) : x);
    let lseRows = t.lse;
    if (skip > 0) {
      fill(keep(g.dq.narrow(0, skip)), 0, s);
      lseRows = keep(empty([c.Hq, rows], { dtype: "f32", device: t.q.device, stream: s }));
      copy2d(lseRows.ptr(), rows * 4, t.lse.ptr() + skip * 4, c.Tq * 4, rows * 4, c.Hq, s);
    }
    const plan = getPlan(device, "backward", { Tq: rows, Tk: c.Tk, Hq: c.Hq, Hkv: c.Hkv, D: c.D, causal: c.causal });
    // One scratch allocation: [plan workspace | Delta f32 Hq*rows | dQacc f32 Hq*rows*D], 256-byte aligned parts.
    const deltaAt = align256(plan.workspaceBytes);
    const dqAccAt = deltaAt + align256(c.Hq * rows * 4);
    const dqAccBytes = c.Hq * rows * c.D * 4;
    const scratch = keep(empty([(dqAccAt + dqAccBytes) / 4], { dtype: "f32", device: t.q.device, stream: s }));
    const base = scratch.ptr();
    // Before 9.6 the engine expects a zeroed dQ accumulator (cudnn-frontend memsets it); later ones zero it themselves.
    if (lib().version < 90600) memsetAsync(base + dqAccAt, 0, dqAccBytes, s);
    try {
      execute(
        plan,
        s,
        {
          q: view(t.q).ptr(),
          k: t.k.ptr(),
          v: t.v.ptr(),
          o: view(t.o).ptr(),
          dO: view(t.dO).ptr(),
          stats: lseRows.ptr(),
          dq: view(g.dq).ptr(),
          dk: g.dk.ptr(),
          dv: g.dv.ptr(),
          delta: base + deltaAt,
          dqAccum: base + dqAccAt,
        },
        plan.workspaceBytes > 0 ? base : 0,
        c.scale,
      );
    } catch (e) {
      if (e instanceof CudnnError) throw new CudnnError(e.call, e.status, e.statusName, e.libraryMessage, `${who}: ${dims(c)}`);
      throw e;
    }
  } finally {
    for (const x of temps) x.dispose();
  }
}

/**
 * dq [Tq,Hq,D], dk, dv [Tk,Hkv,D] (bf16, overwritten) <- the gradient of this block, given the FINAL
 * (merged) o and lse of the query rows (block.ts). Enqueued on opts.stream.
 */
export function cudnnBackwardInto(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  dO: Tensor,
  grads: AttentionGrads,
  opts: AttentionOptions,
): void {
  const who = "cudnn.backwardInto";
  const c = checkBackwardArgs(who, q, k, v, o, lse, dO, opts);
  const device = requireSupported(who, c, { q, k, v, o, dO });
  checkOut(who, lse, "lse", ["f32"], [c.Hq, c.Tq], device);
  checkGrads(who, grads, "bf16", { q, k, v }, device, CUDNN_ALIGN);
  runBackward(who, c, device, streamFor(device, opts.stream), { q, k, v, o, lse, dO }, grads);
}

// ---- the backend -------------------------------------------------------------------------------------------

let availability: { ok: boolean; reason: string } | null = null;

/**
 * Whether the cuDNN backend can run here (on cuda:0), and why not: no GPU, no cuDNN, a cuDNN that is not
 * 9.x or not built for this CUDA major version, or a GPU older than compute capability 8.0. Never throws.
 */
export function cudnnAvailable(): { ok: boolean; reason: string } {
  if (availability) return availability;
  const gpus = probeGpus();
  if (gpus.count === 0) return (availability = { ok: false, reason: `no CUDA device: ${gpus.reason}` });
  try {
    const L = lib();
    handleFor(0);
    const missing = L.notPreloaded.length ? `; not preloaded: ${L.notPreloaded.join("; ")}` : "";
    availability = {
      ok: true,
      reason: `cuDNN ${fmtVersion(L.version)} (built for CUDA ${fmtCuda(L.cudaVersion)}) at ${L.path}; preloaded ${L.preloaded.length} libraries${missing}`,
    };
  } catch (e) {
    availability = { ok: false, reason: (e as Error).message };
  }
  return availability;
}

export const cudnnBackend: AttentionBackend = {
  name: "cudnn",

  forward(q: Tensor, k: Tensor, v: Tensor, opts: ForwardOptions): AttentionOutput {
    const who = "cudnn.forward";
    const c = checkForwardArgs(who, q, k, v, opts);
    const device = requireSupported(who, c, { q, k, v });
    const s = streamFor(device, opts.stream);
    const o = empty(q.shape, { dtype: c.outDtype, device: q.device, stream: s });
    const lse = empty([c.Hq, c.Tq], { dtype: "f32", device: q.device, stream: s });
    try {
      runForward(who, c, device, s, q, k, v, o, lse);
    } catch (e) {
      o.dispose();
      lse.dispose();
      throw e;
    }
    return { o, lse };
  },

  backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dO: Tensor, opts: BackwardOptions): AttentionGrads {
    const who = "cudnn.backward";
    const c = checkBackwardArgs(who, q, k, v, o, lse, dO, opts);
    const device = requireSupported(who, c, { q, k, v, o, dO });
    checkOut(who, lse, "lse", ["f32"], [c.Hq, c.Tq], device);
    const s = streamFor(device, opts.stream);
    const p = { dtype: "bf16" as const, device: q.device, stream: s };
    const grads: AttentionGrads = { dq: empty(q.shape, p), dk: empty(k.shape, p), dv: empty(v.shape, p) };
    const acc = opts.accumulate;
    try {
      runBackward(who, c, device, s, { q, k, v, o, lse, dO }, grads);
      if (acc === undefined) return grads;
      // f32 accumulation: widen this block's bf16 gradient and add it (cost: top of this file).
      for (const name of ["dq", "dk", "dv"] as const) {
        using wide = cast(grads[name], "f32", { stream: s });
        axpy(1, wide, acc[name], { stream: s });
      }
      for (const t of Object.values(grads)) t.dispose();
      return acc;
    } catch (e) {
      for (const t of Object.values(grads)) t.dispose();
      throw e;
    }
  },
};
