// The launcher: variables per rank, output prefixes, failure naming, signal forwarding, no orphans.

import { expect, test } from "bun:test";
import { join } from "node:path";
import { LaunchError, MULTICAST_OFF_ENV, parseLaunchArgs } from "./launch.ts";
import { FIXTURES, runJob } from "./testing.ts";

test("every rank gets the torchrun variables, the multicast-off variables and a free port", async () => {
  const job = await runJob("env-worker.ts", 3, { gpus: 0 });
  expect(job.exitCode, job.transcript()).toBe(0);
  expect(job.masterPort).toBeGreaterThan(0);
  for (let rank = 0; rank < 3; rank++) {
    const env = JSON.parse(job.lines[rank]?.[0] ?? "{}");
    expect(env).toMatchObject({
      RANK: String(rank),
      WORLD_SIZE: "3",
      LOCAL_RANK: String(rank),
      LOCAL_WORLD_SIZE: "3",
      GROUP_RANK: "0",
      NNODES: "1",
      MASTER_ADDR: "127.0.0.1",
      MASTER_PORT: String(job.masterPort),
      LIGHTSEQ_STORE_HOSTED: "1",
      ...MULTICAST_OFF_ENV,
    });
    // stderr lines and a last line without its newline are forwarded too.
    expect(job.lines[rank]).toContain(`stderr line from ${rank}`);
    expect(job.lines[rank]).toContain("partial line without newline");
  }
});

test("the launcher's store serves one job id, which every rank gets as LIGHTSEQ_JOB_ID", async () => {
  const job = await runJob("env-worker.ts", 2, { gpus: 0, env: { LIGHTSEQ_JOB_ID: "", TORCHELASTIC_RUN_ID: "run-7" } });
  expect(job.lines.map((l) => JSON.parse(l[0] ?? "{}").LIGHTSEQ_JOB_ID)).toEqual(["run-7", "run-7"]);
});

test("one GPU per local rank when there are enough: CUDA_VISIBLE_DEVICES is the local rank", async () => {
  const job = await runJob("env-worker.ts", 2, { gpus: 2 });
  expect(job.lines.map((l) => JSON.parse(l[0] ?? "{}").CUDA_VISIBLE_DEVICES)).toEqual(["0", "1"]);
});

test("node rank 1 of 2 numbers its ranks after node 0's and connects to the given port", async () => {
  const job = await runJob("env-worker.ts", 2, { nnodes: 2, nodeRank: 1, masterPort: 29999, gpus: 0 });
  const envs = job.lines.slice(2).map((l) => JSON.parse(l[0] ?? "{}"));
  expect(envs.map((e) => [e.RANK, e.LOCAL_RANK, e.WORLD_SIZE, e.GROUP_RANK, e.MASTER_PORT])).toEqual([
    ["2", "0", "4", "1", "29999"],
    ["3", "1", "4", "1", "29999"],
  ]);
});

test("a rank that exits non-zero stops the others within seconds and is named with its code", async () => {
  const start = performance.now();
  const job = await runJob("env-worker.ts", 3, { args: ["exit", "7", "1"] });
  expect(job.exitCode).toBe(7);
  expect(job.failure).toBe("rank 1 exited with code 7; stopped ranks 0, 2");
  expect(job.ranks.map((r) => r.signal)).toEqual(["SIGTERM", null, "SIGTERM"]);
  expect(performance.now() - start).toBeLessThan(5_000);
});

test("a rank killed by a signal is named with the signal", async () => {
  const job = await runJob("env-worker.ts", 2, { args: ["signal", "SIGKILL", "0"] });
  expect(job.exitCode).toBe(1);
  expect(job.failure).toMatch(/^rank 0 was killed by SIGKILL/);
});

test("the command line: SIGTERM to the launcher reaches the ranks, and SIGKILL of the launcher leaves no orphans", async () => {
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    const cli = Bun.spawn([process.execPath, join(import.meta.dir, "launch.ts"), "-n", "2", join(FIXTURES, "sleeper.ts")], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const pids: number[] = [];
    const reader = cli.stdout.getReader();
    let text = "";
    while (pids.length < 2) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
      pids.splice(0, pids.length, ...[...text.matchAll(/\[rank \d\] ready (\d+)/g)].map((m) => Number(m[1])));
    }
    expect(pids.length).toBe(2);
    const start = performance.now();
    cli.kill(signal);
    await cli.exited;
    expect(cli.exitCode === 0 && cli.signalCode === null).toBe(false);
    // The ranks are gone within a few seconds (forwarded signal, or the parent-death signal).
    const alive = () =>
      pids.filter((pid) => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      });
    while (alive().length > 0 && performance.now() - start < 5_000) await Bun.sleep(50);
    expect(alive()).toEqual([]);
  }
}, 20_000);

test("command-line parsing stops at the script; unknown options are refused", () => {
  expect(parseLaunchArgs(["-n", "4", "--master-port=0", "train.ts", "--lr", "3e-4"])).toMatchObject({
    nprocs: 4,
    masterPort: 0,
    script: "train.ts",
    args: ["--lr", "3e-4"],
  });
  expect(
    parseLaunchArgs(["--nproc_per_node", "2", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "x.ts"]),
  ).toMatchObject({
    nprocs: 2,
    nnodes: 2,
    nodeRank: 1,
    masterAddr: "10.0.0.1",
  });
  expect(() => parseLaunchArgs(["--frobnicate", "x.ts"])).toThrow(LaunchError);
  expect(() => parseLaunchArgs(["-n", "two", "x.ts"])).toThrow(/-n: expected an integer, got "two"/);
  expect(() => parseLaunchArgs(["-n", "2"])).toThrow(/no script given/);
});

/** Runs the lightseq-launch command line to its end. */
async function cli(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "launch.ts"), ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
  });
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  await p.exited;
  return { code: p.exitCode, stdout, stderr };
}

test("the command line: --help prints the usage and exits 0; a bad option exits 2 with the usage", async () => {
  const help = await cli(["--help"]);
  expect(help.code).toBe(0);
  expect(help.stdout).toMatch(/^usage: lightseq-launch /);
  const bad = await cli(["--frobnicate", "x.ts"]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/^lightseq-launch: unknown option --frobnicate\nusage: /);
});

test("the command line: a missing script and a bad LIGHTSEQ_* value are reported once, before any rank starts", async () => {
  const missing = await cli(["-n", "3", "no-such-script.ts"]);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toBe("lightseq-launch: script no-such-script.ts: no such file\n");
  const badEnv = await cli(["-n", "3", join(FIXTURES, "sleeper.ts")], { LIGHTSEQ_P2P: "bogus" });
  expect(badEnv.code).toBe(1);
  expect(badEnv.stderr).toBe('lightseq-launch: LIGHTSEQ_P2P: expected one of nccl, copy-engine, got "bogus"\n');
  expect(badEnv.stdout).toBe("");
});
