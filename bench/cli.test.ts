// Every benchmark command line answers a user's mistake (a bad argument or environment value, no GPU
// for a GPU benchmark) with one line on stderr and exit 1, never a stack trace.

import { expect, test } from "bun:test";
import { join } from "node:path";
import { probeGpus } from "@lightseq/cuda";

const ROOT = join(import.meta.dir, "..");

function run(args: string[], env: Record<string, string> = {}): { code: number | null; stderr: string } {
  const p = Bun.spawnSync(["bun", ...args], { cwd: ROOT, stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  return { code: p.exitCode, stderr: p.stderr.toString() };
}

function expectOneLine(r: { code: number | null; stderr: string }, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(1);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr.trimEnd().split("\n").length, r.stderr).toBe(1);
}

test("bad arguments and environment values", () => {
  expectOneLine(
    run(["packages/attention/bench/attn-bench.ts", "--backends", "cuda,tpu"]),
    /^attn-bench: --backends: expected a list of cuda, cudnn; got "tpu"$/m,
  );
  expectOneLine(
    run(["packages/attention/bench/distattn-bench.ts", "o.json"], { BENCH_BACKEND: "tpu" }),
    /^distattn-bench: BENCH_BACKEND: expected one of cuda, cudnn, got "tpu"$/m,
  );
  expectOneLine(
    run(["packages/attention/bench/distattn-bench.ts", "o.json"], { BENCH_ALL_MODES_HKV: "many" }),
    /^distattn-bench: BENCH_ALL_MODES_HKV: expected a comma list of head counts/,
  );
});

test.skipIf(probeGpus().count > 0)("no GPU for a GPU benchmark (machines with a GPU skip this: it would run them)", () => {
  expectOneLine(run(["bench/foundation.ts"]), /^bench: no CUDA device available: /);
  expectOneLine(run(["packages/attention/bench/attn-bench.ts"]), /^attn-bench: no CUDA device available: /);
  expectOneLine(run(["packages/attention/bench/distattn-bench.ts", "o.json"]), /^distattn-bench: needs at least 2 GPUs, found 0: /);
  expectOneLine(run(["packages/comm/bench/nccl-bench.ts", "o.json"]), /^nccl-bench: no GPU: /);
});
