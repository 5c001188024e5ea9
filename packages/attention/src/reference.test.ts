import { describe, expect, test } from "bun:test";
import { empty, fromArray, randn, roundBf16, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { type AttentionDims, defaultScale, kvHeadOf } from "./layout.ts";
import { backwardF64, forwardF64, referenceBackend, widenF64 } from "./reference.ts";
import { attentionBackendSuite } from "./testing.ts";

// The block-contract suite on the reference itself: it compares the reference with itself (its "equals
// the reference" test is skipped), so it exercises the suite's harness and the identities (GQA as
// repeated heads, block splits, edge rows, errors) rather than the math; the reference's correctness
// is held by the independent implementations below.
describe("harness check: the block-contract suite run on the reference against itself", () => {
  attentionBackendSuite(referenceBackend);
});

function randomF64(n: number, seed: number, std = 1): Float64Array {
  using t = randn([n], { seed, std });
  return widenF64(t);
}

/** An independent forward: the full score matrix per head, the mask as an explicit predicate, softmax. */
function maskedSoftmaxAttention(q: Float64Array, k: Float64Array, v: Float64Array, dims: AttentionDims, causal: boolean, scale: number) {
  const { Tq, Tk, Hq, Hkv, D } = dims;
  const visible = (i: number, j: number) => !causal || j <= i + (Tk - Tq);
  const o = new Float64Array(Tq * Hq * D);
  const lse = new Float64Array(Hq * Tq);
  for (let h = 0; h < Hq; h++) {
    const g = Math.floor((h * Hkv) / Hq);
    for (let i = 0; i < Tq; i++) {
      const s: number[] = [];
      for (let j = 0; j < Tk; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += (q[(i * Hq + h) * D + d] as number) * (k[(j * Hkv + g) * D + d] as number);
        s.push(visible(i, j) ? scale * dot : Number.NEGATIVE_INFINITY);
      }
      const m = Math.max(...s);
      if (m === Number.NEGATIVE_INFINITY) {
        lse[h * Tq + i] = m;
        continue;
      }
      const p = s.map((x) => Math.exp(x - m));
      const l = p.reduce((a, b) => a + b, 0);
      lse[h * Tq + i] = m + Math.log(l);
      for (let j = 0; j < Tk; j++) {
        for (let d = 0; d < D; d++)
          o[(i * Hq + h) * D + d] = (o[(i * Hq + h) * D + d] as number) + ((p[j] as number) / l) * (v[(j * Hkv + g) * D + d] as number);
      }
    }
  }
  return { o, lse };
}

const CASES: [string, AttentionDims, boolean][] = [
  ["MHA, full", { Tq: 6, Tk: 6, Hq: 2, Hkv: 2, D: 4 }, false],
  ["MHA, causal", { Tq: 7, Tk: 7, Hq: 2, Hkv: 2, D: 4 }, true],
  ["GQA 4/2, causal", { Tq: 5, Tk: 5, Hq: 4, Hkv: 2, D: 4 }, true],
  ["MQA 2/1, full, Tq != Tk", { Tq: 5, Tk: 8, Hq: 2, Hkv: 1, D: 4 }, false],
  ["causal, Tq < Tk", { Tq: 5, Tk: 9, Hq: 2, Hkv: 2, D: 4 }, true],
  ["causal, Tq > Tk (empty rows)", { Tq: 9, Tk: 5, Hq: 2, Hkv: 1, D: 4 }, true],
];

describe("reference forward", () => {
  test("a 2-token example by hand", () => {
    // q = [1, 2], k = [1, -1], v = [3, 5] (T = 2, H = 1, D = 1, scale 1, causal).
    const q = fromArray([1, 2], [2, 1, 1]);
    const k = fromArray([1, -1], [2, 1, 1]);
    const v = fromArray([3, 5], [2, 1, 1]);
    const { o, lse } = referenceBackend.forward(q, k, v, { causal: true, scale: 1 });
    const [e2, em2] = [Math.exp(2), Math.exp(-2)];
    expectClose(o, [3, (3 * e2 + 5 * em2) / (e2 + em2)], { atol: 0, rtol: 1e-7 });
    expectClose(lse, [1, Math.log(e2 + em2)], { atol: 0, rtol: 1e-7 });
  });

  for (const [name, dims, causal] of CASES) {
    test(`equals full-matrix masked softmax in f64: ${name}`, () => {
      const { Tq, Tk, Hq, Hkv, D } = dims;
      const q = randomF64(Tq * Hq * D, 1);
      const k = randomF64(Tk * Hkv * D, 2);
      const v = randomF64(Tk * Hkv * D, 3);
      const got = forwardF64(q, k, v, dims, causal, 0.7);
      const ref = maskedSoftmaxAttention(q, k, v, dims, causal, 0.7);
      expectClose(got.o, ref.o, { atol: 1e-13, rtol: 1e-12, label: "o" });
      expectClose(got.lse, ref.lse, { atol: 1e-13, rtol: 1e-12, label: "lse" });
    });
  }

  test("kvHeadOf groups consecutive query heads", () => {
    expect([0, 1, 2, 3, 4, 5].map((h) => kvHeadOf(h, 6, 3))).toEqual([0, 0, 1, 1, 2, 2]);
    expect([0, 1, 2, 3].map((h) => kvHeadOf(h, 4, 1))).toEqual([0, 0, 0, 0]);
  });

  test("f32 and bf16 outputs are the f64 result rounded once; lse is f32 for both", () => {
    for (const dtype of ["f32", "bf16"] as const) {
      using q = randn([6, 4, 8], { seed: 11, dtype });
      using k = randn([6, 2, 8], { seed: 12, dtype });
      using v = randn([6, 2, 8], { seed: 13, dtype });
      const { o, lse } = referenceBackend.forward(q, k, v, { causal: true });
      const dims = { Tq: 6, Tk: 6, Hq: 4, Hkv: 2, D: 8 };
      const r = forwardF64(widenF64(q), widenF64(k), widenF64(v), dims, true, defaultScale(8));
      expect(o.dtype).toBe(dtype);
      expect(lse.dtype).toBe("f32");
      const round = dtype === "bf16" ? roundBf16 : Math.fround;
      expect(Array.from(toFloat32Array(o))).toEqual(Array.from(r.o, round));
      expect(Array.from(toFloat32Array(lse))).toEqual(Array.from(r.lse, Math.fround));
      o.dispose();
      lse.dispose();
    }
  });

  test("Tk = 0: every row is empty (o 0, lse -Inf) and gradients are zero", () => {
    using q = randn([3, 2, 4], { seed: 1 });
    using k = empty([0, 1, 4]);
    using v = empty([0, 1, 4]);
    using dO = randn([3, 2, 4], { seed: 2 });
    for (const causal of [true, false]) {
      const { o, lse } = referenceBackend.forward(q, k, v, { causal });
      expect(toFloat32Array(o).every((x) => x === 0)).toBe(true);
      expect(toFloat32Array(lse).every((x) => x === Number.NEGATIVE_INFINITY)).toBe(true);
      const g = referenceBackend.backward(q, k, v, o, lse, dO, { causal });
      expect(toFloat32Array(g.dq).every((x) => x === 0)).toBe(true);
      expect(g.dk.shape).toEqual([0, 1, 4]);
      for (const t of [o, lse, g.dq, g.dk, g.dv]) t.dispose();
    }
  });
});

describe("reference backward equals central finite differences in f64", () => {
  // Loss = sum(o * W), so dL/do = W plays dO. Step 1e-5: truncation ~1e-10 * |L'''|, cancellation
  // ~1e-16 * |L| / 1e-5 ~ 1e-10; gradients are O(0.1), so 1e-7 separates rounding from any real error.
  for (const [name, dims, causal] of CASES) {
    test(name, () => {
      const { Tq, Tk, Hq, Hkv, D } = dims;
      const scale = defaultScale(D);
      const x = { q: randomF64(Tq * Hq * D, 21), k: randomF64(Tk * Hkv * D, 22), v: randomF64(Tk * Hkv * D, 23) };
      const W = randomF64(Tq * Hq * D, 24);
      const loss = () => forwardF64(x.q, x.k, x.v, dims, causal, scale).o.reduce((acc, e, i) => acc + e * (W[i] as number), 0);
      const { o, lse } = forwardF64(x.q, x.k, x.v, dims, causal, scale);
      const g = backwardF64(x.q, x.k, x.v, o, lse, W, dims, causal, scale);
      const step = 1e-5;
      for (const [name, grad] of [
        ["q", g.dq],
        ["k", g.dk],
        ["v", g.dv],
      ] as const) {
        const t = x[name];
        const fd = new Float64Array(t.length);
        for (let e = 0; e < t.length; e++) {
          const keep = t[e] as number;
          t[e] = keep + step;
          const up = loss();
          t[e] = keep - step;
          const down = loss();
          t[e] = keep;
          fd[e] = (up - down) / (2 * step);
        }
        expectClose(grad, fd, { atol: 1e-7, rtol: 1e-6, label: `d${name}` });
        expect(grad.some((e) => e !== 0)).toBe(true);
      }
    });
  }
});

describe("reference backward edge cases", () => {
  test("lse = -Inf with visible keys contributes no gradient (the row attends to nothing globally)", () => {
    using q = randn([2, 1, 4], { seed: 1 });
    using k = randn([2, 1, 4], { seed: 2 });
    using dO = randn([2, 1, 4], { seed: 3 });
    const { o } = referenceBackend.forward(q, k, k, { causal: false });
    using lse = fromArray([Number.NEGATIVE_INFINITY, Number.NEGATIVE_INFINITY], [1, 2]);
    const g = referenceBackend.backward(q, k, k, o, lse, dO, { causal: false });
    for (const t of [g.dq, g.dk, g.dv] as Tensor[]) expect(toFloat32Array(t).every((e) => e === 0)).toBe(true);
  });
});
