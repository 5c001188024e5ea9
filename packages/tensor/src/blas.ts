// The CPU's fast matmul: cblas_sgemm from OpenBLAS through bun:ffi (row-major, f32 operands, f32
// accumulation, batches by looping over strided pointers). cpu.ts's matmul (f64 accumulation) stays
// the reference that every test compares against and the default; this path runs only once a process
// chooses it with setCpuMatmul("blas") (the trainer does, at its edge). A missing library is then an
// error naming the package to install, never a quiet return to the reference.
//
// OpenBLAS threads: 1 per process unless told otherwise, because CPU ranks are processes that already
// share the cores; more threads per rank would oversubscribe them.

import { CString, dlopen } from "bun:ffi";
import { locateBlas } from "@lightseq/cuda";
import { f32ToBf16Bits as narrowBits, bf16BitsToF32 as widen } from "./bf16.ts";
import type { MatmulDims } from "./cpu.ts";
import type { DType, HostArray } from "./dtype.ts";

export type CpuMatmul = "reference" | "blas";

export class BlasError extends Error {
  override name = "BlasError";
}

const INSTALL = "install it with `apt-get install libopenblas0-pthread` (Debian/Ubuntu), or set LIGHTSEQ_BLAS_SO to a libopenblas.so";

/**
 * How a build names its symbols. Distributions ship plain OpenBLAS (32-bit integers); numpy's and
 * scipy's wheels bundle scipy-openblas, whose symbols carry a `scipy_` prefix and, in numpy's 64-bit
 * integer build, a `64_` suffix with every dimension and leading dimension a 64-bit integer.
 */
interface Flavor {
  readonly name: string;
  readonly prefix: string;
  readonly suffix: string;
  readonly int: "i32" | "i64";
}

const FLAVORS: readonly Flavor[] = [
  { name: "OpenBLAS", prefix: "", suffix: "", int: "i32" },
  { name: "scipy-openblas64 (64-bit integers)", prefix: "scipy_", suffix: "64_", int: "i64" },
  { name: "scipy-openblas", prefix: "scipy_", suffix: "", int: "i32" },
];

// CBLAS enum values (cblas.h).
const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

type Sgemm = (
  order: number,
  transA: number,
  transB: number,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Float32Array,
  lda: number,
  b: Float32Array,
  ldb: number,
  beta: number,
  c: Float32Array,
  ldc: number,
) => void;

interface Blas {
  readonly path: string;
  readonly flavor: string;
  /** OpenBLAS's own description: version, build options, the CPU kernel it picked. */
  readonly config: string;
  readonly sgemm: Sgemm;
  readonly setThreads: (n: number) => void;
  readonly threads: () => number;
}

function open(path: string): Blas {
  const failures: string[] = [];
  for (const f of FLAVORS) {
    const name = (s: string) => `${f.prefix}${s}${f.suffix}`;
    const i = f.int;
    const table = {
      [name("cblas_sgemm")]: { args: ["i32", "i32", "i32", i, i, i, "f32", "ptr", i, "ptr", i, "f32", "ptr", i], returns: "void" },
      [name("openblas_set_num_threads")]: { args: ["i32"], returns: "void" },
      [name("openblas_get_num_threads")]: { args: [], returns: "i32" },
      [name("openblas_get_config")]: { args: [], returns: "ptr" },
    };
    let symbols: Record<string, (...args: unknown[]) => unknown>;
    try {
      // bun's dlopen throws when a listed symbol is missing: that is how the builds are told apart.
      symbols = dlopen(path, table as never).symbols as never;
    } catch (e) {
      failures.push(`${f.name}: ${(e as Error).message}`);
      continue;
    }
    const configPtr = symbols[name("openblas_get_config")]?.() as number | null;
    const config = configPtr ? new CString(configPtr as never).toString() : "";
    // A build's integer width is in its config string; passing 32-bit integers to a 64-bit build
    // would hand it garbage upper halves for the arguments on the stack.
    if (config.includes("USE64BITINT") !== (i === "i64")) {
      failures.push(`${f.name}: the build's integers are ${config.includes("USE64BITINT") ? "64" : "32"}-bit ("${config}")`);
      continue;
    }
    return {
      path,
      flavor: f.name,
      config,
      sgemm: symbols[name("cblas_sgemm")] as unknown as Sgemm,
      setThreads: symbols[name("openblas_set_num_threads")] as (n: number) => void,
      threads: symbols[name("openblas_get_num_threads")] as () => number,
    };
  }
  throw new BlasError(`${path} is not a usable OpenBLAS: ${INSTALL} (${failures.join("; ")})`);
}

