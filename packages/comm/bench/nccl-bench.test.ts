// nccl-bench's arguments are checked before any rank starts: a bad value exits 2 naming the option.
// (The measurements themselves need GPUs; bench/recipes.ts's comm and overlap recipes run them.)

import { expect, test } from "bun:test";
import { join } from "node:path";

const SCRIPT = join(import.meta.dir, "nccl-bench.ts");

function run(args: string[]): { code: number | null; stderr: string } {
  const p = Bun.spawnSync(["bun", SCRIPT, ...args], { stderr: "pipe", stdout: "pipe" });
  return { code: p.exitCode, stderr: p.stderr.toString() };
}

test.each([
  [[], "OUT.json is required"],
  [["o.json", "p.json"], "one OUT.json expected"],
  [["o.json", "--comm-priority", "default,hi"], '--comm-priority: expected a comma list of default and high, got "hi"'],
  [["o.json", "--comm-priority", "default,"], "--comm-priority: expected a comma list"],
  [["o.json", "--trials", "0"], "--trials: expected a positive integer, got 0"],
  [["o.json", "--trials"], "--trials needs a value"],
  [["o.json", "--dtype", "f16"], "--dtype: expected f32 or bf16, got f16"],
  [["o.json", "--min-mib", "8", "--max-mib", "4"], "--min-mib 8 is above --max-mib 4"],
  [["o.json", "--overlap"], "unknown option --overlap"],
])("nccl-bench %j is refused: %s", (args, message) => {
  const r = run(args as string[]);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain(message as string);
  expect(r.stderr).toContain("usage: nccl-bench.ts");
});
