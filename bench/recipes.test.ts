// The recipes are well formed without a GPU: every script they call exists, every output lands in
// $OUT, every report reads files a step writes, reports skip what was not written, and the command
// line answers a user's mistake in one line.

import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { probeGpus } from "@lightseq/cuda";
import { expand, findRecipe, RECIPES, reportCalls } from "./recipes.ts";

const ROOT = join(import.meta.dir, "..");

test("names are unique; every command's script exists; every output is under $OUT", () => {
  expect(new Set(RECIPES.map((r) => r.name)).size).toBe(RECIPES.length);
  for (const r of RECIPES) {
    expect(r.steps.length, r.name).toBeGreaterThan(0);
    for (const s of r.steps) {
      for (const a of s.cmd)
        if (/\.(ts|py)$/.test(a) && !a.startsWith("$OUT")) expect(existsSync(join(ROOT, a)), `${r.name}: ${a}`).toBe(true);
      for (const a of s.cmd) if (a.endsWith(".json")) expect(a.startsWith("$OUT/"), `${r.name}: ${a}`).toBe(true);
      expect(s.capS).toBeGreaterThan(0);
    }
    // A recipe fits one device call: its caps may exceed the budget (it bounds them), not by far.
    expect(
      r.steps.reduce((t, s) => t + s.capS, 0),
      r.name,
    ).toBeLessThanOrEqual(600);
  }
});

test("every report reads only files that a step of its recipe writes", () => {
  for (const r of RECIPES) {
    const written = new Set(r.steps.flatMap((s) => s.cmd.filter((a) => a.startsWith("$OUT/"))));
    for (const rep of r.reports) for (const a of rep.slice(1)) if (a !== "--cp") expect(written.has(a), `${r.name}: ${a}`).toBe(true);
  }
});

test("reports run over the files that were written, and not at all without their inputs", () => {
  const r = findRecipe("distattn");
  const all = () => true;
  expect(reportCalls(r, "/o", all)).toEqual([["distattn", "/o/mha.json", "/o/gqa.json", "--cp", "/o/cp32.json", "--cp", "/o/cp8.json"]]);
  expect(reportCalls(r, "/o", (f) => f !== "/o/gqa.json" && f !== "/o/cp8.json")).toEqual([
    ["distattn", "/o/mha.json", "--cp", "/o/cp32.json"],
  ]);
  expect(reportCalls(r, "/o", (f) => f.includes("cp"))).toEqual([]);
  const comm = findRecipe("comm");
  expect(reportCalls(comm, "/o", (f) => f !== "/o/torch-2.json").map((c) => c[0])).toEqual(["comm", "overlap"]);
  expect(expand(["$OUT/a.json", "x"], "/o")).toEqual(["/o/a.json", "x"]);
});

async function cli(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawn(["bun", join(import.meta.dir, "recipes.ts"), ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
  });
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  await p.exited;
  return { code: p.exitCode, stdout, stderr };
}

test("the command line: --list, --dry, and one line for an unknown name or a bad BUDGET", async () => {
  const list = await cli(["--list"]);
  expect(list.code).toBe(0);
  expect(list.stdout.split("\n").filter(Boolean).length).toBe(RECIPES.length);
  const dry = await cli(["--dry", "overlap"], { OUT: "/x" });
  expect(dry.stdout).toContain("bun packages/comm/bench/nccl-bench.ts /x/ov.json --overlap-only --comm-priority default,high --trials 10");
  expect(dry.stdout).toContain("bun bench/report.ts overlap /x/ov.json /x/torch.json");
  const unknown = await cli(["nope"]);
  expect(unknown.code).toBe(1);
  expect(unknown.stderr).toMatch(/^recipes: unknown recipe "nope"; one of: gpu-tests, .*\n$/);
  const budget = await cli(["comm"], { BUDGET: "soon" });
  expect(budget.code).toBe(1);
  expect(budget.stderr).toBe('recipes: BUDGET: expected a positive number of seconds, got "soon"\n');
});

test.skipIf(probeGpus().count >= 2)("without the GPUs a recipe needs, one line says so (machines with 2+ GPUs skip this)", async () => {
  const r = await cli(["distattn"]);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^recipes: recipe distattn needs 2 GPUs, found [01]/);
  expect(r.stderr.split("\n").length).toBe(2);
});
