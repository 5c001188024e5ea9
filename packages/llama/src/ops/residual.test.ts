import { describe, expect, test } from "bun:test";
import { fromArray, toFloat32Array, zeros } from "@lightseq/tensor";
import { residualAdd } from "./residual.ts";

describe("residualAdd (CPU reference)", () => {
  test("x + r, and in place into x", () => {
    const x = fromArray([1, 2, 3, 4], [2, 2]);
    const r = fromArray([0.5, -2, 1, 0], [2, 2]);
    expect(Array.from(toFloat32Array(residualAdd(x, r)))).toEqual([1.5, 0, 4, 4]);
    residualAdd(x, r, { out: x }).dispose();
    expect(Array.from(toFloat32Array(x))).toEqual([1.5, 0, 4, 4]);
    expect(() => residualAdd(x, zeros([2, 3]))).toThrow(/residualAdd: r: expected shape \[2, 2\], got \[2, 3\]/);
  });
});
