// cuBLASLt matmul through bun:ffi. Row-major operands are handed to the column-major library by
// computing C^T = op(B)^T op(A)^T: the stored row-major B is the library's A and vice versa, so no
// data moves. Descriptors and the heuristic's algorithm are made once per problem and cached.

import { CString } from "bun:ffi";
import { CublasError, LibraryNotFoundError } from "./errors.ts";
import { type Bound, bind } from "./ffi.ts";
import { CUBLASLT, locateLibrary } from "./locate.ts";
import { DeviceAllocator, type Stream, setDevice } from "./runtime.ts";

const cublasLtSymbols = {
  cublasLtGetVersion: { args: [], returns: "u64" },
  cublasLtGetStatusString: { args: ["i32"], returns: "ptr" },
  cublasLtCreate: { args: ["ptr"], returns: "i32" },
  cublasLtDestroy: { args: ["ptr"], returns: "i32" },
  cublasLtMatmulDescCreate: { args: ["ptr", "i32", "i32"], returns: "i32" },
  cublasLtMatmulDescDestroy: { args: ["ptr"], returns: "i32" },
  cublasLtMatmulDescSetAttribute: { args: ["ptr", "i32", "ptr", "u64"], returns: "i32" },
  cublasLtMatrixLayoutCreate: { args: ["ptr", "i32", "u64", "u64", "i64"], returns: "i32" },
  cublasLtMatrixLayoutDestroy: { args: ["ptr"], returns: "i32" },
  cublasLtMatrixLayoutSetAttribute: { args: ["ptr", "i32", "ptr", "u64"], returns: "i32" },
  cublasLtMatmulPreferenceCreate: { args: ["ptr"], returns: "i32" },
  cublasLtMatmulPreferenceDestroy: { args: ["ptr"], returns: "i32" },
  cublasLtMatmulPreferenceSetAttribute: { args: ["ptr", "i32", "ptr", "u64"], returns: "i32" },
  cublasLtMatmulAlgoGetHeuristic: { args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "i32", "ptr", "ptr"], returns: "i32" },
  cublasLtMatmul: {
    args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "u64", "ptr"],
    returns: "i32",
  },
} as const;

type CublasLt = Bound<typeof cublasLtSymbols>;

/** Enum values from cublasLt.h / library_types.h (checked against the headers on the GPU machine). */
export const CUDA_R_32F = 0;
export const CUDA_R_16BF = 14;
export const CUBLAS_COMPUTE_32F = 68;
export const CUBLAS_COMPUTE_32F_FAST_TF32 = 77;
const DESC_TRANSA = 3;
const DESC_TRANSB = 4;
const LAYOUT_BATCH_COUNT = 5;
const LAYOUT_STRIDED_BATCH_OFFSET = 6;
const PREF_MAX_WORKSPACE_BYTES = 1;
/** sizeof(cublasLtMatmulHeuristicResult_t): algo (8 x u64), size_t workspaceSize, status, float waves, int[4]. */
const HEURISTIC_RESULT_BYTES = 96;

const WORKSPACE_BYTES = 32 * 1024 * 1024;

let lib: { symbols: CublasLt; path: string } | null = null;

export function cublasLt(): CublasLt {
  if (lib) return lib.symbols;
  const found = locateLibrary(CUBLASLT);
  if (found.path === null) {
    throw new LibraryNotFoundError(
      CUBLASLT.name,
      found.tried,
      "Install `pip install nvidia-cublas` or the CUDA toolkit, or set LIGHTSEQ_CUBLASLT_SO.",
    );
  }
  lib = { symbols: bind(found.path, cublasLtSymbols), path: found.path };
  return lib.symbols;
}

export function cublasLtVersion(): number {
  return Number(cublasLt().cublasLtGetVersion());
}

function checkLt(status: number, call: string, context?: string): void {
  if (status === 0) return;
  const p = cublasLt().cublasLtGetStatusString(status);
  throw new CublasError(call, status, p ? new CString(p as never).toString() : "unknown status", context);
}

export type MatmulDType = "f32" | "bf16";

/** One row-major problem: out[b] = alpha * op(A[b]) @ op(B[b]) + beta * out[b], op(A) [m,k], op(B) [k,n]. */
export interface MatmulProblem {
  /** The operands' dtype. */
  dtype: MatmulDType;
  /** C and D (the output): the operands' dtype (default) or f32 for bf16 operands (f32 accumulator stored as is). */
  outDtype?: MatmulDType;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  batch: number;
  /** Elements between batch entries; 0 shares one matrix across the batch. */
  strideA: number;
  strideB: number;
  /** TF32 tensor cores for f32 operands (about 1e-3 relative error instead of 1e-6). */
  allowTf32?: boolean;
}

interface Plan {
  desc: number;
  layoutA: number; // the library's A: our B
  layoutB: number; // the library's B: our A
  layoutC: number;
  algo: Uint8Array;
}

const out64 = new BigUint64Array(new ArrayBuffer(8));
const i32buf = new Int32Array(new ArrayBuffer(8));
const i64buf = new BigInt64Array(new ArrayBuffer(8));

export class Matmul {
  readonly #handle: number;
  readonly #plans = new Map<string, Plan>();
  /** One workspace per stream: two products on different streams may run at once. */
  readonly #workspaces = new Map<number, number>();
  readonly #alpha = new Float32Array(new ArrayBuffer(4));
  readonly #beta = new Float32Array(new ArrayBuffer(4));
  /** Plans made so far (each ran the heuristic once). */
  heuristicCalls = 0;

  private constructor(readonly device: number) {
    setDevice(device);
    checkLt(cublasLt().cublasLtCreate(out64), "cublasLtCreate");
    this.#handle = Number(out64[0]);
  }

