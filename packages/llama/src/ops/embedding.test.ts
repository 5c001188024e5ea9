import { describe, expect, test } from "bun:test";
import { fromArray, toFloat32Array, zeros } from "@lightseq/tensor";
import { expectClose } from "@lightseq/tensor/testing";
import {
  embeddingBackward,
  embeddingBackwardF64,
  embeddingForward,
  embeddingForwardF64,
  embeddingSegments,
  SEGMENT_ROWS,
} from "./embedding.ts";
import { dot, numericGrad, pick, randomF64, sampleIndices } from "./testing.ts";

describe("embedding (CPU reference)", () => {
  test("forward gathers rows", () => {
    const table = fromArray([0, 1, 10, 11, 20, 21], [3, 2]);
    const x = embeddingForward(fromArray([2, 0, 2], [3], { dtype: "i32" }), table);
    expect(Array.from(toFloat32Array(x))).toEqual([20, 21, 0, 1, 20, 21]);
  });

  test("backward with repeated tokens sums their rows into dTable (+=), against finite differences", () => {
    const [V, C] = [5, 3];
    const tokens = Int32Array.from([1, 3, 1, 1, 0, 3]);
    const T = tokens.length;
    const table = randomF64(V * C, 1);
    const dx = randomF64(T * C, 2);
    const d = embeddingBackwardF64(tokens, dx, V, C);
    const ix = sampleIndices(V * C, V * C);
    expectClose(
      pick(d, ix),
      numericGrad((tb) => dot(embeddingForwardF64(tokens, tb, C), dx), table, ix),
      { atol: 1e-9, rtol: 1e-9 },
    );
    // rows of tokens 2 and 4 (absent) get nothing; row 1 gets dx[0] + dx[2] + dx[3]
    for (let c = 0; c < C; c++) {
      expect(d[2 * C + c]).toBe(0);
      expect(d[1 * C + c]).toBeCloseTo((dx[c] as number) + (dx[2 * C + c] as number) + (dx[3 * C + c] as number), 12);
    }
    const dTable = fromArray(new Float64Array(V * C).fill(0.5), [V, C]);
    embeddingBackward(fromArray(tokens, [T], { dtype: "i32" }), fromArray(dx, [T, C]), dTable);
    expectClose(
      dTable,
      d.map((v) => v + 0.5),
      { atol: 1e-6, rtol: 1e-6 },
    );
  });

  test("segments: a stable permutation by token, frequent tokens cut into SEGMENT_ROWS-row segments with scratch slots", () => {
    const g = embeddingSegments(Int32Array.from([4, 1, 4, 0, 1, 4]), 6);
    expect(Array.from(g.perm)).toEqual([3, 1, 4, 0, 2, 5]);
    expect(Array.from(g.token)).toEqual([0, 1, 4]);
    expect(Array.from(g.start)).toEqual([0, 1, 3, 6]);
    expect(Array.from(g.slot)).toEqual([-1, -1, -1]);
    expect(g.multiToken.length).toBe(0);
    // token 2 appears 2 * SEGMENT_ROWS + 5 times, token 0 once
    const n = 2 * SEGMENT_ROWS + 5;
    const many = embeddingSegments(Int32Array.from([...Array(n).fill(2), 0]), 3);
    expect(Array.from(many.token)).toEqual([0, 2, 2, 2]);
    expect(Array.from(many.start)).toEqual([0, 1, 1 + SEGMENT_ROWS, 1 + 2 * SEGMENT_ROWS, n + 1]);
    expect(Array.from(many.slot)).toEqual([-1, 0, 1, 2]);
    expect(Array.from(many.multiToken)).toEqual([2]);
    expect(Array.from(many.multiStart)).toEqual([0, 3]);
  });

  test("a frequent token's segmented sum: f32 sums per segment, then added in order", () => {
    const T = 3 * SEGMENT_ROWS + 1;
    const C = 2;
    const tokens = new Int32Array(T).fill(1);
    const dx = randomF64(T * C, 3).map((v) => Math.fround(v));
    const dTable = fromArray(new Float64Array(2 * C).fill(0.125), [2, C]);
    embeddingBackward(fromArray(tokens, [T], { dtype: "i32" }), fromArray(dx, [T, C]), dTable);
    for (let c = 0; c < C; c++) {
      let d = Math.fround(0.125);
      for (let s0 = 0; s0 < T; s0 += SEGMENT_ROWS) {
        let p = 0;
        for (let t = s0; t < Math.min(T, s0 + SEGMENT_ROWS); t++) p = Math.fround(p + (dx[t * C + c] as number));
        d = Math.fround(d + p);
      }
      expect(toFloat32Array(dTable)[C + c]).toBe(d);
      expect(toFloat32Array(dTable)[c]).toBe(0.125);
    }
  });

  test("out-of-range tokens and bad shapes are refused by position", () => {
    const table = zeros([4, 2]);
    expect(() => embeddingForward(fromArray([0, 4], [2], { dtype: "i32" }), table)).toThrow(
      /embeddingForward: tokens\[1\] = 4 is outside the vocabulary \[0, 4\)/,
    );
    expect(() => embeddingBackward(fromArray([0, -1], [2], { dtype: "i32" }), zeros([2, 2]), zeros([4, 2]))).toThrow(/tokens\[1\] = -1/);
    expect(() => embeddingBackward(fromArray([0, 1], [2], { dtype: "i32" }), zeros([2, 3]), zeros([4, 2]))).toThrow(
      /dx: expected shape \[2, 2\], got \[2, 3\]/,
    );
    expect(() => embeddingForward(zeros([2]), table)).toThrow(/tokens: expected dtype i32, got f32/);
  });
});
