import { describe, expect, test } from "bun:test";
import { fromArray, toFloat32Array, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { IGNORE_INDEX, lmHeadLogits, lmHeadLoss } from "./lm-head-loss.ts";
import { numericGrad, pick, randomF64, sampleIndices } from "./testing.ts";

// Naive f64 oracle over the full [T, V] logits: loss sum over valid labels, and its gradients scaled.
function naive(h: Float64Array, w: Float64Array, labels: Int32Array, T: number, C: number, V: number) {
  let loss = 0;
  let count = 0;
  const dlog = new Float64Array(T * V);
  for (let t = 0; t < T; t++) {
    const l = new Float64Array(V);
    for (let v = 0; v < V; v++) for (let c = 0; c < C; c++) l[v] = (l[v] as number) + (h[t * C + c] as number) * (w[v * C + c] as number);
    if (labels[t] === IGNORE_INDEX) continue;
    count++;
    const z = l.reduce((s, x) => s + Math.exp(x), 0);
    loss += Math.log(z) - (l[labels[t] as number] as number);
    for (let v = 0; v < V; v++) dlog[t * V + v] = Math.exp(l[v] as number) / z - (v === labels[t] ? 1 : 0);
  }
  return { loss, count, dlog };
}

describe("lmHeadLoss (CPU reference)", () => {
  const [T, C, V] = [11, 6, 13];
  const h = randomF64(T * C, 1);
  const w = randomF64(V * C, 2, 0.5);
  const labels = Int32Array.from([3, IGNORE_INDEX, 0, 12, 5, 5, IGNORE_INDEX, 7, 1, 2, 9]);
  const ref = naive(h, w, labels, T, C, V);
  const scale = 1 / 9;

  test("loss sum, count, dh and dW (+=) equal the full-logits computation for chunk sizes that do not divide T", () => {
    const dhRef = new Float64Array(T * C);
    const dWRef = new Float64Array(V * C);
    for (let t = 0; t < T; t++)
      for (let v = 0; v < V; v++) {
        const d = scale * (ref.dlog[t * V + v] as number);
        for (let c = 0; c < C; c++) {
          dhRef[t * C + c] = (dhRef[t * C + c] as number) + d * (w[v * C + c] as number);
          dWRef[v * C + c] = (dWRef[v * C + c] as number) + d * (h[t * C + c] as number);
        }
      }
    expect(ref.count).toBe(9);
    for (const chunkTokens of [1, 4, 11, 64]) {
      const dW = fromArray(new Float64Array(V * C).fill(0.25), [V, C]);
      const r = lmHeadLoss(fromArray(h, [T, C]), fromArray(w, [V, C]), fromArray(labels, [T], { dtype: "i32" }), {
        gradScale: scale,
        chunkTokens,
        dW,
      });
      expect(r.count).toBe(9);
      // f32 logits and f32 storage of the gradients: ~1e-7 relative per element
      expect(Math.abs(r.lossSum - ref.loss)).toBeLessThan(1e-5 * Math.abs(ref.loss));
      expectClose(r.dh as never, dhRef, { atol: 1e-7, rtol: 1e-5, label: `dh chunk ${chunkTokens}` });
      expectClose(
        dW,
        dWRef.map((x) => x + 0.25),
        { atol: 1e-7, rtol: 1e-5, label: `dW chunk ${chunkTokens}` },
      );
      // rows of ignored labels get no gradient
      const dh = toFloat32Array(r.dh as never);
      for (let c = 0; c < C; c++) expect(dh[1 * C + c]).toBe(0);
    }
  });

  test("dh is the gradient of the scaled loss sum (finite differences on the f64 oracle)", () => {
    const r = lmHeadLoss(fromArray(h, [T, C]), fromArray(w, [V, C]), fromArray(labels, [T], { dtype: "i32" }), {
      gradScale: 1,
      chunkTokens: 3,
      dh: zeros([T, C]),
    });
    const ix = sampleIndices(T * C, 25);
    const num = numericGrad((hh) => naive(hh, w, labels, T, C, V).loss, h, ix);
    expectClose(pick(toFloat32Array(r.dh as never), ix), num, { atol: 1e-6, rtol: 1e-5 });
  });

  test("forward only: no gradients; every label ignored gives 0 and count 0", () => {
    const r = lmHeadLoss(fromArray(h, [T, C]), fromArray(w, [V, C]), fromArray(labels, [T], { dtype: "i32" }), { gradScale: 1 });
    expect(r.dh).toBeUndefined();
    expect(Math.abs(r.lossSum - ref.loss)).toBeLessThan(1e-5 * Math.abs(ref.loss));
    const none = lmHeadLoss(fromArray(h, [T, C]), fromArray(w, [V, C]), fromArray(new Int32Array(T).fill(-100), [T], { dtype: "i32" }), {
      gradScale: 1,
    });
    expect(none).toEqual({ lossSum: 0, count: 0 });
  });

  test("lmHeadLogits are the full logits; bad labels are refused by position", () => {
    const logits = lmHeadLogits(fromArray(h, [T, C]), fromArray(w, [V, C]));
    expect(logits.shape).toEqual([T, V]);
    expect(() => lmHeadLoss(zeros([2, 6]), zeros([13, 6]), fromArray([0, 13], [2], { dtype: "i32" }), { gradScale: 1 })).toThrow(
      /lmHeadLoss: labels\[1\] = 13 is neither a token in \[0, 13\) nor the ignore index -100/,
    );
    expect(() => lmHeadLoss(zeros([2, 6]), zeros([13, 6]), fromArray([0, 1], [2], { dtype: "i32" }), {} as never)).toThrow(
      /o.gradScale: expected a finite number/,
    );
  });
});
