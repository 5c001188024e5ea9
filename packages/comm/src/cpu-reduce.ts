// The CPU backend's arithmetic for allReduce and reduceScatter (cpu.ts moves the bytes). The fixed
// order makes results independent of arrival order and identical on every rank:
//   - reductions run in rank order: ((x0 op x1) op x2) ... op x(P-1), whichever rank reduces;
//   - f32 and bf16 accumulate in f32 (bf16 inputs widened exactly); the result is rounded to bf16
//     once, nearest-even, at the end. NCCL rounds bf16 after every hop of its ring, so it may differ
//     from us in the last bit for inexact sums; integer-valued sums that fit are exact in both;
//   - avg = sum / P computed in f32 from the f32 sum, then rounded once (bf16); for i32 it is the
//     wrapped i32 sum divided by P, truncated toward zero (NCCL's SumPostDiv);
//   - i32 sums wrap modulo 2^32; max compares values (NaN handling is unspecified, as in NCCL).
// The conformance suite checks the order with sums whose f32 value depends on it (conformance.ts).

import { type DType, decodeBf16, encodeBf16 } from "@lightseq/tensor";
import type { ReduceOp } from "./communicator.ts";

export type ReduceResult = Float32Array | Uint16Array | Int32Array;

/**
 * Reduces `count` elements over `size` ranks: term(p) gives rank p's bytes, asked for in rank order
 * (so a failed receive stops the loop before later ones are awaited). `scratch(slot, bytes)` hands out
 * memory reused between operations; the result lives in it until the next call.
 */
export async function reduceInRankOrder(
  dtype: DType,
  op: ReduceOp,
  count: number,
  size: number,
  term: (p: number) => Promise<Uint8Array>,
  scratch: (slot: string, bytes: number) => ArrayBuffer,
): Promise<ReduceResult> {
  const acc = dtype === "i32" ? new Int32Array(scratch("acc", 4 * count), 0, count) : new Float32Array(scratch("acc", 4 * count), 0, count);
  const widened = dtype === "bf16" ? new Float32Array(scratch("widened", 4 * count), 0, count) : null;
  for (let p = 0; p < size; p++) {
    const src = await term(p);
    if (dtype === "i32") combineI32(acc as Int32Array, new Int32Array(src.buffer, src.byteOffset, count), op, p === 0);
    else {
      const x =
        dtype === "bf16"
          ? decodeBf16(new Uint16Array(src.buffer, src.byteOffset, count), widened as Float32Array)
          : new Float32Array(src.buffer, src.byteOffset, count);
      combineF32(acc as Float32Array, x, op, p === 0);
    }
  }
  if (op === "avg") {
    if (acc instanceof Int32Array) for (let i = 0; i < count; i++) acc[i] = Math.trunc((acc[i] as number) / size);
    else for (let i = 0; i < count; i++) acc[i] = (acc[i] as number) / size;
  }
  return dtype === "bf16" ? encodeBf16(acc, new Uint16Array(scratch("rounded", 2 * count), 0, count)) : acc;
}

/** acc = x (first) or acc op x, in f32 (every store to a Float32Array rounds to f32). */
function combineF32(acc: Float32Array, x: Float32Array, op: ReduceOp, first: boolean): void {
  const n = acc.length;
  if (first) acc.set(x);
  else if (op === "max") {
    for (let i = 0; i < n; i++) if ((x[i] as number) > (acc[i] as number)) acc[i] = x[i] as number;
  } else for (let i = 0; i < n; i++) acc[i] = (acc[i] as number) + (x[i] as number);
}

function combineI32(acc: Int32Array, x: Int32Array, op: ReduceOp, first: boolean): void {
  const n = acc.length;
  if (first) acc.set(x);
  else if (op === "max") {
    for (let i = 0; i < n; i++) if ((x[i] as number) > (acc[i] as number)) acc[i] = x[i] as number;
  } else for (let i = 0; i < n; i++) acc[i] = ((acc[i] as number) + (x[i] as number)) | 0;
}
