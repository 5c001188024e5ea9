// The trainer on one GPU (skipped without one): the tiny model at 512 tokens for 8 steps with the
// optimizer state on the device and in pinned host memory (StreamedAdamW). Both learn and give the
// same losses: the same AdamW kernel on the same gradients, only where the state lives differs
// (optim/streamed.ts). Step 1 depends only on the seeded init: equal to the bit; later steps to 1e-3
// relative, as the attention backward (cuDNN's dQ accumulation) need not be deterministic from one
// process to the next. scripts/gpu/trainer-7b.sh runs the large cases.
// With the update per layer (3 steps, as trainer-7b.sh's smoke part) the two states must give the same
// losses to the bit: the host state's gradients go through zero.ts's ring of shard buffers, the device
// state's through one, and a buffer overwritten before its update read it shows as a different loss.

import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { skipWithoutGpu } from "@lightseq/cuda";

const ROOT = join(import.meta.dir, "..");
const dir = mkdtempSync(join(tmpdir(), "trainer-gpu-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const AFTER_BACKWARD = ["--seq", "512", "--steps", "8", "--warmup", "2", "--decay-steps", "8", "--nprocs", "1", "--cp", "1"];
const PER_LAYER = [
  ...["--seq", "512", "--steps", "3", "--warmup", "1", "--decay-steps", "3", "--nprocs", "1", "--cp", "1"],
  ...["--update", "per-layer", "--snapshots=false", "--export=false"],
];

function train(optimizer: "device" | "host", args = AFTER_BACKWARD, name: string = optimizer): number[] {
  const out = join(dir, name);
  const p = Bun.spawnSync(["bun", join(ROOT, "apps/trainer/index.ts"), ...args, "--optimizer", optimizer, "--out", out], {
    cwd: ROOT,
    stdout: "pipe",
    stderr: "pipe",
  });
  const text = p.stdout.toString();
  expect({ code: p.exitCode, err: p.stderr.toString().slice(-2000) }).toEqual({ code: 0, err: "" });
  expect(text).toMatch(new RegExp(`^policy .*optimizer state ${optimizer === "host" ? "in pinned host memory" : "on the device"}`, "m"));
  return readFileSync(join(out, "metrics.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => (JSON.parse(l) as { loss: number }).loss);
}

test.skipIf(skipWithoutGpu())(
  "one GPU: the device and the host optimizer learn and give the same losses",
  () => {
    const device = train("device");
    const host = train("host");
    expect(device).toHaveLength(8);
    expect(device.at(-1) as number).toBeLessThan((device[0] as number) - 1);
    expect(host[0]).toBe(device[0] as number);
    for (const [i, l] of host.entries()) expect(Math.abs(l - (device[i] as number)) / (device[i] as number)).toBeLessThan(1e-3);
  },
  180_000,
);

test.skipIf(skipWithoutGpu())(
  "one GPU, update per layer: the device state and the host state (ring of gradient buffers) give the same losses",
  () => {
    const device = train("device", PER_LAYER, "per-layer-device");
    const host = train("host", PER_LAYER, "per-layer-host");
    expect(device).toHaveLength(3);
    expect(host).toEqual(device);
  },
  180_000,
);
