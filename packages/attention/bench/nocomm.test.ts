// The benchmarks' no-communication communicator (nocomm.ts) with DistAttn on the CPU.

import { expect, test } from "bun:test";
import { randn, type Tensor } from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { distAttnBackward, distAttnForward } from "../src/distattn.ts";
import { gatherRows, localRanges, placeSequence } from "../src/placement.ts";
import { referenceBackend } from "../src/reference.ts";
import { makeSchedule } from "../src/schedule.ts";
import { lseColumns } from "../src/testing.ts";
import { noCommCommunicator } from "./nocomm.ts";

test("no communication: DistAttn computes on this rank's own rows in place of what would arrive (not on fresh memory)", async () => {
  // Zigzag, P = 2, as rank 0 alone (the wrapped communicator is never called): rank 0 holds chunks 0 and 3
  // and would receive K/V of chunks 1 and 2; its stand-ins are its first rows, chunk 0's. With a global
  // sequence whose chunks 1 and 2 repeat chunk 0's K/V, the stand-ins are the true data, so rank 0's o,
  // lse and dq must equal single-rank attention over that sequence (dk, dv lack the pieces nocomm never
  // returns). On zero-filled buffers, o of chunk 3 would differ.
  const N = 16;
  const n = N / 4;
  const s = makeSchedule("zigzag", 2);
  const p = placeSequence(s, N);
  const ranges = localRanges(s, p, 0);
  expect(ranges).toEqual([
    [0, n],
    [3 * n, n],
  ]);
  const withRepeats = (t: Tensor) => {
    const d = t.data() as Float32Array;
    const row = t.numel / N;
    for (const c of [1, 2]) d.copyWithin(c * n * row, 0, n * row);
    return t;
  };
  const [Hq, Hkv, D] = [2, 1, 8];
  const q = randn([N, Hq, D], { seed: 1 });
  const k = withRepeats(randn([N, Hkv, D], { seed: 2 }));
  const v = withRepeats(randn([N, Hkv, D], { seed: 3 }));
  const dO = randn([N, Hq, D], { seed: 4 });
  const ref = referenceBackend.forward(q, k, v, { causal: true });
  const refG = referenceBackend.backward(q, k, v, ref.o, ref.lse, dO, { causal: true });
  const comm = noCommCommunicator({ size: 2, rank: 0 });
  const o = { schedule: s, N, comm, backend: referenceBackend };
  const [lq, lk, lv, ldO] = [q, k, v, dO].map((t) => gatherRows(t, ranges)) as [Tensor, Tensor, Tensor, Tensor];
  const fwd = await distAttnForward(lq, lk, lv, o);
  const bwd = await distAttnBackward(lq, lk, lv, fwd, ldO, o);
  const close = (got: Tensor, want: Tensor, label: string) => {
    const r = compareClose(got, want, { rtol: 1e-5, atol: 1e-5, label });
    expect(r.ok, r.message).toBe(true);
  };
  close(fwd.o, gatherRows(ref.o, ranges), "o");
  for (const [i, [st, l]] of ranges.entries()) close(fwd.lse[i] as Tensor, lseColumns(ref.lse, st, l), `lse[${i}]`);
  close(bwd.dq, gatherRows(refG.dq, ranges), "dq");
});

test("no communication: the stand-in is a view of this rank's own rows of the same kind, or nothing", () => {
  const comm = noCommCommunicator({ size: 2, rank: 0 });
  const k = randn([6, 2, 4], { seed: 5 });
  const lse = [randn([3, 4], { seed: 6 }), randn([3, 5], { seed: 7 })];
  const kv = comm.receiveBuffer([4, 2, 4], [k]) as Tensor;
  expect(Array.from(kv.data() as Float32Array)).toEqual(Array.from(k.data() as Float32Array).slice(0, 4 * 8));
  expect(comm.receiveBuffer([7, 2, 4], [k])).toBeUndefined(); // more rows than this rank holds: fresh memory
  expect(comm.receiveBuffer([3, 5], lse)?.data()).toEqual(lse[1]?.data() as Float32Array); // the chunk of the same length
  expect(comm.receiveBuffer([3, 6], lse)).toBeUndefined();
  // Without a real communicator there is no peer to reduce with: said, not hung.
  expect(() => comm.barrier()).toThrow("no-communication stand-in for rank 0 of 2: barrier needs a real communicator");
});
