// The CUDA block attention (cuda.ts -> kernels/src/attention.cu) against the reference (reference.ts) on
// fresh random bf16 inputs. Skipped (visibly) without a GPU; `bun run test:gpu` makes that an error.
//
// Tolerance: ||got - ref|| / ||ref|| <= 1e-2 for o, lse and each gradient. Inputs are bf16 (the reference
// widens the same bits), the kernels round P and dS to bf16 before the P V, dS K and dS^T Q products
// (2^-9 relative per element, averaging out over a row) and round o (and dq, dk, dv) to bf16 once:
// a correct kernel lands near 1e-3; indexing or masking errors land far above 1e-2.
//
// The kernel set under test is LIGHTSEQ_ATTN_KERNEL's (read once, here: the test entry), so a run with
// LIGHTSEQ_ATTN_KERNEL=mma tests the mma.sync kernels on sm_90 too.

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { skipWithoutGpu } from "@lightseq/cuda";
import { empty, fill, fromArray, item, randn, sumOfSquares, type Tensor, to, toFloat32Array } from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { backwardAccumulate, backwardWorkspaceBytes, createCudaBackend, cudaAttentionKernels, forwardInto, mergeIntoCuda } from "./cuda.ts";
import { attentionEnv } from "./env.ts";
import { emptyPartial, mergeInto } from "./merge.ts";
import { referenceBackend } from "./reference.ts";
import { attentionBackendSuite, lseColumns, TensorPool } from "./testing.ts";

const noGpu = skipWithoutGpu();
const { kernels } = attentionEnv();
const cudaBackend = createCudaBackend({ kernels });
const dev = "cuda:0";
const REL_TOL = 1e-2;
setDefaultTimeout(120_000); // the CPU reference at a few hundred tokens takes seconds

let seed = Number(process.env.LIGHTSEQ_TEST_SEED ?? Date.now() % 1_000_000);

interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dO: Tensor;
}

function inputs(pool: TensorPool, Tq: number, Tk: number, Hq: number, Hkv: number, D: number, std = 1): Inputs {
  const p = { dtype: "bf16" as const, device: dev, std };
  return {
    q: pool.add(randn([Tq, Hq, D], { ...p, seed: seed++ })),
    k: pool.add(randn([Tk, Hkv, D], { ...p, seed: seed++ })),
    v: pool.add(randn([Tk, Hkv, D], { ...p, seed: seed++ })),
    dO: pool.add(randn([Tq, Hq, D], { ...p, seed: seed++ })),
  };
}

const cpu = (pool: TensorPool, t: Tensor) => pool.add(to(t, "cpu"));

/** Relative error, plus a hard failure on NaN/Inf where the reference is finite. */
function expectRel(got: Tensor | ArrayLike<number>, ref: Tensor | ArrayLike<number>, label: string, tol = REL_TOL): number {
  const g = got instanceof Float32Array || !("shape" in got) ? got : toFloat32Array(got as Tensor);
  const r = ref instanceof Float32Array || !("shape" in ref) ? ref : toFloat32Array(ref as Tensor);
  for (let i = 0; i < g.length; i++) {
    const a = g[i] as number;
    const b = r[i] as number;
    if (Number.isFinite(b) && !Number.isFinite(a)) throw new Error(`${label}: element ${i} is ${a}, reference ${b} (seed ${seed})`);
    if (!Number.isFinite(b) && a !== b) throw new Error(`${label}: element ${i} is ${a}, reference ${b} (seed ${seed})`);
  }
  const rep = compareClose(g, r, { label });
  if (!(rep.relativeError <= tol))
    throw new Error(`${label}: relative error ${rep.relativeError.toExponential(2)} > ${tol} (seed ${seed})\n${rep.message}`);
  return rep.relativeError;
}

/** No NaN or Inf in t (they propagate through the sum of squares, computed on the device). */
function finite(t: Tensor): boolean {
  using s = sumOfSquares(t);
  return Number.isFinite(item(s));
}

// The block-contract suite (every backend runs it): identities DistAttn relies on, edge rows, errors.
// Sequence lengths x17: odd, and spanning several 32/64/128-row tiles.
describe.skipIf(noGpu)("cuda backend: block-contract suite", () => {
  for (const headDim of [64, 128]) attentionBackendSuite(cudaBackend, { device: dev, dtypes: ["bf16"], headDim, seqMultiple: 17 });
});

