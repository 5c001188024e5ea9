// The cuDNN block attention (cudnn/) against the reference through the shared block-contract suite,
// plus its refusals. Skipped (visibly) without a GPU or without a usable cuDNN; `bun run test:gpu` makes
// a missing GPU an error, and LIGHTSEQ_REQUIRE_CUDNN=1 does the same for a missing cuDNN.
//
// Tolerance: the suite's bf16 default (atol = rtol = 2e-2 per element): cuDNN, like our kernels, rounds P
// and dS to bf16 before the P V, dS K and dS^T Q products and writes o, dq, dk, dv in bf16. The
// deterministic backward is compared with itself to the bit, and with the default one within that.

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { DeviceAttr, deviceAttribute, skipWithoutGpu } from "@lightseq/cuda";
import { empty, randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import type { AttentionGrads } from "./block.ts";
import { createCudnnBackend, cudnnAvailable, cudnnBackend, cudnnBackwardInto, cudnnForwardInto, cudnnPlans } from "./cudnn/index.ts";
import { attentionBackendSuite, TensorPool } from "./testing.ts";

const noGpu = skipWithoutGpu();
const available = noGpu ? { ok: false, reason: "no GPU" } : cudnnAvailable();
if (!noGpu && !available.ok && process.env.LIGHTSEQ_REQUIRE_CUDNN === "1") {
  throw new Error(`LIGHTSEQ_REQUIRE_CUDNN=1 but the cuDNN backend is unavailable: ${available.reason}`);
}
const skip = !available.ok;
/** Why the cuDNN tests are skipped, in their names (shown as skipped, never as a pass). */
const why = skip ? ` (skipped: ${available.reason.split("\n")[0]})` : "";
const dev = "cuda:0";
// The CPU reference at a few hundred tokens takes seconds, and every new shape builds a cuDNN plan
// (cuDNN may compile its kernel at run time on the first one).
setDefaultTimeout(300_000);

let seed = Number(process.env.LIGHTSEQ_TEST_SEED ?? Date.now() % 1_000_000);

// Sequence lengths x17: odd, not multiples of cuDNN's tiles, and spanning several of them.
describe.skipIf(skip)(`cudnn backend: block-contract suite${why}`, () => {
  for (const headDim of [64, 128]) attentionBackendSuite(cudnnBackend, { device: dev, dtypes: ["bf16"], headDim, seqMultiple: 17 });
});

describe.skipIf(skip)("cudnn refuses what it cannot do, before launching", () => {
  test("f32 inputs, head dim 96, scale <= 0, misaligned views, wrong output dtypes", () => {
    using pool = new TensorPool();
    const make = (shape: number[], dtype: "f32" | "bf16" = "bf16") => pool.add(randn(shape, { seed: seed++, dtype, device: dev }));
    const [q, k, v] = [make([8, 4, 64]), make([8, 2, 64]), make([8, 2, 64])];
    expect(() => cudnnBackend.forward(make([8, 4, 64], "f32"), make([8, 2, 64], "f32"), make([8, 2, 64], "f32"), { causal: true })).toThrow(
      "cudnn.forward: q: the cuDNN backend takes bf16 q, k, v",
    );
    expect(() => cudnnBackend.forward(make([8, 4, 96]), make([8, 2, 96]), make([8, 2, 96]), { causal: true })).toThrow(
      "cudnn.forward: q: head dim D = 96 is not supported by the cuDNN backend (D in 64, 128)",
    );
    expect(() => cudnnBackend.forward(q, k, v, { causal: true, scale: -0.1 })).toThrow(
      "opts.scale: the cuDNN backend is validated for scale > 0 only",
    );
    const flat = make([8 * 4 * 64 + 1]);
    const shifted = pool.add(pool.add(flat.narrow(1, 8 * 4 * 64)).reshape([8, 4, 64]));
    expect(() => cudnnBackend.forward(shifted, k, v, { causal: true })).toThrow("q: cuDNN's tensors are declared 16-byte aligned");
    const o = pool.add(empty([8, 4, 64], { dtype: "bf16", device: dev }));
    const lse = pool.add(empty([4, 8], { dtype: "f32", device: dev }));
    expect(() => cudnnForwardInto(q, k, v, { o, lse: pool.add(empty([8, 4], { device: dev })) }, { causal: true })).toThrow(
      "out.lse: expected shape [4, 8], got [8, 4]",
    );
    const g = {
      dq: pool.add(empty([8, 4, 64], { device: dev })),
      dk: pool.add(empty([8, 2, 64], { dtype: "bf16", device: dev })),
      dv: pool.add(empty([8, 2, 64], { dtype: "bf16", device: dev })),
    };
    expect(() => cudnnBackwardInto(q, k, v, o, lse, make([8, 4, 64]), g, { causal: true })).toThrow(
      "grads.dq: expected dtype bf16, got f32",
    );
  });
});

/** "" when a and b hold the same bits (bf16 widens to f32 exactly and one-to-one), else what differs. */
function bitDifference(a: Tensor, b: Tensor): string {
  const [x, y] = [new Uint32Array(toFloat32Array(a).buffer), new Uint32Array(toFloat32Array(b).buffer)];
  let n = 0;
  let first = -1;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === y[i]) continue;
    if (first < 0) first = i;
    n++;
  }
  return n === 0 ? "" : `${n} of ${x.length} elements differ, first at ${first}`;
}

