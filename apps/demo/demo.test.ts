// The demo's plan (how many ranks, on what) for the machines a user has, and its command line's
// answers to a user's mistakes: one line, non-zero, no rank started.

import { expect, test } from "bun:test";
import { join } from "node:path";
import { demoPlan, type Machine, maxLocalRanks } from "./plan.ts";

const GiB = 2 ** 30;
const box = (gpus: number, arg?: string): Machine => ({
  arg,
  gpus,
  gpuName: "NVIDIA H200",
  noGpuReason: "cudaGetDeviceCount returned cudaErrorNoDevice (100): no CUDA-capable device is detected",
  cores: 16,
  freeBytes: 100 * GiB,
});

test("never more GPU ranks than GPUs: one GPU, or more ranks than GPUs, runs CPU ranks and says why", () => {
  expect(demoPlan(box(0))).toMatchObject({
    ranks: 4,
    backend: "cpu",
    line: "no GPU (cudaGetDeviceCount returned cudaErrorNoDevice (100)): 4 CPU ranks, reference kernels",
  });
  expect(demoPlan(box(1))).toMatchObject({ ranks: 4, backend: "cpu" });
  expect((demoPlan(box(1)) as { line: string }).line).toMatch(
    /^1 GPU \(NVIDIA H200\): DistAttn needs one GPU per rank and at least 2 ranks: 4 CPU ranks/,
  );
  expect(demoPlan(box(1, "1"))).toMatchObject({ ranks: 1, backend: "cpu" });
  expect(demoPlan(box(2))).toMatchObject({ ranks: 2, backend: "nccl" });
  expect(demoPlan(box(8, "4"))).toMatchObject({ ranks: 4, backend: "nccl" });
  expect(demoPlan(box(2, "8"))).toMatchObject({ ranks: 8, backend: "cpu" });
  expect((demoPlan(box(2, "8")) as { line: string }).line).toMatch(
    /^2 GPUs for 8 ranks: DistAttn needs one GPU per rank \(ask for at most 2/,
  );
  for (let gpus = 0; gpus <= 8; gpus++)
    for (let ranks = 1; ranks <= 16; ranks++) {
      const p = demoPlan(box(gpus, String(ranks)));
      if ("backend" in p && p.backend === "nccl") expect(p.ranks).toBeLessThanOrEqual(gpus);
    }
});

test("more local ranks than the machine can host is refused up front; so is a bad argument", () => {
  expect(maxLocalRanks({ cores: 2, freeBytes: 24 * GiB })).toBe(16);
  expect(maxLocalRanks({ cores: 64, freeBytes: 1 * GiB })).toBe(10);
  expect(maxLocalRanks({ cores: 128, freeBytes: 1000 * GiB })).toBe(194); // 2 tokens per rank of 389
  expect(demoPlan({ ...box(0, "1000"), cores: 2, freeBytes: 24 * GiB })).toEqual({
    error:
      "1000 local ranks is more than this machine can host: at most 16 (8 ranks per core on 2 cores, ~100 MiB each of 24.0 GiB free, and at least 2 of the 389 tokens each); ask for 16 or fewer",
  });
  for (const arg of ["x", "0", "-3", "2.5", ""])
    expect(demoPlan(box(0, arg))).toHaveProperty("error", expect.stringMatching(/^ranks: expected a positive integer/));
});

async function demo(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "index.ts"), ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
  });
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  await p.exited;
  return { code: p.exitCode, stdout, stderr };
}

test("the command line: a user's mistake is one line on stderr and a non-zero exit, no stack trace", async () => {
  const many = await demo(["1000"]);
  expect(many.code).toBe(1);
  expect(many.stderr).toMatch(/^demo: 1000 local ranks is more than this machine can host: at most \d+ .*\n$/);
  const bad = await demo(["lots"]);
  expect(bad.code).toBe(1);
  expect(bad.stderr).toBe('demo: ranks: expected a positive integer, got "lots" (usage: bun run demo [ranks])\n');
  const lib = await demo([], { LIGHTSEQ_CUDART_SO: "/nonexistent/path" });
  expect(lib.code).toBe(1);
  expect(lib.stderr).toMatch(/^demo: LIGHTSEQ_CUDART_SO=\/nonexistent\/path: no such file .*\n$/);
  const env = await demo([], { LIGHTSEQ_COMM_TIMEOUT_MS: "soon" });
  expect(env.code).toBe(1);
  expect(env.stderr).toBe('demo: LIGHTSEQ_COMM_TIMEOUT_MS: expected a positive number of milliseconds, got "soon"\n');
  for (const r of [many, bad, lib, env]) expect(r.stdout).not.toContain("[rank");
});