describe.skipIf(noGpu)("cuda backend equals the reference", () => {
  // [D, Tq, Tk, Hq, Hkv, causal]: tiny, non-multiples of 64/128, Tq < Tk, Tq > Tk, Hkv in {Hq, Hq/4, 1}.
  const cases: [number, number, number, number, number, boolean][] = [
    [128, 1, 1, 4, 4, true],
    [128, 130, 130, 4, 4, true],
    [128, 130, 130, 4, 1, false],
    [128, 200, 77, 8, 2, true],
    [128, 77, 200, 8, 2, true],
    [128, 77, 200, 4, 1, false],
    [128, 300, 300, 8, 8, true],
    [128, 257, 129, 4, 1, false],
    [64, 1, 5, 4, 1, true],
    [64, 130, 130, 4, 4, true],
    [64, 200, 77, 8, 2, false],
    [64, 77, 200, 8, 2, true],
    [64, 300, 300, 4, 1, true],
    [64, 257, 129, 8, 8, true],
  ];
  for (const [D, Tq, Tk, Hq, Hkv, causal] of cases) {
    test(`D=${D} Tq=${Tq} Tk=${Tk} Hq=${Hq} Hkv=${Hkv} causal=${causal}`, () => {
      using pool = new TensorPool();
      const x = inputs(pool, Tq, Tk, Hq, Hkv, D);
      const opts = { causal };
      const got = pool.addAll(cudaBackend.forward(x.q, x.k, x.v, opts));
      const c = { q: cpu(pool, x.q), k: cpu(pool, x.k), v: cpu(pool, x.v), dO: cpu(pool, x.dO) };
      const ref = pool.addAll(referenceBackend.forward(c.q, c.k, c.v, opts));
      expectRel(got.o, ref.o, "o");
      expectRel(got.lse, ref.lse, "lse");
      // The kernel's own o and lse feed its backward (as in training); the reference uses its own.
      const g = pool.addAll(cudaBackend.backward(x.q, x.k, x.v, got.o, got.lse, x.dO, opts));
      const r = pool.addAll(referenceBackend.backward(c.q, c.k, c.v, ref.o, ref.lse, c.dO, opts));
      expectRel(g.dq, r.dq, "dq");
      expectRel(g.dk, r.dk, "dk");
      expectRel(g.dv, r.dv, "dv");
    });
  }

  test("inputs x30 (scores ~1e4): finite everywhere, o and lse still match", () => {
    for (const [D, causal] of [
      [128, true],
      [64, false],
    ] as const) {
      using pool = new TensorPool();
      const [Tq, Tk, Hq, Hkv] = [150, 170, 4, 2];
      const x = inputs(pool, Tq, Tk, Hq, Hkv, D, 30);
      const got = pool.addAll(cudaBackend.forward(x.q, x.k, x.v, { causal }));
      const ref = pool.addAll(referenceBackend.forward(cpu(pool, x.q), cpu(pool, x.k), cpu(pool, x.v), { causal }));
      expectRel(got.o, ref.o, `o D=${D}`);
      expectRel(got.lse, ref.lse, `lse D=${D}`);
      const g = pool.addAll(cudaBackend.backward(x.q, x.k, x.v, got.o, got.lse, x.dO, { causal }));
      for (const [name, t] of Object.entries({ ...got, ...g })) expect({ name, finite: finite(t) }).toEqual({ name, finite: true });
    }
  });
});

