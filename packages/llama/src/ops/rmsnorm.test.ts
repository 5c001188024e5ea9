import { describe, expect, test } from "bun:test";
import { fromArray, roundBf16, toFloat32Array, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { residualRmsnormForward, rmsnormBackward, rmsnormBackwardF64, rmsnormForward, rmsnormForwardF64 } from "./rmsnorm.ts";
import { dot, numericGrad, pick, randomF64, sampleIndices } from "./testing.ts";

const [T, C, eps] = [5, 12, 1e-5];
const f32 = (a: Float64Array, shape: number[], dtype: "f32" | "bf16" = "f32") => fromArray(a, shape, { dtype });

describe("rmsnorm (CPU reference)", () => {
  test("forward equals the formula, rstd saved", () => {
    const x = [3, 4, 0, 0];
    const w = [1, 2, 0.5, -1];
    const { y, rstd } = rmsnormForward(fromArray(x, [1, 4]), fromArray(w, [4]), 1e-6);
    const r = 1 / Math.sqrt((9 + 16) / 4 + 1e-6); // mean square 6.25
    expectClose(rstd, [r], { atol: 0, rtol: 1e-7 });
    expectClose(y, [3 * r, 8 * r, 0, 0], { atol: 0, rtol: 1e-7 });
  });

  test("bf16 inputs: n is rounded to bf16 before the weight multiply (HF order), y rounded once", () => {
    const x = randomF64(T * C, 1).map(roundBf16);
    const w = randomF64(C, 2).map((v) => roundBf16(1 + 0.1 * v));
    const { y } = rmsnormForward(f32(x, [T, C], "bf16"), f32(w, [C], "bf16"), eps);
    const ref = rmsnormForwardF64(x, w, T, C, eps, roundBf16).y.map(roundBf16);
    expect(Array.from(toFloat32Array(y))).toEqual(Array.from(ref));
  });

  test("backward (f64) against central finite differences, dx and dw", () => {
    const x = randomF64(T * C, 3);
    const w = randomF64(C, 4);
    const g = randomF64(T * C, 5);
    const loss = (xx: Float64Array, ww: Float64Array) => dot(rmsnormForwardF64(xx, ww, T, C, eps).y, g);
    const { rstd } = rmsnormForwardF64(x, w, T, C, eps);
    const { dx, dw } = rmsnormBackwardF64(x, w, rstd, g, T, C);
    const ix = sampleIndices(T * C, 30);
    expectClose(
      pick(dx, ix),
      numericGrad((xx) => loss(xx, w), x, ix),
      { atol: 1e-8, rtol: 1e-6, label: "dx" },
    );
    const iw = sampleIndices(C, C);
    expectClose(
      pick(dw, iw),
      numericGrad((ww) => loss(x, ww), w, iw),
      { atol: 1e-8, rtol: 1e-6, label: "dw" },
    );
  });

  test("tensor backward (f32) matches the f64 core; dw accumulates; residual is added", () => {
    const x = randomF64(T * C, 6);
    const w = randomF64(C, 7);
    const g = randomF64(T * C, 8);
    const res = randomF64(T * C, 9);
    const xt = f32(x, [T, C]);
    const wt = f32(w, [C]);
    const { rstd } = rmsnormForward(xt, wt, eps);
    const dw = fromArray(new Float64Array(C).fill(1), [C]);
    const dx = rmsnormBackward(xt, wt, rstd, f32(g, [T, C]), dw, { residual: f32(res, [T, C]) });
    const ref = rmsnormBackwardF64(x, w, rmsnormForwardF64(x, w, T, C, eps).rstd, g, T, C);
    // f32 storage of rstd and of the result: ~1e-7 relative, a few ulps through the row dot product
    expectClose(
      dx,
      ref.dx.map((v, i) => v + (res[i] as number)),
      { atol: 1e-6, rtol: 1e-5 },
    );
    expectClose(
      dw,
      ref.dw.map((v) => v + 1),
      { atol: 1e-6, rtol: 1e-5 },
    );
  });

  test("fused residual + norm equals add then norm", () => {
    const x = randomF64(T * C, 10).map(roundBf16);
    const r = randomF64(T * C, 11).map(roundBf16);
    const w = randomF64(C, 12).map(roundBf16);
    const fused = residualRmsnormForward(f32(x, [T, C], "bf16"), f32(r, [T, C], "bf16"), f32(w, [C], "bf16"), eps);
    const h = x.map((v, i) => roundBf16(v + (r[i] as number)));
    expect(Array.from(toFloat32Array(fused.h))).toEqual(Array.from(h));
    const sep = rmsnormForward(f32(h, [T, C], "bf16"), f32(w, [C], "bf16"), eps);
    expect(Array.from(toFloat32Array(fused.y))).toEqual(Array.from(toFloat32Array(sep.y)));
    expect(Array.from(toFloat32Array(fused.rstd))).toEqual(Array.from(toFloat32Array(sep.rstd)));
  });

  test("bad arguments name the op and the argument", () => {
    expect(() => rmsnormForward(zeros([2, 3]), zeros([4]), eps)).toThrow(/rmsnormForward: w: expected shape \[3\], got \[4\]/);
    expect(() => rmsnormForward(zeros([2, 3]), zeros([3]), 0)).toThrow(/eps: expected a positive number/);
    expect(() => rmsnormBackward(zeros([2, 3]), zeros([3]), zeros([2]), zeros([2, 3]), zeros([3], { dtype: "bf16" }))).toThrow(
      /rmsnormBackward: dw: expected dtype f32, got bf16/,
    );
  });
});
