import { describe, expect, test } from "bun:test";
import { cast, fromArray, toFloat32Array, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { linearBackwardInput, linearBackwardWeight, linearForward } from "./linear.ts";
import { numericGrad, pick, randomF64, sampleIndices } from "./testing.ts";

// f64 y = x W^T, the oracle for the finite differences
function forwardF64(x: Float64Array, w: Float64Array, T: number, I: number, O: number): Float64Array {
  const y = new Float64Array(T * O);
  for (let t = 0; t < T; t++)
    for (let o = 0; o < O; o++)
      for (let i = 0; i < I; i++) y[t * O + o] = (y[t * O + o] as number) + (x[t * I + i] as number) * (w[o * I + i] as number);
  return y;
}

describe("linear (CPU reference)", () => {
  const [T, I, O] = [4, 5, 3];
  const x = randomF64(T * I, 1);
  const w = randomF64(O * I, 2);
  const g = randomF64(T * O, 3);
  const loss = (xx: Float64Array, ww: Float64Array) => {
    const y = forwardF64(xx, ww, T, I, O);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += (y[i] as number) * (g[i] as number);
    return s;
  };

  test("forward is x @ W^T", () => {
    expectClose(linearForward(fromArray(x, [T, I]), fromArray(w, [O, I])), forwardF64(x, w, T, I, O), { atol: 1e-6, rtol: 1e-6 });
  });

  test("input and weight gradients against finite differences; dW accumulates in place", () => {
    const dx = linearBackwardInput(fromArray(g, [T, O]), fromArray(w, [O, I]));
    const ix = sampleIndices(T * I, T * I);
    expectClose(
      pick(toFloat32Array(dx), ix),
      numericGrad((xx) => loss(xx, w), x, ix),
      { atol: 1e-6, rtol: 1e-5 },
    );
    const dW = fromArray(new Float64Array(O * I).fill(2), [O, I]);
    linearBackwardWeight(fromArray(g, [T, O]), fromArray(x, [T, I]), dW);
    const iw = sampleIndices(O * I, O * I);
    const num = numericGrad((ww) => loss(x, ww), w, iw);
    expectClose(
      pick(toFloat32Array(dW), iw),
      num.map((v) => v + 2),
      { atol: 1e-6, rtol: 1e-5 },
    );
  });

  test("bf16 operands accumulate into an f32 dW unrounded", () => {
    const dy = cast(fromArray(g, [T, O]), "bf16");
    const xb = cast(fromArray(x, [T, I]), "bf16");
    const dW = fromArray(new Float64Array(O * I).fill(1 / 3), [O, I]);
    linearBackwardWeight(dy, xb, dW);
    const gb = toFloat32Array(dy);
    const xr = toFloat32Array(xb);
    const ref = new Float64Array(O * I).fill(Math.fround(1 / 3));
    for (let t = 0; t < T; t++)
      for (let o = 0; o < O; o++)
        for (let i = 0; i < I; i++) ref[o * I + i] = (ref[o * I + i] as number) + (gb[t * O + o] as number) * (xr[t * I + i] as number);
    expectClose(dW, ref, { atol: 1e-7, rtol: 1e-6 }); // f32 result (a bf16 one would be off by ~4e-3)
  });

  test("bad arguments", () => {
    expect(() => linearForward(zeros([2, 3]), zeros([4, 5]))).toThrow(/linearForward: W: expected shape \[\*, 3\], got \[4, 5\]/);
    expect(() => linearBackwardWeight(zeros([2, 4]), zeros([2, 3]), zeros([4, 3], { dtype: "bf16" }))).toThrow(
      /dW: expected dtype f32, got bf16/,
    );
  });
});
