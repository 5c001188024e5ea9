// planRun: the checkpoint policy, where the optimizer state lives, checkpoint spill and MLP tiling,
// chosen from the memory estimate before anything is allocated (one H200: 143,771 MiB as the driver
// counts it).
import { expect, test } from "bun:test";
import { layerLayout, llamaPreset } from "@lightseq/llama";
import { paramCount } from "../metrics.ts";
import { estimate, MLP_CHUNK, planRun, TILE_ABOVE, trainerExtraBytes } from "./plan.ts";

const GiB = 2 ** 30;
const h200 = { gpu: true, deviceBytes: 143771 * 2 ** 20, hostBytes: 108 * GiB, cp: 1, dp: 1, perLayer: false } as const;

test("llama2-7b at 32K on one H200, update after the backward: the tiled MLP lets full recompute fit beside the device state", () => {
  const p = planRun({ ...h200, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "auto" });
  expect([p.state, p.policy.kind, p.offload, p.mlpChunkTokens]).toEqual(["device", "full", "none", 8192]);
  expect(p.reason).toMatch(/^full, tiled MLP \(8192-token chunks\), optimizer state on the device: [\d.]+ GiB of 133\.4 GiB usable/);
  expect(p.reason).toMatch(/faster ones do not fit \(none needs [\d.]+ GiB, remat-aware needs [\d.]+ GiB\)$/);
  const host = planRun({ ...h200, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "host" });
  expect([host.state, host.policy.kind]).toEqual(["host", "none"]);
});

test("llama2-7b at 32K with the update per layer: no whole gradient, the state fits on the device", () => {
  const p = planRun({ ...h200, perLayer: true, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "auto" });
  expect([p.state, p.policy.kind]).toEqual(["device", "remat-aware"]);
  expect(p.reason).toMatch(/^remat-aware, tiled MLP \(8192-token chunks\), optimizer state on the device: [\d.]+ GiB of 133\.4 GiB usable/);
});

test("trainerExtraBytes: per layer, a ring of the largest buffer's shard instead of 4 B/param (3 with the host state, 1 with the device state)", () => {
  const m = llamaPreset("llama2-7b");
  const P = paramCount(m);
  const shard = (R: number) => (4 * layerLayout(m).numel) / R; // a layer is 7B's largest buffer (202M > 32000 x 4096)
  for (const R of [1, 8]) {
    expect(trainerExtraBytes(m, "host", R, false) - trainerExtraBytes(m, "host", R, true)).toBeCloseTo((4 * P) / R - 3 * shard(R), 0);
    expect(trainerExtraBytes(m, "device", R, false) - trainerExtraBytes(m, "device", R, true)).toBeCloseTo((4 * P) / R - shard(R), 0);
  }
  // The host state's whole gradient (25 GiB for 7B on one GPU) becomes three 0.75 GiB buffers.
  expect((trainerExtraBytes(m, "host", 1, false) - trainerExtraBytes(m, "host", 1, true)) / GiB).toBeCloseTo(22.8, 1);
  // A model whose embedding is its largest buffer sizes the ring by it.
  const wide = { ...m, vocab: 128256 };
  expect(trainerExtraBytes(wide, "host", 1, false) - trainerExtraBytes(wide, "host", 1, true)).toBeCloseTo(
    4 * paramCount(wide) - 3 * 4 * 128256 * m.dim,
    0,
  );
});

test("with the host state the estimator's stream buffers (a layer's state in and out) count as StreamedAdamW's slots", () => {
  const m = llamaPreset("llama2-7b");
  const i = { ...h200, model: m, seq: 32768, policy: "auto", optimizer: "host", perLayer: true } as const;
  const est = estimate(i, "remat-aware", { place: "host", offload: "none", mlpChunkTokens: 8192, lossChunkTokens: 2048 });
  const counted = (2 * 12 * layerLayout(m).numel) / 1;
  expect(est.e.gpu.find((t) => t.name === "optimizer stream buffers")?.bytes).toBe(counted);
  const slots = 3 * 3 * 4 * (8 << 20); // 288 MiB: 3 chunks of 8M elements of master, m, v
  expect(est.gpuBytes - est.e.gpuBytes).toBeCloseTo(trainerExtraBytes(m, "host", 1, true) - counted + slots, 0);
});

