// DistAttn equals single-rank attention over the whole sequence: real processes over the CPU comm
// backend, P in {1, 2, 3, 4, 8}, every schedule, MHA, GQA and MQA, lengths not divisible by P or 2P.

import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { type Communicator, launch } from "@lightseq/comm";
import { empty } from "@lightseq/tensor";
import { distAttnForward } from "./distattn.ts";
import type { DistCase } from "./fixtures/distattn-worker.ts";
import { referenceBackend } from "./reference.ts";
import { checkSchedule, makeSchedule, SCHEDULES, type Schedule } from "./schedule.ts";

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

/**
 * P = 2 with a helper block (no built-in schedule has one at P = 2): rank 1's diagonal block, and rank
 * 0 computing rank 1's off-diagonal block (q of chunk 1 x its own kv of chunk 0) as lightseq's helpers
 * do, sending the partial output and, backward, the dQ piece back. Written out as data, so a dQ piece
 * folded in twice (or lost) fails at P = 2, not only from P = 3 on.
 */
function helperScheduleP2(): Schedule {
  const blocks = [
    [
      { rank: 0, q: 0, kv: 0, causal: true },
      { rank: 1, q: 1, kv: 1, causal: true },
    ],
    [{ rank: 0, q: 1, kv: 0, causal: false }],
    [],
  ];
  const steps = (lend: "q" | "qbwd", back: "out" | "dq") => [
    { blocks: blocks[0] as Schedule["forward"][number]["blocks"], transfers: [{ from: 1, to: 0, payload: lend, chunk: 1 }] },
    { blocks: blocks[1] as Schedule["forward"][number]["blocks"], transfers: [] },
    { blocks: [], transfers: [{ from: 0, to: 1, payload: back, chunk: 1 }] },
  ];
  return {
    name: "lightseq",
    P: 2,
    chunks: 2,
    owner: [0, 1],
    chunksOf: [[0], [1]],
    forward: steps("q", "out"),
    backward: steps("qbwd", "dq"),
  };
}

test("the P = 2 helper schedule is a valid schedule (every causal pair once, results returned)", () => {
  const r = checkSchedule(helperScheduleP2());
  expect(r.errors).toEqual([]);
  expect(r.sent[0]?.dq).toBe(1);
});

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
      if (P === 2)
        cases.push(
          { schedule: helperScheduleP2(), N: 13, Hq: 2, Hkv: 2, D: 8 },
          { schedule: helperScheduleP2(), N: 9, Hq: 4, Hkv: 1, D: 4 },
        );
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

test("an unknown comm stream priority or mode is refused, naming the option", async () => {
  const q = empty([4, 2, 8], { dtype: "f32" });
  // The option is checked before the communicator is used: a stand-in with size and rank suffices.
  const comm = { size: 1, rank: 0 } as unknown as Communicator;
  const o = { schedule: makeSchedule("ring", 1), N: 4, comm, backend: referenceBackend, commPriority: "urgent" as "high" };
  await expect(distAttnForward(q, q, q, o)).rejects.toThrow('commPriority must be "default" or "high", got "urgent"');
  await expect(distAttnForward(q, q, q, { ...o, commPriority: "high", mode: "nocomm" as "sync" })).rejects.toThrow(
    'mode must be "overlap" or "sync", got "nocomm" (no-communication runs: bench/nocomm.ts)',
  );
  q.dispose();
});