describe.skipIf(noGpu)("cuda lower-level calls (DistAttn)", () => {
  test("forwardInto with an f32 o equals the bf16 forward; lse identical", () => {
    using pool = new TensorPool();
    const [Tq, Tk, Hq, Hkv, D] = [190, 260, 4, 2, 128];
    const x = inputs(pool, Tq, Tk, Hq, Hkv, D);
    const a = pool.addAll(cudaBackend.forward(x.q, x.k, x.v, { causal: true }));
    const b = {
      o: pool.add(empty([Tq, Hq, D], { dtype: "f32", device: dev })),
      lse: pool.add(empty([Hq, Tq], { dtype: "f32", device: dev })),
    };
    forwardInto(x.q, x.k, x.v, b, { causal: true, kernels });
    expectRel(a.o, b.o, "o", 4e-3); // bf16 rounding of one side only
    expect(Array.from(toFloat32Array(a.lse))).toEqual(Array.from(toFloat32Array(b.lse)));
  });

  test("backwardAccumulate adds into f32 dq, dk, dv (a caller-provided workspace works too)", () => {
    using pool = new TensorPool();
    const [Tq, Tk, Hq, Hkv, D] = [150, 150, 4, 1, 64];
    const x = inputs(pool, Tq, Tk, Hq, Hkv, D);
    const { o, lse } = pool.addAll(cudaBackend.forward(x.q, x.k, x.v, { causal: true }));
    const base = {
      dq: pool.add(randn([Tq, Hq, D], { seed: seed++, device: dev })),
      dk: pool.add(randn([Tk, Hkv, D], { seed: seed++, device: dev })),
      dv: pool.add(randn([Tk, Hkv, D], { seed: seed++, device: dev })),
    };
    const before = { dq: toFloat32Array(base.dq), dk: toFloat32Array(base.dk), dv: toFloat32Array(base.dv) };
    const workspace = pool.add(empty([backwardWorkspaceBytes(Tq, Hq, D) / 4], { dtype: "f32", device: dev }));
    backwardAccumulate(x.q, x.k, x.v, o, lse, x.dO, base, { causal: true, kernels, workspace });
    const fresh = {
      dq: pool.add(empty([Tq, Hq, D], { device: dev })),
      dk: pool.add(empty([Tk, Hkv, D], { device: dev })),
      dv: pool.add(empty([Tk, Hkv, D], { device: dev })),
    };
    for (const t of Object.values(fresh)) fill(t, 0);
    backwardAccumulate(x.q, x.k, x.v, o, lse, x.dO, fresh, { causal: true, kernels });
    for (const name of ["dq", "dk", "dv"] as const) {
      const added = toFloat32Array(base[name]).map((e, i) => e - (before[name][i] as number));
      expectRel(added, toFloat32Array(fresh[name]), `${name} added`, 1e-4); // f32 sums in another order
    }
  });

  test("mergeIntoCuda of key-block partials (f32 and bf16, an empty one) equals the full forward and the cpu merge", () => {
    using pool = new TensorPool();
    const [Tq, Hq, Hkv, D] = [160, 4, 2, 128];
    const parts = [70, 0, 130, 45];
    const Tk = parts.reduce((a, b) => a + b, 0);
    const x = inputs(pool, Tq, Tk, Hq, Hkv, D);
    const full = pool.addAll(cudaBackend.forward(x.q, x.k, x.v, { causal: false }));
    const acc = pool.addAll(emptyPartial(Tq, Hq, D, { device: dev }));
    fill(acc.o, Number.NaN); // an empty accumulator's o is never read
    const accCpu = pool.addAll(emptyPartial(Tq, Hq, D));
    let start = 0;
    for (const [n, len] of parts.entries()) {
      const k = pool.add(x.k.narrow(start, len));
      const v = pool.add(x.v.narrow(start, len));
      const dtype = n % 2 === 0 ? "f32" : "bf16";
      const part = {
        o: pool.add(empty([Tq, Hq, D], { dtype, device: dev })),
        lse: pool.add(empty([Hq, Tq], { dtype: "f32", device: dev })),
      };
      forwardInto(x.q, k, v, part, { causal: false, kernels });
      mergeIntoCuda(acc, part);
      mergeInto(accCpu, { o: cpu(pool, part.o), lse: cpu(pool, part.lse) });
      start += len;
    }
    expectRel(acc.o, full.o, "merged o vs full forward");
    expectRel(acc.lse, full.lse, "merged lse vs full forward", 1e-5);
    expectRel(acc.o, accCpu.o, "merged o vs cpu merge", 1e-5);
    expectRel(acc.lse, accCpu.lse, "merged lse vs cpu merge", 1e-6);
  });

  test("mergeIntoCuda keeps the max shift: a partial merged with its twin at |lse| up to 800 keeps o, gains ln 2", () => {
    using pool = new TensorPool();
    const [T, H, D] = [3, 2, 64];
    const lseValues = [800, -800, 100, -100, 88.5, 0.5]; // exp overflows f32 past 88: only the shifted form survives
    const part = {
      o: pool.add(randn([T, H, D], { seed: seed++, device: dev })),
      lse: pool.add(fromArray(lseValues, [H, T], { device: dev })),
    };
    const acc = pool.addAll(emptyPartial(T, H, D, { device: dev }));
    mergeIntoCuda(acc, part);
    mergeIntoCuda(acc, part);
    // lse + ln 2 is an f32 near 800, whose spacing is 6.1e-5: the weights exp(lse_i - lse) carry up to
    // that relative error (1.7e-5 measured on an H200). Without the shift they would be inf/NaN.
    expectRel(acc.o, part.o, "o", 1e-4);
    expectRel(
      acc.lse,
      lseValues.map((l) => l + Math.LN2),
      "lse",
      1e-6,
    );
  });

  test("128K tokens, causal: finite everywhere; sampled rows equal the reference", () => {
    using pool = new TensorPool();
    const [T, Hq, Hkv, D] = [131072, 2, 1, 128];
    const x = inputs(pool, T, T, Hq, Hkv, D);
    const { o, lse } = pool.addAll(cudaBackend.forward(x.q, x.k, x.v, { causal: true }));
    const g = {
      dq: pool.add(empty([T, Hq, D], { device: dev })),
      dk: pool.add(empty([T, Hkv, D], { device: dev })),
      dv: pool.add(empty([T, Hkv, D], { device: dev })),
    };
    for (const t of Object.values(g)) fill(t, 0);
    backwardAccumulate(x.q, x.k, x.v, o, lse, x.dO, g, { causal: true, kernels });
    for (const [name, t] of Object.entries({ o, lse, ...g })) expect({ name, finite: finite(t) }).toEqual({ name, finite: true });
    // Row i sees keys 0..i: the reference of that one row against that key prefix (not causal).
    for (const i of [0, 4097, 65535, T - 1]) {
      const row = (t: Tensor) => pool.add(t.narrow(i, 1));
      const k = cpu(pool, pool.add(x.k.narrow(0, i + 1)));
      const v = cpu(pool, pool.add(x.v.narrow(0, i + 1)));
      const [qi, oi, dOi] = [cpu(pool, row(x.q)), cpu(pool, row(o)), cpu(pool, row(x.dO))];
      const lsei = cpu(pool, pool.add(lseColumns(lse, i, 1)));
      const ref = pool.addAll(referenceBackend.forward(qi, k, v, { causal: false }));
      expectRel(oi, ref.o, `o row ${i}`);
      expectRel(lsei, ref.lse, `lse row ${i}`);
      const r = pool.addAll(referenceBackend.backward(qi, k, v, oi, lsei, dOi, { causal: false }));
      expectRel(row(g.dq), r.dq, `dq row ${i}`);
    }
  });
});

