// The NCCL backend. Without a GPU these show as skipped (the development machine has none); the
// lead runs them on a GPU machine: the same conformance suite as the CPU backend, one rank per GPU,
// with a 64 MiB case, and the watchdog.

import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LibraryNotFoundError, locateLibrary, NCCL, probeGpus } from "@lightseq/cuda";
import type { CaseResult } from "./conformance.ts";
import { NCCL_MIN_VERSION, nccl, ncclVersion } from "./nccl-ffi.ts";
import { runJob } from "./testing.ts";

const gpus = probeGpus().count;
const hasNcclLibrary = locateLibrary(NCCL).path !== null;

test.skipIf(gpus === 0)("libnccl is found, and is recent enough for ncclCommInitRankScalable", () => {
  const v = ncclVersion();
  console.log(`NCCL ${v.text} at ${v.path}`);
  expect(v.version).toBeGreaterThanOrEqual(NCCL_MIN_VERSION);
});

test.skipIf(hasNcclLibrary)("without libnccl, loading it is an error that lists where it looked", () => {
  expect(() => nccl()).toThrow(LibraryNotFoundError);
  expect(() => nccl()).toThrow(/NCCL \(libnccl\) not found\. Looked in:\n.*LIGHTSEQ_NCCL_SO/);
});

interface Report {
  p2p: { transport: string; peers: number[] } | null;
  results: CaseResult[];
}

/** Runs the conformance suite on `nprocs` GPUs; returns every rank's report, failing on any case. */
async function conformance(nprocs: number, env: Record<string, string>): Promise<Report[]> {
  const dir = mkdtempSync(join(tmpdir(), "lightseq-nccl-conf-"));
  try {
    const job = await runJob("conformance-worker.ts", nprocs, {
      args: [dir, "nccl", String(64 * 2 ** 20 + 4)],
      env: { LIGHTSEQ_COMM_TIMEOUT_MS: "60000", ...env },
    });
    const failures: string[] = [];
    const reports: Report[] = [];
    for (let rank = 0; rank < nprocs; rank++) {
      let report: Report;
      try {
        report = JSON.parse(readFileSync(join(dir, `rank-${rank}.json`), "utf8")) as Report;
      } catch {
        failures.push(`rank ${rank}: no report (the rank died)`);
        continue;
      }
      reports.push(report);
      expect(report.results.length).toBeGreaterThan(100);
      for (const c of report.results) if (c.status !== "pass") failures.push(`rank ${rank}: ${c.name}: ${c.error ?? c.status}`);
    }
    if (failures.length > 0 || job.exitCode !== 0) console.error(job.transcript());
    expect(failures).toEqual([]);
    expect(job.exitCode).toBe(0);
    return reports;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test.skipIf(gpus === 0)(
  `conformance, NCCL backend, one rank per GPU (${gpus}), 64 MiB case`,
  async () => {
    const reports = await conformance(Math.min(gpus, 8), { LIGHTSEQ_P2P: "nccl" });
    for (const r of reports) expect(r.p2p?.transport).toBe("nccl");
  },
  300_000,
);

test.skipIf(gpus < 2)(
  `conformance, NCCL backend with copy-engine send/recv (1 MiB chunks, 2 slots: 64+ chunks per 64 MiB message), ${gpus} GPUs`,
  async () => {
    const nprocs = Math.min(gpus, 8);
    const reports = await conformance(nprocs, { LIGHTSEQ_P2P: "copy-engine", LIGHTSEQ_P2P_CHUNK_MIB: "1", LIGHTSEQ_P2P_SLOTS: "2" });
    // Every other rank is on this host, so every peer must have gone through the copy engines.
    reports.forEach((r, rank) => {
      expect(r.p2p?.transport).toBe("copy-engine");
      expect(r.p2p?.peers).toEqual(Array.from({ length: nprocs }, (_, i) => i).filter((i) => i !== rank));
    });
  },
  300_000,
);

test.skipIf(gpus < 2)(
  "watchdog: a collective a rank never joins is aborted after the timeout, naming it",
  async () => {
    const job = await runJob("nccl-watchdog-worker.ts", 2, { env: { LIGHTSEQ_COMM_TIMEOUT_MS: "3000" } });
    const errors = (job.lines[0] ?? []).filter((l) => l.startsWith("ERROR "));
    expect(errors.length, job.transcript()).toBe(1);
    expect(errors[0]).toMatch(/^ERROR (allReduce|wait): .*did not complete within 3\.\d\d s on cuda:0 \(rank 0 of 2; waiting on rank 1/);
    expect(job.failure).toMatch(/^rank 0 exited with code 1/);
  },
  60_000,
);

test.skipIf(gpus < 2)(
  "watchdog, copy-engine transport: a receive whose sender never sends fails after the timeout, naming the peer",
  async () => {
    const job = await runJob("nccl-watchdog-worker.ts", 2, {
      args: ["recv"],
      env: { LIGHTSEQ_COMM_TIMEOUT_MS: "3000", LIGHTSEQ_P2P: "copy-engine" },
    });
    const errors = (job.lines[0] ?? []).filter((l) => l.startsWith("ERROR "));
    expect(errors.length, job.transcript()).toBe(1);
    expect(errors[0]).toMatch(
      /^ERROR (recv from rank 1|wait): .*did not complete within 3\.\d\d s on cuda:0 \(rank 0 of 2; waiting on rank 1/,
    );
    expect(job.failure).toMatch(/^rank 0 exited with code 1/);
  },
  60_000,
);
