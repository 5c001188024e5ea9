// DistAttn equals single-rank attention over the whole sequence: real processes over the CPU comm
// backend, P in {1, 2, 3, 4, 8}, every schedule, MHA, GQA and MQA, lengths not divisible by P or 2P.

import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { type Communicator, launch } from "@lightseq/comm";
import { empty, randn, type Tensor } from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { distAttnBackward, distAttnForward } from "./distattn.ts";
import type { DistCase } from "./fixtures/distattn-worker.ts";
import { gatherRows, localRanges, placeSequence } from "./placement.ts";
import { referenceBackend } from "./reference.ts";
import { makeSchedule, SCHEDULES } from "./schedule.ts";
import { lseColumns } from "./testing.ts";

const worker = join(import.meta.dir, "fixtures", "distattn-worker.ts");

async function runRanks(P: number, cases: DistCase[]): Promise<{ exitCode: number; lines: Record<string, unknown>[]; log: string[] }> {
  const lines: Record<string, unknown>[] = [];
  const log: string[] = [];
  const r = await launch({
    nprocs: P,
    script: worker,
    args: ["cpu", "cpu", "f32", JSON.stringify(cases)],
    gpus: 0,
    env: { LIGHTSEQ_COMM_TIMEOUT_MS: "30000" },
    onLine: (rank, _s, line) => {
      log.push(`[rank ${rank}] ${line}`);
      if (line.startsWith("{")) lines.push(JSON.parse(line));
    },
    log: (m) => log.push(`[launcher] ${m}`),
  });
  return { exitCode: r.exitCode, lines, log };
}

describe("DistAttn equals single-rank attention (CPU backend, real processes)", () => {
  for (const P of [1, 2, 3, 4, 8]) {
    test(`P = ${P}`, async () => {
      const cases: DistCase[] = [];
      for (const schedule of SCHEDULES) {
        // MHA with N divisible by 2P; GQA and MQA with N divisible by neither P nor 2P.
        cases.push({ schedule, N: 8 * P, Hq: 2, Hkv: 2, D: 8 });
        cases.push({ schedule, N: 6 * P + 5, Hq: 4, Hkv: 2, D: 8 });
        cases.push({ schedule, N: 4 * P + 3, Hq: 4, Hkv: 1, D: 4 });
      }
      if (P === 4) cases.push({ schedule: "lightseq", N: 37, Hq: 2, Hkv: 1, D: 8, mode: "sync" });
      const r = await runRanks(P, cases);
      if (r.exitCode !== 0) console.error(r.log.join("\n"));
      expect(r.exitCode).toBe(0);
      expect(r.lines.length).toBe(P * cases.length);
      for (const l of r.lines) {
        if (!l.ok) throw new Error(`rank ${l.rank} ${JSON.stringify(l.case)}:\n${(l.failures as string[]).join("\n")}`);
      }
    }, 120_000);
  }

  test("P = 16 (issue 6: more ranks than the GPU machines lend), every schedule, GQA, uneven chunks", async () => {
    const cases: DistCase[] = SCHEDULES.map((schedule) => ({ schedule, N: 3 * 16 + 7, Hq: 2, Hkv: 1, D: 4 }));
    const r = await runRanks(16, cases);
    if (r.exitCode !== 0) console.error(r.log.join("\n"));
    expect(r.exitCode).toBe(0);
    expect(r.lines.filter((l) => l.ok).length).toBe(16 * cases.length);
  }, 120_000);

  test("a sequence shorter than the number of chunks still works (empty chunks)", async () => {
    const r = await runRanks(3, [
      { schedule: "zigzag", N: 4, Hq: 2, Hkv: 1, D: 4 },
      { schedule: "lightseq", N: 2, Hq: 2, Hkv: 2, D: 4 },
    ]);
    if (r.exitCode !== 0) console.error(r.log.join("\n"));
    expect(r.exitCode).toBe(0);
  }, 60_000);
});

test("an unknown comm stream priority is refused, naming the option", async () => {
  const q = empty([4, 2, 8], { dtype: "f32" });
  // The option is checked before the communicator is used: a stand-in with size and rank suffices.
  const comm = { size: 1, rank: 0 } as unknown as Communicator;
  const o = { schedule: makeSchedule("ring", 1), N: 4, comm, backend: referenceBackend, commPriority: "urgent" as "high" };
  await expect(distAttnForward(q, q, q, o)).rejects.toThrow('commPriority must be "default" or "high", got "urgent"');
  q.dispose();
});

test("nocomm computes on this rank's own rows in place of what would arrive (not on fresh memory)", async () => {
  // Zigzag, P = 2, as rank 0 alone (nocomm never calls the communicator): rank 0 holds chunks 0 and 3
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
  const comm = { size: 2, rank: 0 } as unknown as Communicator;
  const o = { schedule: s, N, comm, backend: referenceBackend, mode: "nocomm" as const };
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
