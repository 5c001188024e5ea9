// The OpenBLAS matmul against the reference (cpu.ts, f64 accumulation) on fresh random inputs: every
// transpose combination, batches (batched and shared operands), odd and empty sizes, alpha/beta
// accumulation, f32 and bf16. Skips visibly where no OpenBLAS is installed.
//
// Tolerance: sgemm accumulates k products in f32, in whatever order and with FMAs as it likes, so
// |got - exact| <= gamma(k) * sum_p |a_ip| |b_pj| with gamma(k) = k u / (1 - k u), u = 2^-24 (the
// standard bound for any summation order); alpha and beta add two roundings. The reference is exact
// to half an f32 ulp. So atol = gamma(k + 2) * max_ij (|alpha| sum_p |a_ip||b_pj| + |beta| |c_ij|),
// computed from the inputs; bf16 outputs may also round to the neighbouring bf16 value: one bf16 ulp,
// at most 2^-7 relative (rtol).

import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { locateBlas, sitePackages } from "@lightseq/cuda";
import * as T from "./index.ts";
import { compareClose, expectClose } from "./testing.ts";

const found = locateBlas();
const hasBlas = found.path !== null;
if (!hasBlas) console.warn(`blas.test: no OpenBLAS (apt-get install libopenblas0-pthread); skipping. Searched: ${found.tried.join(", ")}`);

interface Case {
  batch?: number;
  /** b shared by every batch entry (2-D) instead of batched. */
  sharedB?: boolean;
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  beta?: number;
  dtype?: "f32" | "bf16";
}

function inputs(c: Case, seed: number) {
  const dtype = c.dtype ?? "f32";
  const lead = c.batch === undefined ? [] : [c.batch];
  const aShape = [...lead, ...(c.transA ? [c.k, c.m] : [c.m, c.k])];
  const bInner = c.transB ? [c.n, c.k] : [c.k, c.n];
  const bShape = c.sharedB ? bInner : [...lead, ...bInner];
  return {
    a: T.randn(aShape, { seed, dtype }),
    b: T.randn(bShape, { seed: seed + 1, dtype }),
    c: T.randn([...lead, c.m, c.n], { seed: seed + 2, dtype }),
  };
}

function product(mode: T.CpuMatmul, c: Case, x: { a: T.Tensor; b: T.Tensor; c: T.Tensor }, abs = false): Float32Array {
  T.setCpuMatmul(mode);
  const v = (t: T.Tensor) => (abs ? T.fromArray(T.toFloat32Array(t).map(Math.abs), t.shape, { dtype: t.dtype }) : t);
  const out = T.empty(x.c.shape, { dtype: x.c.dtype });
  T.copy(out, v(x.c));
  const o = { transA: c.transA ?? false, transB: c.transB ?? false, alpha: abs ? Math.abs(c.alpha ?? 1) : (c.alpha ?? 1) };
  const beta = abs ? Math.abs(c.beta ?? 0) : (c.beta ?? 0);
  return T.toFloat32Array(T.matmul(v(x.a), v(x.b), { ...o, beta, out }));
}

function tolerance(c: Case, x: { a: T.Tensor; b: T.Tensor; c: T.Tensor }): { atol: number; rtol: number } {
  const u = 2 ** -24;
  const steps = c.k + 2;
  const gamma = (steps * u) / (1 - steps * u);
  const bound = product("reference", c, x, true).reduce((mx, v) => Math.max(mx, v), 0);
  return { atol: gamma * bound + Number.MIN_VALUE, rtol: (c.dtype ?? "f32") === "bf16" ? 2 ** -7 : 0 };
}

function check(c: Case, seed: number) {
  const x = inputs(c, seed);
  const ref = product("reference", c, x);
  const got = product("blas", c, x);
  return expectClose(got, ref, { ...tolerance(c, x), label: JSON.stringify(c) });
}

