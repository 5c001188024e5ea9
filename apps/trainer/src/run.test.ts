import { expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig } from "./config.ts";
import { checkFreshRunDir, checkResumable, type RunState, resumePoint, runPaths, writeRunConfig } from "./run.ts";
import { finalizeSnapshot, writeRankShards } from "./snapshot.ts";

const base = resolveConfig({ machine: { gpus: 0 }, flags: { steps: 20 } });

test("a resume may change where to stop, the mesh and where to write, nothing that changes the numbers", () => {
  expect(() =>
    checkResumable(base, { ...base, steps: 30, cp: 1, nprocs: 1, policy: "full", snapshotEvery: 5, resume: true }, 20),
  ).not.toThrow();
  expect(() => checkResumable(base, { ...base, steps: 30, lr: 1e-4, seq: 512 }, 20)).toThrow(
    "--resume: the snapshot of step 20 was trained with --seq 256 (this run: 512), --lr 0.003 (this run: 0.0001); give the same values or start a new --out",
  );
  expect(() => checkResumable(base, { ...base, data: "mine.jsonl", steps: 30 }, 20)).toThrow(/--data null \(this run: "mine.jsonl"\)/);
  expect(() => checkResumable(base, base, 20)).toThrow("--resume: the snapshot is at step 20, --steps 20 leaves nothing to do");
});

test("the run folder gets its resolved config", () => {
  const dir = join(mkdtempSync(join(tmpdir(), "trainer-run-")), "run");
  const p = writeRunConfig({ ...base, out: dir });
  expect(p).toEqual(runPaths(dir));
  expect(JSON.parse(readFileSync(p.config, "utf8"))).toEqual({ ...base, out: dir });
  expect(readdirSync(dir)).toEqual(["train-config.json"]);
});

test("a fresh run refuses a folder with another run's snapshots", () => {
  const dir = mkdtempSync(join(tmpdir(), "trainer-run-"));
  expect(() => checkFreshRunDir({ ...base, out: join(dir, "new") })).not.toThrow();
  mkdirSync(join(dir, "snapshots", "step-00000010"), { recursive: true });
  mkdirSync(join(dir, "snapshots", "step-00000020"));
  expect(() => checkFreshRunDir({ ...base, out: dir })).toThrow(
    `--out ${dir} already holds snapshots (step-00000020): add --resume to continue that run, or give another --out`,
  );
  expect(() => checkFreshRunDir({ ...base, out: dir, resume: true })).not.toThrow();
});

test("resumePoint: the newest complete snapshot's state, checked against the config; none is an error", () => {
  const dir = mkdtempSync(join(tmpdir(), "trainer-run-"));
  const cfg = { ...base, out: dir, resume: true, steps: 30 };
  expect(() => resumePoint(cfg)).toThrow(`--resume: no complete snapshot in ${join(dir, "snapshots")}`);
  const layout = { buffers: [{ name: "b", numel: 4 }], align: 8 };
  const state: RunState = { step: 20, config: base, order: { seed: 1, count: 10, epoch: 2, next: 0 } };
  writeRankShards(runPaths(dir).snapshots, 20, 0, 1, layout, { master: new Float32Array(8) });
  finalizeSnapshot(runPaths(dir).snapshots, 20, { mesh: { cp: 1, dp: 1 }, layout, arrays: ["master"], state, keep: 2 });
  mkdirSync(join(dir, "snapshots", "step-00000025")); // no manifest: skipped, named
  const warned: string[] = [];
  const r = resumePoint(cfg, (l) => warned.push(l));
  expect(r.state).toEqual(state);
  expect(warned).toEqual([`resume: skipping ${join(dir, "snapshots", "step-00000025")}: no manifest.json (incomplete)`]);
  expect(() => resumePoint({ ...cfg, seed: 99 }, () => {})).toThrow(/--seed 1234 \(this run: 99\)/);
});
