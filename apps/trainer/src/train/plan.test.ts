// planRun: the checkpoint policy, where the optimizer state lives, checkpoint spill and MLP tiling,
// chosen from the memory estimate before anything is allocated (one H200: 143,771 MiB as the driver
// counts it).
import { expect, test } from "bun:test";
import { formatPolicy, keptLayerBytes, parsePolicy } from "@lightseq/checkpointing";
import { layerLayout, llamaPreset } from "@lightseq/llama";
import { paramCount } from "../metrics.ts";
import { estimate, MLP_CHUNK, planRun, TILE_ABOVE, trainerExtraBytes } from "./plan.ts";

const GiB = 2 ** 30;
const h200 = { gpu: true, deviceBytes: 143771 * 2 ** 20, hostBytes: 108 * GiB, cp: 1, dp: 1, perLayer: false } as const;

test("llama2-7b at 32K on one H200, update after the backward: the host state leaves room to keep 18 layers whole", () => {
  const p = planRun({ ...h200, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "auto" });
  expect([p.state, p.resident, formatPolicy(p.policy), p.offload, p.mlpChunkTokens]).toEqual([
    "host",
    true,
    "remat-aware x14 + none x18",
    "none",
    null,
  ]);
  expect(p.reason).toMatch(
    /^remat-aware x14 \+ none x18, optimizer state in pinned host memory \(streamed; layer 0's and the embedding's on the GPU\): [\d.]+ GiB of 133\.4 GiB usable/,
  );
  expect(p.reason).toMatch(
    /; faster ones do not fit \(none needs [\d.]+ GiB\); model step ~4\.\d\d s against .* with the state on the host ~4\.\d\d s/,
  );
  expect(p.gpuBytes).toBeLessThanOrEqual(0.95 * h200.deviceBytes);
});

test("llama2-7b at 32K with the update per layer: 24 layers kept whole with the host state; 11 with the device state", () => {
  const p = planRun({ ...h200, perLayer: true, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "auto" });
  expect([p.state, p.resident, formatPolicy(p.policy), p.mlpChunkTokens]).toEqual(["host", true, "remat-aware x8 + none x24", null]);
  // the step-time model: layer 0's and the embedding's state on the GPU cost one layer kept whole
  // (4.0 GB), and save their ~80 ms of streaming after the backward
  expect(p.reason).toMatch(/model step ~4\.3\d s against .*remat-aware x7 \+ none x25 with the state on the host ~4\.3\d s/);
  const dev = planRun({ ...h200, perLayer: true, model: llamaPreset("llama2-7b"), seq: 32768, policy: "auto", optimizer: "device" });
  // (one layer fewer whole than before DistAttn's one-rank buffers were counted: 1.4 GiB at 32K)
  expect([dev.state, formatPolicy(dev.policy), dev.mlpChunkTokens]).toEqual(["device", "remat-aware x21 + none x11", 8192]);
  expect(dev.reason).toMatch(
    /^remat-aware x21 \+ none x11, tiled MLP \(8192-token chunks\), optimizer state on the device: [\d.]+ GiB of 133\.4 GiB usable/,
  );
});

