// planRun: the checkpoint policy and where the optimizer state lives, chosen from the memory
// estimate before anything is allocated (one H200: 143,771 MiB as the driver counts it).
import { expect, test } from "bun:test";
import { llamaPreset } from "@lightseq/llama";
import { planRun } from "./plan.ts";

const GiB = 2 ** 30;
const h200 = { gpu: true, deviceBytes: 143771 * 2 ** 20, hostBytes: 108 * GiB, cp: 1, dp: 1, perLayer: false } as const;

test("llama2-7b at 32K on one H200: the device state leaves no room, auto streams it from the host", () => {
  const p = planRun({ ...h200, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "auto" });
  expect(p.state).toBe("host");
  expect(p.policy.kind).toBe("remat-aware");
  expect(p.reason).toMatch(/^remat-aware, optimizer state in pinned host memory \(streamed\): [\d.]+ GiB of 133\.4 GiB usable/);
  expect(p.reason).toMatch(/with the optimizer state on the device no policy fits/);
});

test("llama2-7b at 32K with the update per layer: no whole gradient, the state fits on the device", () => {
  const p = planRun({ ...h200, perLayer: true, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "auto" });
  expect([p.state, p.policy.kind]).toEqual(["device", "remat-aware"]);
  expect(p.reason).toMatch(/^remat-aware, optimizer state on the device: [\d.]+ GiB of 133\.4 GiB usable/);
});

test("--optimizer device where it cannot fit is refused before allocating, with what to do", () => {
  expect(() => planRun({ ...h200, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "device" })).toThrow(
    /does not fit .*: use more ranks \(--nprocs, --cp\), a shorter --seq, or --optimizer host$/,
  );
});

test("a small model on a GPU keeps everything on the device and recomputes nothing", () => {
  const p = planRun({ ...h200, model: llamaPreset("tinyllama-1.1b"), seq: 2048, policy: "auto", optimizer: "auto" });
  expect([p.state, p.policy.kind]).toEqual(["device", "none"]);
  expect(p.reason).toMatch(/the fastest policy fits$/);
});

test("CPU ranks: the state in the rank's memory; an explicit --policy is kept and said so", () => {
  const p = planRun({
    model: llamaPreset("tiny"),
    seq: 256,
    cp: 2,
    dp: 1,
    policy: "full",
    optimizer: "auto",
    gpu: false,
    deviceBytes: 8 * GiB,
    hostBytes: 8 * GiB,
    perLayer: false,
  });
  expect([p.state, p.policy.kind]).toEqual(["cpu", "full"]);
  expect(p.reason).toMatch(/^full: [\d.]+ GiB of 8\.0 GiB per CPU rank; --policy$/);
});
