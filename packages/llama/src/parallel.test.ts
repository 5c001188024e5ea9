// Sequence parallelism: P CPU ranks (real processes over the CPU communicator) give the loss and
// every gradient of one rank, for the zigzag and lightseq schedules, MHA and GQA, lengths not
// divisible by 2P, every checkpoint policy; the placement keeps global positions and the labels that
// cross chunks; and remat-aware moves the forward K/V once per layer (full: twice).

import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { makeSchedule } from "@lightseq/attention";
import { launch } from "@lightseq/comm";
import { probeGpus } from "@lightseq/cuda";
import type { RankCase, RankResult } from "./fixtures/model-ranks-worker.ts";
import { IGNORE_LABEL } from "./model.ts";
import { placeSequenceBatch } from "./parallelize.ts";

const worker = join(import.meta.dir, "fixtures", "model-ranks-worker.ts");

async function runRanks(P: number, cases: RankCase[], backend: "cpu" | "nccl" = "cpu"): Promise<RankResult[]> {
  const lines: RankResult[] = [];
  const log: string[] = [];
  const r = await launch({
    nprocs: P,
    script: worker,
    args: [backend, JSON.stringify(cases)],
    gpus: backend === "nccl" ? P : 0,
    env: { LIGHTSEQ_COMM_TIMEOUT_MS: "30000" },
    onLine: (rank, _s, line) => {
      log.push(`[rank ${rank}] ${line}`);
      if (line.startsWith("{")) lines.push(JSON.parse(line));
    },
    log: (m) => log.push(`[launcher] ${m}`),
  });
  if (r.exitCode !== 0) throw new Error(`ranks failed (exit ${r.exitCode}):\n${log.join("\n")}`);
  expect(lines.length).toBe(P * cases.length);
  return lines;
}

const same = (a: RankCase, b: RankCase) => JSON.stringify(a) === JSON.stringify(b);

describe("P ranks equal one rank (CPU communicator, real processes)", () => {
  for (const P of [1, 2, 3, 4]) {
    test(`P = ${P}: zigzag and lightseq, MHA, GQA and MQA, every policy, tiled MLP${P > 1 ? ", and the corrupted placements fail" : ""}`, async () => {
      // Lengths 9P + 5 and 10P + 7: not divisible by 2P (for P > 1), 14 to 47 tokens.
      const n1 = P === 1 ? 15 : 9 * P + 5;
      const n2 = 10 * P + 7;
      const cases: RankCase[] = [
        { schedule: "zigzag", N: n1, heads: 4, kvHeads: 4, policy: "remat-aware" },
        { schedule: "zigzag", N: n2, heads: 4, kvHeads: 2, policy: "full" },
        { schedule: "zigzag", N: n2, heads: 4, kvHeads: 2, policy: "remat-aware" },
        { schedule: "lightseq", N: n2, heads: 4, kvHeads: 4, policy: "none" },
        { schedule: "lightseq", N: n1, heads: 4, kvHeads: 1, policy: "remat-aware", tied: true, mlpChunk: 4 },
        // layer 1 keeps nothing and re-runs layer 0's forward (DistAttn included) in the backward
        { schedule: "zigzag", N: n2, heads: 4, kvHeads: 2, policy: "full*1,skip*1" },
      ];
      const corrupt: RankCase[] =
        P === 1
          ? []
          : [
              { schedule: "zigzag", N: n2, heads: 4, kvHeads: 2, policy: "remat-aware", corrupt: "chunk-local-positions" },
              { schedule: "lightseq", N: n2, heads: 4, kvHeads: 2, policy: "remat-aware", corrupt: "drop-chunk-last-label" },
            ];
      const results = await runRanks(P, [...cases, ...corrupt]);
      for (const r of results) {
        if (r.case.corrupt === undefined && !r.ok) throw new Error(`rank ${r.rank} ${JSON.stringify(r.case)}:\n${r.failures.join("\n")}`);
        // A placement that restarts positions at each chunk, or drops each chunk's last label, changes
        // the loss: the equality above would catch either bug.
        if (r.case.corrupt !== undefined) expect({ case: r.case, ok: r.ok }).toEqual({ case: r.case, ok: false });
      }
      // Checkpointing and DistAttn traffic (issue 12): remat-aware runs attention forward once per
      // layer (L = 2) and so moves its forward K/V once; full runs and moves it twice.
      // full, skip: 2 in the forward, 1 for full, 1 re-run of layer 0 and 1 for the skip layer's own recompute.
      const [full, remat, skip] = [cases[1], cases[2], cases[5]] as [RankCase, RankCase, RankCase];
      for (let rank = 0; rank < P; rank++) {
        const f = results.find((r) => r.rank === rank && same(r.case, full)) as RankResult;
        const m = results.find((r) => r.rank === rank && same(r.case, remat)) as RankResult;
        const s = results.find((r) => r.rank === rank && same(r.case, skip)) as RankResult;
        expect([f.attention.forwardCalls, m.attention.forwardCalls, s.attention.forwardCalls]).toEqual([4, 2, 5]);
        expect(f.attention.forwardSentBytes).toBe(2 * m.attention.forwardSentBytes);
        expect(2 * s.attention.forwardSentBytes).toBe(5 * m.attention.forwardSentBytes);
        expect(f.attention.backwardSentBytes).toBe(m.attention.backwardSentBytes);
        expect(s.attention.backwardSentBytes).toBe(m.attention.backwardSentBytes);
        if (P > 1 && rank > 0) expect(m.attention.forwardSentBytes + m.attention.backwardSentBytes).toBeGreaterThan(0);
      }
    }, 120_000);
  }
});