test("an explicit per-layer --policy is kept when it fits, and refused with its numbers when it does not", () => {
  const m = llamaPreset("llama2-7b");
  const p = planRun({ ...h200, perLayer: true, model: m, seq: 32768, policy: "remat-aware*16,none*16", optimizer: "host" });
  expect([formatPolicy(p.policy), p.state]).toEqual(["remat-aware x16 + none x16", "host"]);
  expect(p.reason).toMatch(/; --policy/);
  expect(() => planRun({ ...h200, perLayer: true, model: m, seq: 32768, policy: "none*32", optimizer: "device" })).toThrow(
    /does not fit .*none needs [\d.]+ GiB.*: use more ranks/,
  );
  expect(() => planRun({ ...h200, perLayer: true, model: m, seq: 32768, policy: "none*30", optimizer: "host" })).toThrow(
    "its counts add up to 30 layers, the model has 32",
  );
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
  const est = estimate(i, "remat-aware", { place: "host", resident: false, offload: "none", mlpChunkTokens: 8192, lossChunkTokens: 2048 });
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
  expect(p.reason).toMatch(/the fastest policy fits; model step ~[\d.]+ s against .*none with the state on the host/);
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
    return [formatPolicy(p.policy), p.state, p.offload, p.deviceLayers, p.mlpChunkTokens];
  };
  expect(pick(32768, true)).toEqual(["remat-aware x8 + none x24", "host", "none", 32, null]);
  // From 64K on, DistAttn's one-rank buffers (f32 dq, dk, dv accumulators and a block's temporaries,
  // 28.1 KiB per token) and dq, dk, dv beside RoPE's dqkv (16 KiB per token more than dO beside them)
  // take one more layer out of `none` (2026-12-02's plans came within 0.8-1.6 GiB of the allocator's peak
  // once the 3 GiB runtime term, which it does not see, is set aside).
  expect(pick(65536, true)).toEqual(["remat-aware x10 + none x22", "host", "none", 32, 8192]);
  expect(pick(131072, true)).toEqual(["remat-aware x28 + none x4", "host", "none", 32, 8192]);
  // 256K: the state on the host, the first 13 layers' checkpoints spilled, 10 full layers. The state on
  // the device with 4 layers' checkpoints on the GPU (full x3 + remat-aware x29, chosen before these
  // terms) held 137.3 GiB of allocations in step 1 and ran out in step 2 (bench/results/2026-12-02/call4).
  expect(pick(262144, true)).toEqual(["full x10 + remat-aware x22", "host", "spill", 19, 8192]);
  expect(pick(393216, true)).toEqual(["(full, skip) x2 + full x28", "host", "spill", 20, 8192]);
  // 512K (issue 14): full on every layer spilled needs 155.3 GiB of host memory; with every other layer
  // of the first 26 skipping (keeping nothing: their input is re-run from the layer before) 32 GiB
  // of checkpoints spill beside the 75.3 GiB state.
  expect(pick(524288, true)).toEqual(["(full, skip) x13 + full x6", "host", "spill", 17, 8192]);
  // Updating after the backward keeps the whole gradient on the GPU: at 256K the checkpoints spill.
  expect(pick(262144, false)).toEqual(["full x20 + remat-aware x12", "host", "spill", 16, 8192]);
  expect(pick(327680, false)).toEqual(["full", "host", "spill", 19, 8192]);
  // 512K with more host memory: 21 layers' checkpoints spilled beside the state.
  const more = planRun({ ...one, hostBytes: 160 * GiB, perLayer: true, model: llamaPreset("llama2-7b"), seq: 524288 });
  expect([formatPolicy(more.policy), more.state, more.offload, more.deviceLayers]).toEqual([
    "full x31 + remat-aware x1",
    "host",
    "spill",
    11,
  ]);
  console.log(
    `llama2-7b, one 139.8 GiB GPU, 108 GiB host (seq, update, policy, state, offload, layers on the GPU, MLP tile):\n${rows.join("\n")}`,
  );
});

test("the 256K plan of 2026-12-02 (bench/results/2026-12-02/call4): its estimate covers what the allocator held", () => {
  // full x3 + remat-aware x29, the state on the device, 4 layers' checkpoints on the GPU, tiled MLP: the
  // allocator's peak in step 1 was 137.3 GiB, in layer 31's attention backward (DistAttn's cuDNN block
  // call); step 2 held one more layer-gradient scratch there (0.75 GiB: the sink's pool keeps the two
  // that step 1's backward made, the first was not yet made at layer 31) and ran out asking for that
  // call's 2.02 GiB dQ accumulator. The estimate less its 3 GiB runtime term (which the allocator does
  // not see) must cover both; before DistAttn's one-rank buffers and RoPE's dqkv were counted it was
  // 128.9 GiB.
  const m = llamaPreset("llama2-7b");
  const i = { ...one, hostBytes: 107 * GiB, perLayer: true, model: m, seq: 262144 };
  const policy = parsePolicy("full*3,remat-aware*29", 32);
  const est = estimate(i, policy, { place: "device", resident: false, offload: "spill", mlpChunkTokens: 8192, lossChunkTokens: 2048 });
  const onGpu = (n: number) =>
    keptLayerBytes(m, policy, 262144, 8192)
      .slice(32 - n)
      .reduce((a, b) => a + b, 0);
  const checkpoints = est.e.gpu.find((t) => t.name === "checkpoints")?.bytes as number;
  const withFour = est.gpuBytes - checkpoints + onGpu(4) - 3 * GiB;
  expect(est.e.peakPhase).toBe("attention backward");
  expect(withFour / GiB).toBeGreaterThanOrEqual(137.3 + (4 * layerLayout(m).numel) / GiB);
  expect(withFour / GiB).toBeCloseTo(139.9, 1);
  // and the planner no longer picks it: 4 layers on the GPU do not fit in 132.8 GiB
  expect(est.fits).toBe(false);
});

