// Placement of a global sequence on ranks for a schedule: chunk c covers global tokens
// [start[c], start[c] + len[c]); a rank stores its chunks back to back in schedule.chunksOf[rank]
// order. A length not divisible by the number of chunks is cut into chunks that differ by at most one
// token (the first N mod chunks chunks get one more); no padding is needed, because off-diagonal
// blocks are full and diagonal blocks are square, whatever their size.

import { empty, type Tensor, TensorError } from "@lightseq/tensor";
import type { Schedule } from "./schedule.ts";

export interface Placement {
  /** Global sequence length. */
  N: number;
  /** Per chunk: first global token and length. */
  start: number[];
  len: number[];
  /** Per rank: local row where each of its chunks begins (same order as schedule.chunksOf[rank]). */
  localStart: number[][];
  /** Per rank: number of local tokens. */
  localLen: number[];
}

export function placeSequence(s: Schedule, N: number): Placement {
  if (!Number.isSafeInteger(N) || N < 0) throw new TensorError(`placeSequence: N must be a non-negative integer, got ${N}`);
  const base = Math.floor(N / s.chunks);
  const extra = N % s.chunks;
  const len = Array.from({ length: s.chunks }, (_, c) => base + (c < extra ? 1 : 0));
  const start: number[] = [];
  let acc = 0;
  for (const l of len) {
    start.push(acc);
    acc += l;
  }
  const localStart = s.chunksOf.map((cs) => {
    let off = 0;
    return cs.map((c) => {
      const here = off;
      off += len[c] as number;
      return here;
    });
  });
  const localLen = s.chunksOf.map((cs) => cs.reduce((a, c) => a + (len[c] as number), 0));
  return { N, start, len, localStart, localLen };
}

/** Global token position of every local row of `rank` (for RoPE and the loss shift). */
export function localPositions(s: Schedule, p: Placement, rank: number): Int32Array {
  const out = new Int32Array(p.localLen[rank] as number);
  let i = 0;
  for (const c of s.chunksOf[rank] as number[]) {
    for (let j = 0; j < (p.len[c] as number); j++) out[i++] = (p.start[c] as number) + j;
  }
  return out;
}

/** Global rows [start, start + len) of every chunk of `rank`, in local order. */
export function localRanges(s: Schedule, p: Placement, rank: number): [number, number][] {
  return (s.chunksOf[rank] as number[]).map((c) => [p.start[c] as number, p.len[c] as number]);
}

/**
 * The rows of `ranges` of a whole-sequence CPU tensor [N, ...], back to back, as a new CPU tensor:
 * a rank's local slice of a sequence that every rank can build (tests, demos, benchmarks).
 */
export function gatherRows(t: Tensor, ranges: readonly [number, number][]): Tensor {
  const inner = t.numel / Math.max(t.shape[0] as number, 1);
  const n = ranges.reduce((a, [, l]) => a + l, 0);
  const out = empty([n, ...t.shape.slice(1)], { dtype: t.dtype });
  const src = t.data("gatherRows: t");
  const dst = out.data();
  let at = 0;
  for (const [s, l] of ranges) {
    dst.set(src.subarray(s * inner, (s + l) * inner) as never, at * inner);
    at += l;
  }
  return out;
}