describe.skipIf(noGpu)("cuda refuses what it cannot do, before launching", () => {
  test("f32 inputs, head dim 96, scale <= 0, cpu tensors, misaligned views", () => {
    using pool = new TensorPool();
    const make = (shape: number[], dtype: "f32" | "bf16" = "bf16", device = dev) => pool.add(randn(shape, { seed: seed++, dtype, device }));
    const [q, k, v] = [make([8, 4, 64]), make([8, 2, 64]), make([8, 2, 64])];
    expect(() => cudaBackend.forward(make([8, 4, 64], "f32"), make([8, 2, 64], "f32"), make([8, 2, 64], "f32"), { causal: true })).toThrow(
      "cuda.forward: q: the CUDA kernels take bf16 q, k, v (they accumulate in f32), got f32",
    );
    expect(() => cudaBackend.forward(make([8, 4, 96]), make([8, 2, 96]), make([8, 2, 96]), { causal: true })).toThrow(
      "cuda.forward: q: head dim D = 96 has no CUDA kernel (built for D in 64, 128)",
    );
    expect(() => cudaBackend.forward(q, k, v, { causal: true, scale: -0.1 })).toThrow("opts.scale: the CUDA kernels need scale > 0");
    expect(() =>
      cudaBackend.forward(make([8, 4, 64], "bf16", "cpu"), make([8, 2, 64], "bf16", "cpu"), make([8, 2, 64], "bf16", "cpu"), {
        causal: true,
      }),
    ).toThrow("q: the CUDA backend needs tensors on a cuda device");
    const flat = make([8 * 4 * 64 + 1]);
    const shifted = pool.add(pool.add(flat.narrow(1, 8 * 4 * 64)).reshape([8, 4, 64]));
    expect(() => cudaBackend.forward(shifted, k, v, { causal: true })).toThrow("q: the kernels need 16-byte aligned tensors");
    const o = pool.add(empty([8, 4, 64], { dtype: "bf16", device: dev }));
    const lse = pool.add(empty([4, 8], { dtype: "f32", device: dev }));
    const g = {
      dq: pool.add(empty([8, 4, 64], { dtype: "bf16", device: dev })),
      dk: pool.add(empty([8, 2, 64], { device: dev })),
      dv: pool.add(empty([8, 2, 64], { device: dev })),
    };
    expect(() => backwardAccumulate(q, k, v, o, lse, make([8, 4, 64]), g, { causal: true })).toThrow(
      "grads.dq: expected dtype f32, got bf16",
    );
    const lseWrong = pool.add(fromArray(new Array(32).fill(0), [8, 4], { device: dev }));
    expect(() => forwardInto(q, k, v, { o, lse: lseWrong }, { causal: true })).toThrow("out.lse: expected shape [4, 8], got [8, 4]");
  });
});