describe.skipIf(skip)(`cudnn deterministic backward${why}`, () => {
  test("causal, fresh random inputs: two runs equal to the bit (backend default and per-call option); within tolerance of the default backward", () => {
    const det = createCudnnBackend({ deterministic: true });
    const major = deviceAttribute(DeviceAttr.computeCapabilityMajor, 0);
    // [Tq, Tk, Hq, Hkv]: the square causal block and a query chunk against a longer key prefix (DistAttn),
    // long enough that several key tiles add into each dq row; odd lengths, GQA.
    for (const [Tq, Tk, Hq, Hkv] of [
      [1041, 1041, 8, 2],
      [519, 1553, 4, 4],
    ] as const) {
      using pool = new TensorPool();
      const make = (shape: number[]) => pool.add(randn(shape, { seed: seed++, dtype: "bf16", device: dev }));
      const [q, k, v, dO] = [make([Tq, Hq, 128]), make([Tk, Hkv, 128]), make([Tk, Hkv, 128]), make([Tq, Hq, 128])];
      const { o, lse } = pool.addAll(cudnnBackend.forward(q, k, v, { causal: true }));
      const label = `Tq=${Tq} Tk=${Tk} Hq=${Hq} Hkv=${Hkv}`;
      if (major === 10) {
        expect(() => det.backward(q, k, v, o, lse, dO, { causal: true })).toThrow(
          "cudnn: deterministic backward: on compute capability 10.x",
        );
        continue;
      }
      const runs: AttentionGrads[] = [
        pool.addAll(det.backward(q, k, v, o, lse, dO, { causal: true })),
        pool.addAll(det.backward(q, k, v, o, lse, dO, { causal: true })),
        pool.addAll(cudnnBackend.backward(q, k, v, o, lse, dO, { causal: true, deterministic: true })),
      ];
      const fast = pool.addAll(cudnnBackend.backward(q, k, v, o, lse, dO, { causal: true }));
      for (const name of ["dq", "dk", "dv"] as const) {
        expect(`${label} ${name}: ${bitDifference(runs[0]?.[name] as Tensor, runs[1]?.[name] as Tensor)}`).toBe(`${label} ${name}: `);
        expect(`${label} ${name}: ${bitDifference(runs[0]?.[name] as Tensor, runs[2]?.[name] as Tensor)}`).toBe(`${label} ${name}: `);
        expectClose(runs[0]?.[name] as Tensor, fast[name], { atol: 2e-2, rtol: 2e-2, label: `${label} ${name} deterministic vs default` });
      }
    }
    // The deterministic plans are their own, on engines that do not say NONDETERMINISTIC (printed for the log).
    const backward = cudnnPlans().filter((p) => p.pass === "backward");
    for (const p of backward)
      console.log(
        `cudnn plan ${p.key}: engine ${p.engine}, NONDETERMINISTIC note ${p.nondeterministicNote}, workspace ${p.workspaceBytes} B`,
      );
    if (major !== 10) {
      const detPlans = backward.filter((p) => p.key.endsWith("deterministic=true"));
      expect(detPlans.length).toBeGreaterThanOrEqual(2);
      for (const p of detPlans) expect(p.nondeterministicNote).not.toBe(true);
    }
  });
});

test("cpu tensors are refused before cuDNN is looked for", () => {
  using pool = new TensorPool();
  const make = (shape: number[]) => pool.add(randn(shape, { seed: seed++, dtype: "bf16" }));
  expect(() => cudnnBackend.forward(make([4, 2, 64]), make([4, 1, 64]), make([4, 1, 64]), { causal: false })).toThrow(
    "cudnn.forward: q: the cuDNN backend needs tensors on a cuda device",
  );
});

test("cudnnAvailable() answers with a reason and never throws", () => {
  const a = cudnnAvailable();
  expect(typeof a.ok).toBe("boolean");
  expect(a.reason.length).toBeGreaterThan(0);
});
