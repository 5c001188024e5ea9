// Failures must be loud, named and quick: a rank dying mid-collective, a rank that stops
// answering, a wrong WORLD_SIZE, a taken port, an unreachable master. And start-up must be fast.

import { expect, test } from "bun:test";
import { initCommunicator } from "./init.ts";
import { launch } from "./launch.ts";
import { StoreServer } from "./store-server.ts";
import { FIXTURES, freePort, runJob } from "./testing.ts";

function errorLines(lines: string[]): string[] {
  return lines.filter((l) => l.startsWith("ERROR "));
}

test("a rank that exits in the middle of a collective fails every other rank at once, and the launcher names it", async () => {
  const start = performance.now();
  // A long timeout: the survivors must fail on the closed connection, not on the timer.
  const job = await runJob("failure-worker.ts", 3, { args: ["exit-mid-collective", "1"], env: { LIGHTSEQ_COMM_TIMEOUT_MS: "30000" } });
  const elapsed = performance.now() - start;
  const transcript = job.transcript();
  expect(job.exitCode, transcript).not.toBe(0);
  expect(job.failure, transcript).toMatch(/^rank 1 exited with code 3/);
  for (const [rank, other] of [
    [0, 2],
    [2, 0],
  ] as const) {
    const errors = errorLines(job.lines[rank] ?? []);
    expect(errors.length, transcript).toBe(1);
    // Rank 1's close; or the other survivor's report of it; or, when two closes race, the other
    // survivor's close (it could not slip its report into a half-sent frame). Either survivor may
    // be the one that sees the other's close first.
    expect(errors[0], transcript).toMatch(
      new RegExp(
        `^ERROR allReduce: (rank ${other} gave up: )?rank [1${other}] closed its connection without saying goodbye .*had waited \\d+\\.\\d+ s`,
      ),
    );
  }
  expect(elapsed).toBeLessThan(10_000);
}, 30_000);

test("the rank that failed first is named even when the ranks failing because of it exit before it", async () => {
  // Rank 1 breaks the communicator and exits (code 3) 300 ms later; ranks 0 and 2 exit at once (code 1).
  const job = await runJob("failure-worker.ts", 3, { args: ["slow-exit", "1"], env: { LIGHTSEQ_COMM_TIMEOUT_MS: "30000" } });
  expect(job.failure, job.transcript()).toMatch(
    /^rank 1 exited with code 3; at about the same time rank [02] exited with code 1, rank [02] exited with code 1$/,
  );
  expect(job.exitCode).toBe(3);
}, 30_000);

test("a rank that never joins a collective makes the others time out with the operation, the rank and the time", async () => {
  const start = performance.now();
  const job = await runJob("failure-worker.ts", 3, { args: ["hang", "2"], env: { LIGHTSEQ_COMM_TIMEOUT_MS: "1000" } });
  const elapsed = performance.now() - start;
  const transcript = job.transcript();
  expect(job.exitCode, transcript).not.toBe(0);
  expect(job.failure, transcript).toMatch(/^rank [01] exited with code 1/);
  for (const rank of [0, 1]) {
    const errors = errorLines(job.lines[rank] ?? []);
    expect(errors.length, transcript).toBe(1);
    // The first to time out names rank 2 and tells the other, whose error then quotes it.
    expect(errors[0], transcript).toMatch(/^ERROR allReduce: (rank [01] gave up: )?timed out after 1\.\d\d s waiting for rank 2/);
  }
  expect(elapsed).toBeLessThan(10_000);
}, 30_000);

test("a wrong WORLD_SIZE on one rank is a clear error on every rank, not a hang", async () => {
  const job = await runJob("failure-worker.ts", 2, { args: ["wrong-world-size", "1"], env: { LIGHTSEQ_COMM_TIMEOUT_MS: "20000" } });
  const transcript = job.transcript();
  expect(job.exitCode, transcript).not.toBe(0);
  for (const rank of [0, 1]) {
    const errors = errorLines(job.lines[rank] ?? []);
    expect(errors.length, transcript).toBe(1);
    expect(errors[0], transcript).toMatch(
      /WORLD_SIZE mismatch: .*WORLD_SIZE=2.*WORLD_SIZE=3|WORLD_SIZE mismatch: .*WORLD_SIZE=3.*WORLD_SIZE=2/,
    );
  }
}, 30_000);

test("a taken port is reported as such, by the launcher and by a rank 0 that hosts the store", async () => {
  const taken = StoreServer.listen({ host: "127.0.0.1", port: 0 });
  try {
    await expect(launch({ nprocs: 2, script: `${FIXTURES}/env-worker.ts`, masterPort: taken.port, log: () => {} })).rejects.toThrow(
      new RegExp(`port ${taken.port} on 127.0.0.1 is in use`),
    );
    const env = { RANK: "0", WORLD_SIZE: "2", MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(taken.port) };
    await expect(initCommunicator({ backend: "cpu", env })).rejects.toThrow(/is in use \(EADDRINUSE\)/);
  } finally {
    taken.close();
  }
});

test("a rank of another job (LIGHTSEQ_JOB_ID) pointed at our store is refused by name, at once", async () => {
  const ours = StoreServer.listen({ host: "127.0.0.1", port: 0, job: "job-a" });
  try {
    const env = {
      RANK: "1",
      WORLD_SIZE: "2",
      MASTER_ADDR: "127.0.0.1",
      MASTER_PORT: String(ours.port),
      LIGHTSEQ_STORE_HOSTED: "1",
      LIGHTSEQ_JOB_ID: "job-b",
    };
    const start = performance.now();
    await expect(initCommunicator({ backend: "cpu", env, rendezvousTimeoutMs: 5_000 })).rejects.toThrow(
      /refused this process \(job "job-b", .*\): job mismatch: this store serves job "job-a", not job "job-b"/,
    );
    expect(performance.now() - start).toBeLessThan(2_000);
    expect(ours.stats.keys).toBe(0);
  } finally {
    ours.close();
  }
});

test("an unreachable master is reported with its address after the rendezvous timeout", async () => {
  const port = freePort();
  const env = { RANK: "1", WORLD_SIZE: "2", MASTER_ADDR: "127.0.0.1", MASTER_PORT: String(port) };
  const start = performance.now();
  await expect(initCommunicator({ backend: "cpu", env, rendezvousTimeoutMs: 500 })).rejects.toThrow(
    new RegExp(`unreachable master 127\\.0\\.0\\.1:${port} after 0\\.5 s`),
  );
  expect(performance.now() - start).toBeLessThan(2_000);
});

test("8 CPU ranks start, meet (init + barrier) and finish in under 2 s", async () => {
  const job = await runJob("failure-worker.ts", 8, { args: ["startup"] });
  const transcript = job.transcript();
  expect(job.exitCode, transcript).toBe(0);
  const reports = job.lines.map((l) => JSON.parse(l.find((x) => x.startsWith("{")) ?? "{}") as { initMs?: number });
  const slowestInit = Math.max(...reports.map((r) => r.initMs ?? Number.POSITIVE_INFINITY));
  console.log(`8-rank start-up: launch to exit ${job.elapsedMs.toFixed(0)} ms; slowest initCommunicator ${slowestInit.toFixed(0)} ms`);
  expect(job.elapsedMs).toBeLessThan(2_000);
}, 30_000);