test("--optimizer device where it cannot fit, even with the checkpoints spilled, is refused before allocating, with what to do", () => {
  expect(() => planRun({ ...h200, model: llamaPreset("llama2-7b"), seq: 262144, policy: "auto", optimizer: "device" })).toThrow(
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

/** Llama-2-7B on one H200 (139.8 GiB) with 108 GiB of pinned host memory, the preset's update per layer. */
const one = { gpu: true, deviceBytes: 139.8 * GiB, hostBytes: 108 * GiB, cp: 1, dp: 1, policy: "auto", optimizer: "auto" } as const;

test("llama2-7b on one GPU from 32K to 512K tokens: what planRun picks (the table is printed)", () => {
  const rows: string[] = [];
  const pick = (seq: number, perLayer: boolean) => {
    const p = planRun({ ...one, perLayer, model: llamaPreset("llama2-7b"), seq });
    rows.push(
      `${String(seq / 1024).padStart(4)}K ${perLayer ? "per-layer " : "after-bwd "} ${p.policy.kind.padEnd(11)} ${p.state.padEnd(6)} ` +
        `${p.offload.padEnd(5)} ${String(p.deviceLayers).padStart(2)}/32 ${String(p.mlpChunkTokens ?? "-").padStart(4)}  ${p.memory}`,
    );
    return [p.policy.kind, p.state, p.offload, p.deviceLayers, p.mlpChunkTokens];
  };
  expect(pick(32768, true)).toEqual(["remat-aware", "device", "none", 32, 8192]);
  expect(pick(65536, true)).toEqual(["remat-aware", "device", "none", 32, 8192]);
  expect(pick(131072, true)).toEqual(["remat-aware", "host", "none", 32, 8192]);
  expect(pick(262144, true)).toEqual(["full", "host", "none", 32, 8192]);
  // Past what fits on the GPU alone: the device state leaves the host to the checkpoints, 30 layers of them.
  expect(pick(393216, true)).toEqual(["full", "device", "spill", 2, 8192]);
  expect(() => pick(524288, true)).toThrow(/135\.3 GiB of 108\.0 GiB pinned host memory/);
  // Updating after the backward keeps the whole gradient on the GPU: at 320K the checkpoints spill.
  expect(pick(262144, false)).toEqual(["full", "host", "none", 32, 8192]);
  expect(pick(327680, false)).toEqual(["full", "host", "spill", 25, 8192]);
  // 512K with more host memory: 15 layers' checkpoints spilled beside the state.
  const more = planRun({ ...one, hostBytes: 160 * GiB, perLayer: true, model: llamaPreset("llama2-7b"), seq: 524288 });
  expect([more.policy.kind, more.state, more.offload, more.deviceLayers]).toEqual(["full", "host", "spill", 17]);
  console.log(
    `llama2-7b, one 139.8 GiB GPU, 108 GiB host (seq, update, policy, state, offload, layers on the GPU, MLP tile):\n${rows.join("\n")}`,
  );
});

test("spill is chosen only when nothing fits on the GPU alone; the reason and the memory line name it", () => {
  const p = planRun({ ...one, perLayer: false, optimizer: "host", model: llamaPreset("llama2-7b"), seq: 327680 });
  expect([p.offload, p.deviceLayers]).toEqual(["spill", 25]);
  expect(p.reason).toMatch(/^full \+ spill \(checkpoints of 25 of 32 layers on the GPU, the rest pinned on the host\), tiled MLP/);
  expect(p.reason).toMatch(/; faster ones do not fit \(remat-aware needs [\d.]+ GiB \+ [\d.]+ GiB of 108\.0 GiB on the host\); /);
  expect(p.reason).toMatch(
    /with the optimizer state on the host no policy fits in 132\.8 GiB \(none needs [\d.]+ GiB, remat-aware needs [\d.]+ GiB, full needs [\d.]+ GiB\)$/,
  );
  expect(p.hostStateBytes / GiB).toBeCloseTo(75.3, 1);
  expect(p.hostCheckpointBytes).toBe(7 * 327680 * 8192); // 7 layers' x: 8 KiB per token
  expect(p.memory).toMatch(
    /^memory: GPU [\d.]+ GiB of 132\.8 GiB usable \(139\.8 GiB\) at the attention backward peak \(327680 local tokens\); host 75\.3 GiB optimizer state \+ 17\.5 GiB spilled checkpoints = 92\.8 GiB of 108\.0 GiB pinned$/,
  );
  expect(p.gpuBytes).toBeLessThanOrEqual(0.95 * one.deviceBytes);
});

test("refused when the host cannot take the rest either, with the smallest candidate's numbers", () => {
  expect(() => planRun({ ...one, perLayer: true, optimizer: "host", model: llamaPreset("llama2-7b"), seq: 524288 })).toThrow(
    /does not fit .*with the optimizer state on the host, checkpoints spilled to the host, no policy fits .*the smallest, full \+ spill with the state on the host, needs [\d.]+ GiB of 132\.8 GiB on the GPU and 135\.3 GiB of 108\.0 GiB pinned host memory\): use more ranks/,
  );
  // Less host memory: even 256K, which fits on the GPU alone, is refused for want of room for the state.
  expect(() =>
    planRun({ ...one, hostBytes: 64 * GiB, perLayer: true, optimizer: "host", model: llamaPreset("llama2-7b"), seq: 262144 }),
  ).toThrow(/needs [\d.]+ GiB of [\d.]+ GiB on the GPU and [\d.]+ GiB of 64\.0 GiB pinned host memory/);
});

test("the MLP is tiled once the local tokens exceed TILE_ABOVE (sequence / cp)", () => {
  const m = llamaPreset("llama2-7b");
  const at = (seq: number, cp: number) => planRun({ ...one, cp, perLayer: true, model: m, seq }).mlpChunkTokens;
  expect(at(TILE_ABOVE, 1)).toBeNull();
  expect(at(TILE_ABOVE + 1, 1)).toBe(MLP_CHUNK);
  expect(at(65536, 4)).toBeNull(); // 16K local tokens per rank
  expect(at(131072, 4)).toBe(MLP_CHUNK);
});