test("spill is chosen only when nothing fits on the GPU alone; the reason and the memory line name it", () => {
  const p = planRun({ ...one, perLayer: false, optimizer: "host", model: llamaPreset("llama2-7b"), seq: 327680 });
  expect([formatPolicy(p.policy), p.offload, p.deviceLayers]).toEqual(["full", "spill", 19]);
  expect(p.reason).toMatch(/^full \+ spill \(checkpoints of 19 of 32 layers on the GPU, the rest pinned on the host\), tiled MLP/);
  expect(p.reason).toMatch(
    /; faster ones do not fit \(remat-aware needs [\d.]+ GiB \+ [\d.]+ GiB of 108\.0 GiB on the host\); model step ~[\d.]+ s against /,
  );
  expect(p.hostStateBytes / GiB).toBeCloseTo(75.3, 1);
  expect(p.hostCheckpointBytes).toBe(13 * 327680 * 8192); // the first 13 layers (full) spilled: x, 8 KiB per token
  expect(p.memory).toMatch(
    /^memory: GPU [\d.]+ GiB of 132\.8 GiB usable \(139\.8 GiB\) at the attention backward peak \(327680 local tokens\); host 75\.3 GiB optimizer state \+ 32\.5 GiB spilled checkpoints = 107\.8 GiB of 108\.0 GiB pinned$/,
  );
  expect(p.gpuBytes).toBeLessThanOrEqual(0.95 * one.deviceBytes);
});

test("512K on one H200: every odd layer of the first 26 skips, the first 15 layers' checkpoints spill (the plan line)", () => {
  const p = planRun({ ...one, perLayer: true, model: llamaPreset("llama2-7b"), seq: 524288 });
  expect(p.reason).toMatch(
    /^\(full, skip\) x13 \+ full x6 \+ spill \(checkpoints of 17 of 32 layers on the GPU, the rest pinned on the host\), tiled MLP \(8192-token chunks\), optimizer state in pinned host memory \(streamed\): 132\.3 GiB of 132\.8 GiB usable \(139\.8 GiB\) on the GPU; faster ones do not fit \(remat-aware needs [\d.]+ GiB \+ [\d.]+ GiB of 108\.0 GiB on the host, full needs [\d.]+ GiB \+ 155\.3 GiB of 108\.0 GiB on the host\); model step ~\d+\.\d\d s against \(full, skip\) x14 \+ full x4 \+ spill, tiled MLP with the state on the host \(layer 0's and the embedding's on the GPU\) ~\d+\.\d\d s$/,
  );
  // layers 0..14 spilled: 8 full (x, 8 KiB per token) and 7 skip (nothing)
  expect(p.hostCheckpointBytes).toBe(8 * 524288 * 8192);
  expect(p.memory).toBe(
    "memory: GPU 132.3 GiB of 132.8 GiB usable (139.8 GiB) at the attention backward peak (524288 local tokens); host 75.3 GiB optimizer state + 32.0 GiB spilled checkpoints = 107.3 GiB of 108.0 GiB pinned",
  );
});

test("refused when the host cannot take the rest either, with the smallest candidate's numbers", () => {
  expect(() => planRun({ ...one, perLayer: true, optimizer: "host", model: llamaPreset("llama2-7b"), seq: 720896 })).toThrow(
    /does not fit .*with the optimizer state on the host, checkpoints spilled to the host, nothing fits .*the smallest, \(full, skip\) x16 \+ spill with the state on the host, needs [\d.]+ GiB of 132\.8 GiB on the GPU and [\d.]+ GiB of 108\.0 GiB pinned host memory\): use more ranks/,
  );
  // Less host memory: even 256K, which fits on the GPU alone, is refused for want of room for the state.
  expect(() =>
    planRun({ ...one, hostBytes: 64 * GiB, perLayer: true, optimizer: "host", model: llamaPreset("llama2-7b"), seq: 262144 }),
  ).toThrow(/needs [\d.]+ GiB of [\d.]+ GiB on the GPU and [\d.]+ GiB of 64\.0 GiB pinned host memory/);
});

test("the MLP is tiled once the local tokens exceed TILE_ABOVE (sequence / cp)", () => {
  const m = llamaPreset("llama2-7b");
  const at = (seq: number, cp: number) => planRun({ ...one, cp, perLayer: true, model: m, seq }).mlpChunkTokens;
  expect(at(TILE_ABOVE, 1)).toBeNull(); // never tiled at or below
  expect(at(TILE_ABOVE + 1, 1)).toBe(MLP_CHUNK); // tiled `none` (gate|up again) beats a mix untiled
  expect(at(65536, 1)).toBe(MLP_CHUNK); // needed: 24 layers whole fit only tiled
  expect(at(65536, 4)).toBeNull(); // 16K local tokens per rank
  expect(at(131072, 4)).toBeNull(); // untiled with the host state: 28 layers whole, faster
});