// The same on GPUs (NCCL, bf16, cuDNN blocks when present): needs 2 GPUs, so it skips on one; run it on
// a 2-GPU machine with `LIGHTSEQ_REQUIRE_GPU=1 bun test packages/llama/src/parallel.test.ts`.
test.skipIf(probeGpus().count < 2)(
  "2 GPUs (NCCL, bf16) equal one GPU: zigzag and lightseq, MHA and GQA, remat-aware and full",
  async () => {
    // 2P chunks of ~77 tokens: not a multiple of any tile size.
    const cases: RankCase[] = [
      { schedule: "zigzag", N: 309, heads: 4, kvHeads: 2, policy: "remat-aware" },
      { schedule: "zigzag", N: 309, heads: 4, kvHeads: 4, policy: "full" },
      { schedule: "lightseq", N: 251, heads: 4, kvHeads: 2, policy: "remat-aware", tied: true },
    ];
    const results = await runRanks(2, cases, "nccl");
    for (const r of results) {
      console.log(
        `rank ${r.rank} ${r.case.schedule} Hkv=${r.case.kvHeads} ${r.case.policy}: loss rel ${r.lossRelErr.toExponential(2)}, worst gradient ${r.worstGrad.name} at ${(100 * r.worstGrad.used).toFixed(0)}% of tolerance`,
      );
      if (!r.ok) throw new Error(`rank ${r.rank} ${JSON.stringify(r.case)}:\n${r.failures.join("\n")}`);
    }
  },
  300_000,
);

describe("placement of a sequence on the ranks", () => {
  const tokens = Int32Array.from({ length: 11 }, (_, g) => 100 + g);

  test("zigzag P = 2: global positions, and each chunk's last label is the next chunk's first token", () => {
    // 11 tokens in 4 chunks of 3, 3, 3, 2: rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
    const s = makeSchedule("zigzag", 2);
    const r0 = placeSequenceBatch(s, 0, tokens);
    const r1 = placeSequenceBatch(s, 1, tokens);
    expect(Array.from(r0.positions)).toEqual([0, 1, 2, 9, 10]);
    expect(Array.from(r1.positions)).toEqual([3, 4, 5, 6, 7, 8]);
    expect(Array.from(r0.tokens)).toEqual([100, 101, 102, 109, 110]);
    // Chunk 0's last label (global token 3) lives on rank 1; chunk 2's (token 9) on rank 0.
    expect(Array.from(r0.labels)).toEqual([101, 102, 103, 110, IGNORE_LABEL]);
    expect(Array.from(r1.labels)).toEqual([104, 105, 106, 107, 108, 109]);
    expect(r0.globalLabelCount).toBe(10);
    expect(r1.globalLabelCount).toBe(10);
  });

  test("every schedule and P: the ranks' rows together are the sequence, each with its global position and the next token as label", () => {
    for (const name of ["zigzag", "lightseq", "ring"] as const) {
      for (const P of [1, 2, 3, 4, 5]) {
        const s = makeSchedule(name, P);
        const seen = new Int32Array(tokens.length);
        for (let rank = 0; rank < P; rank++) {
          const b = placeSequenceBatch(s, rank, tokens);
          b.positions.forEach((g, j) => {
            seen[g] = (seen[g] as number) + 1;
            expect([name, P, b.tokens[j]]).toEqual([name, P, 100 + g]);
            expect([name, P, b.labels[j]]).toEqual([name, P, g + 1 < tokens.length ? 101 + g : IGNORE_LABEL]);
          });
        }
        expect(Array.from(seen)).toEqual(new Array(tokens.length).fill(1));
      }
    }
  });

  test("labels given by the caller (masks) are placed like the tokens; a wrong length is refused", () => {
    const s = makeSchedule("zigzag", 2);
    const labels = Int32Array.from(tokens, (t, g) => (g % 3 === 0 ? IGNORE_LABEL : t + 1000));
    const b = placeSequenceBatch(s, 1, tokens, labels);
    expect(Array.from(b.labels)).toEqual([IGNORE_LABEL, 1104, 1105, IGNORE_LABEL, 1107, 1108]);
    expect(b.globalLabelCount).toBe(7);
    expect(() => placeSequenceBatch(s, 0, tokens, labels.subarray(1))).toThrow("labels: expected 11 entries (one per token), got 10");
  });
});