describe.skipIf(!hasBlas)("OpenBLAS matmul vs the reference", () => {
  afterAll(() => T.setCpuMatmul("reference"));

  test("the default is the reference; choosing blas names the library and runs 1 thread", () => {
    expect(T.cpuMatmul()).toBe("reference");
    expect(T.cpuMatmulInfo()).toEqual({ mode: "reference" });
    const info = T.setCpuMatmul("blas");
    expect(info.mode).toBe("blas");
    expect(info.blas?.path).toBe(found.path as string);
    expect(info.blas?.config).toContain("OpenBLAS");
    expect(info.blas?.threads).toBe(1);
    expect(T.setCpuMatmul("blas", { threads: 2 }).blas?.threads).toBe(2);
    expect(T.setCpuMatmul("blas").blas?.threads).toBe(1);
    expect(T.setCpuMatmul("reference")).toEqual({ mode: "reference" });
  });

  test("every transpose combination at odd sizes", () => {
    let seed = 10;
    for (const [m, n, k] of [
      [1, 1, 1],
      [7, 13, 5],
      [33, 65, 17],
      [64, 3, 129],
    ] as const) {
      for (const transA of [false, true]) for (const transB of [false, true]) check({ m, n, k, transA, transB }, seed++);
    }
  });

  test("batches: both operands batched, and b shared by every batch entry", () => {
    check({ batch: 3, m: 9, n: 11, k: 7 }, 40);
    check({ batch: 4, m: 5, n: 17, k: 12, transA: true, transB: true }, 41);
    check({ batch: 3, sharedB: true, m: 6, n: 10, k: 8, transB: true }, 42);
    check({ batch: 2, sharedB: true, m: 16, n: 31, k: 20, transA: true }, 43);
  });

  test("alpha and beta accumulate into out", () => {
    check({ m: 12, n: 19, k: 23, alpha: 0.5, beta: 1 }, 50);
    check({ m: 12, n: 19, k: 23, alpha: -2, beta: 0.25, transB: true }, 51);
    check({ batch: 3, m: 8, n: 8, k: 40, alpha: 1, beta: -1, transA: true }, 52);
  });

  test("bf16 operands and output", () => {
    check({ m: 17, n: 23, k: 31, dtype: "bf16" }, 60);
    check({ batch: 2, m: 9, n: 14, k: 64, transB: true, beta: 1, dtype: "bf16" }, 61);
  });

  test("an LM-head-like shape: x[256,128] @ W[512,128]^T", () => {
    const r = check({ m: 256, n: 512, k: 128, transB: true }, 70);
    expect(r.maxAbsError).toBeGreaterThan(0); // f32 accumulation really differs from f64
  });

  test("empty sizes: k = 0 leaves beta * out, m = 0 does nothing", () => {
    check({ m: 4, n: 5, k: 0, beta: 0.5 }, 80);
    check({ m: 4, n: 5, k: 0 }, 81);
    T.setCpuMatmul("blas");
    expect(T.matmul(T.zeros([0, 3]), T.zeros([3, 4])).shape).toEqual([0, 4]);
  });

  test("the tolerance catches a wrong transpose", () => {
    const c: Case = { m: 16, n: 16, k: 16 };
    const x = inputs(c, 90);
    const ref = product("reference", c, x);
    const wrong = product("blas", { ...c, transB: true }, x);
    expect(compareClose(wrong, ref, tolerance(c, x)).ok).toBe(false);
  });

  test("bad choices and thread counts are one-line errors", () => {
    expect(() => T.setCpuMatmul("fast" as T.CpuMatmul)).toThrow(/expected "reference" or "blas", got "fast"/);
    expect(() => T.setCpuMatmul("blas", { threads: 0 })).toThrow(/threads: expected a positive integer, got 0/);
    process.env.LIGHTSEQ_BLAS_THREADS = "two";
    try {
      expect(() => T.setCpuMatmul("blas")).toThrow(/LIGHTSEQ_BLAS_THREADS: expected a positive integer, got "two"/);
    } finally {
      delete process.env.LIGHTSEQ_BLAS_THREADS;
    }
  });
});

// The library is chosen once per process, so these run in fresh ones (fixtures/blas-worker.ts).
const WORKER = join(import.meta.dir, "fixtures", "blas-worker.ts");

function worker(env: Record<string, string>) {
  const r = Bun.spawnSync([process.execPath, WORKER], { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString().trim() };
}

describe("OpenBLAS loading", () => {
  test("LIGHTSEQ_BLAS_SO naming no file is an error, not a search elsewhere", () => {
    const r = worker({ LIGHTSEQ_BLAS_SO: "/nonexistent/libopenblas.so.0" });
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      "LIGHTSEQ_BLAS_SO=/nonexistent/libopenblas.so.0: no such file; point it at a libopenblas.so, or unset it to search the system",
    );
  });

  test("a library without sgemm is refused with the package to install", () => {
    const r = worker({ LIGHTSEQ_BLAS_SO: "/lib/x86_64-linux-gnu/libm.so.6" });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/is not a usable OpenBLAS: install it with `apt-get install libopenblas0-pthread`.*cblas_sgemm/);
    expect(r.err.split("\n")).toHaveLength(1);
  });

  // numpy's wheel bundles an OpenBLAS with prefixed symbols and 64-bit integers; scipy's a 32-bit one.
  const bundled = sitePackages().flatMap((sp) =>
    ["numpy.libs", "scipy.libs"].flatMap((dir) => {
      const glob = new Bun.Glob("libscipy_openblas*.so");
      try {
        return [...glob.scanSync({ cwd: join(sp, dir), absolute: true })];
      } catch {
        return [];
      }
    }),
  );
  const libraries = [...(found.path ? [found.path] : []), ...bundled];
  test.skipIf(libraries.length === 0)(`every build found here computes the same product (${libraries.length} found)`, () => {
    for (const so of libraries) {
      const r = worker({ LIGHTSEQ_BLAS_SO: so });
      expect(r.err).toBe("");
      const res = JSON.parse(r.out) as { flavor: string; maxErr: number; threads: number };
      expect(res.threads).toBe(1);
      // k = 40, |alpha| = 0.5, |beta| = 1 and unit normals: gamma(42) * (0.5 * ~60 + 4) is about 1e-4.
      expect(res.maxErr).toBeLessThan(1e-4);
      expect(res.flavor).toBe(
        so.includes("openblas64_") ? "scipy-openblas64 (64-bit integers)" : so.includes("scipy_openblas") ? "scipy-openblas" : "OpenBLAS",
      );
    }
  });
});
