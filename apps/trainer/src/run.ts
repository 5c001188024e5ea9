// The run folder and what a resume may change. DIR holds train-config.json (the resolved config of the
// run, rewritten at every start), metrics.jsonl, loss.png/.svg, snapshots/ and hf/. A snapshot records
// the config it was trained with; resuming checks the new config against it key by key: keys that
// change the numbers (model, data, schedule, batch, seed, ...) must match for the resumed run to equal
// the uninterrupted one, the others (where to stop, the mesh, where to write) may differ.

import { existsSync, mkdirSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, FIELDS, type TrainConfig } from "./config.ts";
import type { OrderState } from "./data/order.ts";
import { latestComplete, type SnapshotInfo } from "./snapshot.ts";

export interface RunPaths {
  dir: string;
  config: string;
  metrics: string;
  lossPng: string;
  snapshots: string;
  hf: string;
}

export function runPaths(dir: string): RunPaths {
  return {
    dir,
    config: join(dir, "train-config.json"),
    metrics: join(dir, "metrics.jsonl"),
    lossPng: join(dir, "loss.png"),
    snapshots: join(dir, "snapshots"),
    hf: join(dir, "hf"),
  };
}

/** Creates DIR and writes train-config.json (temp file + rename). */
export function writeRunConfig(cfg: TrainConfig): RunPaths {
  const p = runPaths(cfg.out);
  mkdirSync(p.dir, { recursive: true });
  const tmp = `${p.config}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(cfg, null, 2)}\n`);
  renameSync(tmp, p.config);
  return p;
}

type Rule = "must-match" | "may-differ";

/** Every key decides: a new config key does not compile until it is given a rule here. */
export const RESUME_RULES: { readonly [K in keyof TrainConfig]: Rule } = {
  preset: "may-differ", // the values count, not the name they came from
  model: "must-match",
  seq: "must-match",
  steps: "may-differ",
  cp: "may-differ", // shards are re-cut for the new mesh
  nprocs: "may-differ",
  batch: "must-match",
  lr: "must-match",
  warmup: "must-match",
  minLr: "must-match",
  decaySteps: "must-match",
  weightDecay: "must-match",
  beta1: "must-match",
  beta2: "must-match",
  eps: "must-match",
  gradClip: "must-match",
  policy: "may-differ", // recomputation gives the same numbers
  optimizer: "may-differ",
  attention: "may-differ", // the streamed optimizer equals the device one bit for bit
  deterministic: "may-differ", // the same gradients, summed in a fixed order
  update: "must-match", // which norm clips which step
  data: "must-match",
  tokenizer: "must-match",
  out: "may-differ",
  resume: "may-differ",
  initFrom: "may-differ", // only read at a fresh start
  seed: "must-match",
  snapshotEvery: "may-differ",
  keepSnapshots: "may-differ",
  snapshots: "may-differ",
  export: "may-differ",
  profile: "may-differ", // timing only
};

/** Refuses a resume whose config changes the numbers, naming every such key with both values. */
export function checkResumable(saved: TrainConfig, now: TrainConfig, snapshotStep: number): void {
  const diffs: string[] = [];
  for (const k of Object.keys(RESUME_RULES) as (keyof TrainConfig)[]) {
    if (RESUME_RULES[k] === "must-match" && JSON.stringify(saved[k]) !== JSON.stringify(now[k]))
      diffs.push(`--${FIELDS[k].flag} ${JSON.stringify(saved[k])} (this run: ${JSON.stringify(now[k])})`);
  }
  if (diffs.length > 0)
    throw new ConfigError(
      `--resume: the snapshot of step ${snapshotStep} was trained with ${diffs.join(", ")}; give the same values or start a new --out`,
    );
  if (now.steps <= snapshotStep)
    throw new ConfigError(`--resume: the snapshot is at step ${snapshotStep}, --steps ${now.steps} leaves nothing to do`);
}

/**
 * A fresh run (no --resume) must not start in a folder holding another run's snapshots: a later
 * --resume would mix the two. Returns quietly for a new or snapshot-free folder.
 */
export function checkFreshRunDir(cfg: TrainConfig): void {
  const snaps = runPaths(cfg.out).snapshots;
  if (cfg.resume || !existsSync(snaps)) return;
  const steps = readdirSync(snaps).filter((e) => /^step-\d{8}$/.test(e));
  if (steps.length > 0)
    throw new ConfigError(
      `--out ${cfg.out} already holds snapshots (${steps.sort().at(-1)}): add --resume to continue that run, or give another --out`,
    );
}

/** The JSON state every snapshot carries (the manifest's `state`). */
export interface RunState {
  /** Optimizer steps done. */
  step: number;
  /** The resolved config the run was trained with. */
  config: TrainConfig;
  /** Data order position after `step` steps. */
  order: OrderState;
  /** Anything else the loop must restore exactly (RNG offsets, loss scale, ...). */
  extra?: Record<string, unknown>;
}

function isRunState(x: unknown): x is RunState {
  const s = x as RunState;
  return typeof s === "object" && s !== null && Number.isSafeInteger(s.step) && typeof s.config === "object" && typeof s.order === "object";
}

/**
 * Where --resume continues: the newest complete snapshot of DIR/snapshots (newer damaged ones are
 * reported through `warn`), its state, checked against this run's config. No snapshot is an error.
 */
export function resumePoint(cfg: TrainConfig, warn: (line: string) => void = console.error): { info: SnapshotInfo; state: RunState } {
  const dir = runPaths(cfg.out).snapshots;
  const { found, skipped } = latestComplete(dir);
  for (const s of skipped) warn(`resume: skipping ${s.dir}: ${s.problem}`);
  if (!found)
    throw new ConfigError(`--resume: no complete snapshot in ${dir}${skipped.length > 0 ? ` (${skipped.length} damaged, see above)` : ""}`);
  const state = found.manifest.state;
  if (!isRunState(state))
    throw new ConfigError(`--resume: ${found.dir} was not written by the trainer (its state has no step, config and order)`);
  checkResumable(state.config, cfg, state.step);
  return { info: found, state };
}
