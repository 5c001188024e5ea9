import { describe, expect, test } from "bun:test";
import { fromArray, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import { swigluBackward, swigluBackwardF64, swigluForward, swigluForwardF64 } from "./swiglu.ts";
import { dot, numericGrad, pick, randomF64, sampleIndices } from "./testing.ts";

describe("swiglu (CPU reference)", () => {
  test("forward equals silu(gate) * up", () => {
    const gu = fromArray([0, 1, -2, 3, 5, 7], [1, 6]);
    const silu = (g: number) => g / (1 + Math.exp(-g));
    expectClose(swigluForward(gu), [silu(0) * 3, silu(1) * 5, silu(-2) * 7], { atol: 0, rtol: 1e-7 });
  });

  test("backward against finite differences (f64), tensor path (f32) matches", () => {
    const [T, F] = [4, 6];
    const gu = randomF64(T * 2 * F, 1, 2);
    const da = randomF64(T * F, 2);
    const d = swigluBackwardF64(gu, da, T, F);
    const ix = sampleIndices(T * 2 * F, 48);
    expectClose(
      pick(d, ix),
      numericGrad((x) => dot(swigluForwardF64(x, T, F), da), gu, ix),
      { atol: 1e-8, rtol: 1e-6 },
    );
    expectClose(swigluBackward(fromArray(gu, [T, 2 * F]), fromArray(da, [T, F])), d, { atol: 1e-6, rtol: 1e-6 });
  });

  test("bad arguments", () => {
    expect(() => swigluForward(zeros([2, 5]))).toThrow(/swigluForward: gu: expected \[T, 2F\] \(gate \| up\), got an odd width 5/);
    expect(() => swigluBackward(zeros([2, 4]), zeros([2, 3]))).toThrow(/swigluBackward: da: expected shape \[2, 2\], got \[2, 3\]/);
  });
});