test("an unknown kernel set is refused on any device, before anything is loaded", () => {
  expect(() => createCudaBackend({ kernels: "fast" as never })).toThrow(
    'createCudaBackend: kernels: expected one of auto, mma, wgmma, got "fast"',
  );
});

test("deterministic: true is refused by name on any device (dq is summed with atomics); bad values too", () => {
  using pool = new TensorPool();
  const [q, k] = [pool.add(randn([4, 2, 64], { seed: 1, dtype: "bf16" })), pool.add(randn([4, 1, 64], { seed: 2, dtype: "bf16" }))];
  const lse = pool.add(empty([2, 4]));
  const backend = createCudaBackend();
  expect(() => backend.backward(q, k, k, q, lse, q, { causal: true, deterministic: true })).toThrow(
    "cuda.backward: opts.deterministic: our flash-attention kernels sum dq with f32 atomics (kernels/src/attention_kernels.cuh)",
  );
  expect(() => backend.backward(q, k, k, q, lse, q, { causal: true, deterministic: 1 as never })).toThrow(
    "cuda.backward: opts.deterministic: expected true or false, got 1",
  );
});

describe.skipIf(noGpu)("kernel choice", () => {
  test("auto: wgmma on compute capability 9.0, mma.sync elsewhere; mma everywhere; wgmma elsewhere refused by name", async () => {
    const { deviceInfo } = await import("@lightseq/cuda");
    const [major, minor] = deviceInfo(0).computeCapability;
    const hopper = major === 9 && minor === 0;
    expect(cudaAttentionKernels(0)).toBe(hopper ? "wgmma" : "mma.sync");
    expect(cudaAttentionKernels(0, "mma")).toBe("mma.sync");
    expect(createCudaBackend({ kernels: "mma" }).kernels).toBe("mma");
    if (hopper) expect(cudaAttentionKernels(0, "wgmma")).toBe("wgmma");
    else {
      const refused = 'kernels "wgmma": the wgmma kernels need a compute capability 9.0 GPU (H100, H200), and cuda:0 is not one';
      expect(() => cudaAttentionKernels(0, "wgmma")).toThrow(refused);
      // The same refusal from a launch (the library's code, explained from the call's own arguments).
      using pool = new TensorPool();
      const x = inputs(pool, 8, 8, 2, 2, 64);
      expect(() => createCudaBackend({ kernels: "wgmma" }).forward(x.q, x.k, x.v, { causal: true })).toThrow(refused);
    }
  });

  test("both kernel sets the device runs agree (forward and backward)", () => {
    const sets = cudaAttentionKernels(0, "auto") === "wgmma" ? (["wgmma", "mma"] as const) : (["mma"] as const);
    using pool = new TensorPool();
    const x = inputs(pool, 200, 260, 4, 2, 128);
    const runs = sets.map((kernels) => {
      const b = createCudaBackend({ kernels });
      const f = pool.addAll(b.forward(x.q, x.k, x.v, { causal: true }));
      return { ...f, ...pool.addAll(b.backward(x.q, x.k, x.v, f.o, f.lse, x.dO, { causal: true })) };
    });
    const a = runs[0] as (typeof runs)[number];
    const b = runs[runs.length - 1] as (typeof runs)[number];
    for (const name of ["o", "lse", "dq", "dk", "dv"] as const) expectRel(b[name], a[name], `${name} (${sets.join(" vs ")})`);
  });
});
