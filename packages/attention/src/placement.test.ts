// Placement against hand-written expectations (not against placeSequence itself, which DistAttn's
// tests also use to build their rows, so a wrong split there would pass them).

import { expect, test } from "bun:test";
import { fromArray, toFloat32Array } from "@lightseq/tensor";
import { gatherRows, localPositions, localRanges, placeSequence } from "./placement.ts";
import { makeSchedule } from "./schedule.ts";

test("zigzag, P = 2, N = 10: the first chunks take the extra tokens; rank r holds chunks r and 2P-1-r", () => {
  const s = makeSchedule("zigzag", 2);
  const p = placeSequence(s, 10);
  expect(p.len).toEqual([3, 3, 2, 2]);
  expect(p.start).toEqual([0, 3, 6, 8]);
  expect(s.chunksOf).toEqual([
    [0, 3],
    [1, 2],
  ]);
  expect(p.localLen).toEqual([5, 5]);
  expect(p.localStart).toEqual([
    [0, 3],
    [0, 3],
  ]);
  expect(localRanges(s, p, 0)).toEqual([
    [0, 3],
    [8, 2],
  ]);
  expect(localRanges(s, p, 1)).toEqual([
    [3, 3],
    [6, 2],
  ]);
});

test("localPositions: the global position of every local row (what RoPE and the loss shift use)", () => {
  const z = makeSchedule("zigzag", 2);
  const pz = placeSequence(z, 10);
  expect(Array.from(localPositions(z, pz, 0))).toEqual([0, 1, 2, 8, 9]);
  expect(Array.from(localPositions(z, pz, 1))).toEqual([3, 4, 5, 6, 7]);
  const z3 = makeSchedule("zigzag", 3);
  const p3 = placeSequence(z3, 14); // 6 chunks: lengths 3, 3, 2, 2, 2, 2
  expect(p3.len).toEqual([3, 3, 2, 2, 2, 2]);
  expect(Array.from(localPositions(z3, p3, 0))).toEqual([0, 1, 2, 12, 13]);
  expect(Array.from(localPositions(z3, p3, 1))).toEqual([3, 4, 5, 10, 11]);
  expect(Array.from(localPositions(z3, p3, 2))).toEqual([6, 7, 8, 9]);
  const ring = makeSchedule("ring", 3);
  const pr = placeSequence(ring, 11);
  expect(pr.len).toEqual([4, 4, 3]);
  expect(Array.from(localPositions(ring, pr, 2))).toEqual([8, 9, 10]);
});

test("the zigzag split itself: rank r holds chunks r and 2P-1-r for every P, and owner inverts it", () => {
  for (const P of [1, 2, 3, 4, 8]) {
    const s = makeSchedule("zigzag", P);
    expect(s.chunks).toBe(2 * P);
    for (let r = 0; r < P; r++) {
      expect(s.chunksOf[r]).toEqual([r, 2 * P - 1 - r]);
      expect(s.owner[r]).toBe(r);
      expect(s.owner[2 * P - 1 - r]).toBe(r);
    }
  }
  // Contiguous schedules: chunk r on rank r.
  for (const name of ["ring", "lightseq"] as const) expect(makeSchedule(name, 3).chunksOf).toEqual([[0], [1], [2]]);
});

test("a sequence shorter than the chunks: empty chunks at the end, positions still global", () => {
  const s = makeSchedule("zigzag", 3);
  const p = placeSequence(s, 4);
  expect(p.len).toEqual([1, 1, 1, 1, 0, 0]);
  expect(p.start).toEqual([0, 1, 2, 3, 4, 4]);
  expect(Array.from(localPositions(s, p, 0))).toEqual([0]);
  expect(Array.from(localPositions(s, p, 2))).toEqual([2, 3]);
  expect(() => placeSequence(s, -1)).toThrow("placeSequence: N must be a non-negative integer, got -1");
});

test("gatherRows: a rank's rows of a whole-sequence tensor, back to back", () => {
  const t = fromArray(
    Array.from({ length: 10 * 2 }, (_, i) => i),
    [10, 2],
  );
  const s = makeSchedule("zigzag", 2);
  const got = gatherRows(t, localRanges(s, placeSequence(s, 10), 0));
  expect(got.shape).toEqual([5, 2]);
  expect(Array.from(toFloat32Array(got))).toEqual([0, 1, 2, 3, 4, 5, 16, 17, 18, 19]);
});