let lib: Blas | null = null;
let mode: CpuMatmul = "reference";

function load(): Blas {
  if (lib) return lib;
  const found = locateBlas();
  if (found.badOverride !== undefined) {
    throw new BlasError(
      `LIGHTSEQ_BLAS_SO=${found.badOverride}: no such file; point it at a libopenblas.so, or unset it to search the system`,
    );
  }
  if (found.path === null) throw new BlasError(`OpenBLAS not found: ${INSTALL} (searched ${found.tried.join(", ")})`);
  lib = open(found.path);
  return lib;
}

function threadsFromEnv(): number {
  const v = process.env.LIGHTSEQ_BLAS_THREADS;
  if (v === undefined || v === "") return 1;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new BlasError(`LIGHTSEQ_BLAS_THREADS: expected a positive integer, got "${v}"`);
  return n;
}

export interface CpuMatmulInfo {
  mode: CpuMatmul;
  /** Present in "blas" mode: which library, which build, how many threads. */
  blas?: { path: string; flavor: string; config: string; threads: number };
}

/**
 * Chooses how matmul runs on CPU tensors in this process: "reference" (the default: cpu.ts, f64
 * accumulation) or "blas" (OpenBLAS sgemm, f32 accumulation; loaded now, so a missing library fails
 * here). threads: OpenBLAS threads, default $LIGHTSEQ_BLAS_THREADS or 1.
 */
export function setCpuMatmul(choice: CpuMatmul, o: { threads?: number } = {}): CpuMatmulInfo {
  if (choice !== "reference" && choice !== "blas") {
    throw new BlasError(`setCpuMatmul: expected "reference" or "blas", got ${JSON.stringify(choice)}`);
  }
  if (choice === "blas") {
    const threads = o.threads ?? threadsFromEnv();
    if (!Number.isSafeInteger(threads) || threads < 1)
      throw new BlasError(`setCpuMatmul: threads: expected a positive integer, got ${threads}`);
    load().setThreads(threads);
  }
  mode = choice;
  return cpuMatmulInfo();
}

export function cpuMatmul(): CpuMatmul {
  return mode;
}

export function cpuMatmulInfo(): CpuMatmulInfo {
  if (mode === "reference" || lib === null) return { mode };
  return { mode, blas: { path: lib.path, flavor: lib.flavor, config: lib.config, threads: lib.threads() } };
}

/**
 * cpu.matmul's contract through sgemm: out[b] = alpha * op(A[b]) @ op(B[b]) + beta * out[b]. bf16
 * operands widen to f32 exactly, the result rounds once to bf16. Needs setCpuMatmul("blas") first.
 */
export function blasMatmul(dtype: DType, a: HostArray, b: HostArray, out: HostArray, d: MatmulDims, outDtype: DType = dtype): void {
  const blas = lib;
  if (blas === null) throw new BlasError('blasMatmul: OpenBLAS is not loaded; call setCpuMatmul("blas") first');
  const { batch, m, n, k } = d;
  if (batch * m * n === 0) return;
  const A = asF32(dtype, a);
  const B = asF32(dtype, b);
  const C = outDtype === "f32" ? (out as Float32Array) : d.beta === 0 ? new Float32Array(out.length) : asF32(outDtype, out);
  // Leading dimensions of the row-major storage; BLAS wants >= 1 even for empty operands.
  const lda = Math.max(1, d.transA ? m : k);
  const ldb = Math.max(1, d.transB ? k : n);
  const ta = d.transA ? TRANS : NO_TRANS;
  const tb = d.transB ? TRANS : NO_TRANS;
  for (let bt = 0; bt < batch; bt++) {
    // Views, not pointers: bun passes each view's own address (see ecosystem.md on cached ptr()).
    const av = A.subarray(bt * d.strideA, bt * d.strideA + m * k);
    const bv = B.subarray(bt * d.strideB, bt * d.strideB + k * n);
    const cv = C.subarray(bt * m * n, (bt + 1) * m * n);
    blas.sgemm(ROW_MAJOR, ta, tb, m, n, k, d.alpha, av, lda, bv, ldb, d.beta, cv, Math.max(1, n));
  }
  if (outDtype === "bf16") for (let i = 0; i < C.length; i++) (out as Uint16Array)[i] = narrowBits(C[i] as number);
}

function asF32(dtype: DType, x: HostArray): Float32Array {
  if (dtype === "f32") return x as Float32Array;
  const f = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) f[i] = widen(x[i] as number);
  return f;
}
