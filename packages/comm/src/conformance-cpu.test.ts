// The conformance suite (conformance.ts) on the CPU backend: in this process for P = 1, and as
// real processes started by the launcher for P = 2, 3, 4 and 8. Every rank must pass every case.

import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CaseResult, runConformance } from "./conformance.ts";
import { initCommunicator } from "./init.ts";
import { runJob } from "./testing.ts";

const LARGE = 4 * 2 ** 20 + 4;

test("conformance, CPU backend, P=1 (in process)", async () => {
  const results = await runConformance(() => initCommunicator({ backend: "cpu", env: {} }), {
    largeBytes: LARGE,
    exactAvg: true,
    rankOrderSums: true,
  });
  expect(results.filter((r) => r.status !== "pass")).toEqual([]);
  expect(results.length).toBeGreaterThan(100);
}, 30_000);

for (const P of [2, 3, 4, 8]) {
  test(`conformance, CPU backend, P=${P} (processes)`, async () => {
    const dir = mkdtempSync(join(tmpdir(), `lightseq-conf-${P}-`));
    try {
      const job = await runJob("conformance-worker.ts", P, {
        args: [dir, "cpu", String(LARGE)],
        env: { LIGHTSEQ_COMM_TIMEOUT_MS: "20000" },
      });
      const perRank = Array.from({ length: P }, (_, rank) => {
        try {
          return JSON.parse(readFileSync(join(dir, `rank-${rank}.json`), "utf8")) as { results: CaseResult[] };
        } catch {
          return { results: [{ name: "(no report: the rank died)", status: "fail", ms: 0 } as CaseResult] };
        }
      });
      const failures = perRank.flatMap((r, rank) =>
        r.results.filter((c) => c.status !== "pass").map((c) => `rank ${rank}: ${c.name}: ${c.error ?? c.status}`),
      );
      if (failures.length > 0 || job.exitCode !== 0) console.error(job.transcript());
      expect(failures).toEqual([]);
      expect(job.exitCode).toBe(0);
      // Every rank ran the same, complete list.
      const names = perRank.map((r) => r.results.map((c) => c.name).join("|"));
      expect(new Set(names).size).toBe(1);
      expect(perRank[0]?.results.length).toBeGreaterThan(100);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
}