  #workspace(stream: Stream): number {
    let ws = this.#workspaces.get(stream.handle);
    if (ws === undefined) {
      ws = DeviceAllocator.forDevice(this.device).alloc(WORKSPACE_BYTES, stream);
      this.#workspaces.set(stream.handle, ws);
    }
    return ws;
  }

  static #byDevice = new Map<number, Matmul>();

  static forDevice(device: number): Matmul {
    let m = Matmul.#byDevice.get(device);
    if (!m) {
      m = new Matmul(device);
      Matmul.#byDevice.set(device, m);
    }
    return m;
  }

  #layout(dtype: number, rows: number, cols: number, ld: number, batch: number, stride: number): number {
    checkLt(cublasLt().cublasLtMatrixLayoutCreate(out64, dtype, rows, cols, ld), "cublasLtMatrixLayoutCreate", `${rows}x${cols} ld ${ld}`);
    const layout = Number(out64[0]);
    if (batch > 1) {
      i32buf[0] = batch;
      checkLt(
        cublasLt().cublasLtMatrixLayoutSetAttribute(layout, LAYOUT_BATCH_COUNT, i32buf, 4),
        "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)",
      );
      i64buf[0] = BigInt(stride);
      checkLt(
        cublasLt().cublasLtMatrixLayoutSetAttribute(layout, LAYOUT_STRIDED_BATCH_OFFSET, i64buf, 8),
        "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)",
      );
    }
    return layout;
  }

  #plan(p: MatmulProblem): Plan {
    const outDtype = p.outDtype ?? p.dtype;
    const key = `${p.dtype}>${outDtype}|${p.m}|${p.n}|${p.k}|${+p.transA}|${+p.transB}|${p.batch}|${p.strideA}|${p.strideB}|${+!!p.allowTf32}`;
    const cached = this.#plans.get(key);
    if (cached) return cached;
    const lt = cublasLt();
    const dt = p.dtype === "bf16" ? CUDA_R_16BF : CUDA_R_32F;
    const dtOut = outDtype === "bf16" ? CUDA_R_16BF : CUDA_R_32F;
    const compute = p.dtype === "f32" && p.allowTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const ctx = `${p.dtype}->${outDtype} m=${p.m} n=${p.n} k=${p.k} transA=${p.transA} transB=${p.transB} batch=${p.batch}`;
    checkLt(lt.cublasLtMatmulDescCreate(out64, compute, CUDA_R_32F), "cublasLtMatmulDescCreate", ctx);
    const desc = Number(out64[0]);
    // Library A = our B: stored row-major [k,n] (or [n,k] when transB) = column-major [n,k] ([k,n]).
    i32buf[0] = p.transB ? 1 : 0;
    checkLt(lt.cublasLtMatmulDescSetAttribute(desc, DESC_TRANSA, i32buf, 4), "cublasLtMatmulDescSetAttribute(TRANSA)");
    i32buf[0] = p.transA ? 1 : 0;
    checkLt(lt.cublasLtMatmulDescSetAttribute(desc, DESC_TRANSB, i32buf, 4), "cublasLtMatmulDescSetAttribute(TRANSB)");
    const layoutA = p.transB ? this.#layout(dt, p.k, p.n, p.k, p.batch, p.strideB) : this.#layout(dt, p.n, p.k, p.n, p.batch, p.strideB);
    const layoutB = p.transA ? this.#layout(dt, p.m, p.k, p.m, p.batch, p.strideA) : this.#layout(dt, p.k, p.m, p.k, p.batch, p.strideA);
    const layoutC = this.#layout(dtOut, p.n, p.m, p.n, p.batch, p.m * p.n);
    checkLt(lt.cublasLtMatmulPreferenceCreate(out64), "cublasLtMatmulPreferenceCreate");
    const pref = Number(out64[0]);
    out64[0] = BigInt(WORKSPACE_BYTES);
    checkLt(lt.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, out64, 8), "cublasLtMatmulPreferenceSetAttribute");
    const algo = new Uint8Array(new ArrayBuffer(HEURISTIC_RESULT_BYTES));
    const found = new Int32Array(new ArrayBuffer(4));
    const st = lt.cublasLtMatmulAlgoGetHeuristic(this.#handle, desc, layoutA, layoutB, layoutC, layoutC, pref, 1, algo, found);
    lt.cublasLtMatmulPreferenceDestroy(pref);
    checkLt(st, "cublasLtMatmulAlgoGetHeuristic", ctx);
    if (found[0] === 0) throw new CublasError("cublasLtMatmulAlgoGetHeuristic", 15, "no algorithm supports this problem", ctx);
    this.heuristicCalls++;
    const plan: Plan = { desc, layoutA, layoutB, layoutC, algo };
    this.#plans.set(key, plan);
    return plan;
  }

  /** Enqueues the product on `stream`. a, b, out are device addresses. */
  run(p: MatmulProblem, a: number, b: number, out: number, alpha: number, beta: number, stream: Stream): void {
    const plan = this.#plan(p);
    this.#alpha[0] = alpha;
    this.#beta[0] = beta;
    const st = cublasLt().cublasLtMatmul(
      this.#handle,
      plan.desc,
      this.#alpha,
      b,
      plan.layoutA,
      a,
      plan.layoutB,
      this.#beta,
      out,
      plan.layoutC,
      out,
      plan.layoutC,
      plan.algo,
      this.#workspace(stream),
      WORKSPACE_BYTES,
      stream.handle,
    );
    if (st !== 0)
      checkLt(
        st,
        "cublasLtMatmul",
        `${p.dtype}->${p.outDtype ?? p.dtype} m=${p.m} n=${p.n} k=${p.k} transA=${p.transA} transB=${p.transB} batch=${p.batch}`,
      );
  }
}
