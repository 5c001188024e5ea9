import { describe, expect, test } from "bun:test";
import {
  autoPolicy,
  estimateMemory,
  formatEstimate,
  MemoryEstimateError,
  type MemoryPlan,
  type ModelShape,
  paramCounts,
  savedBytesPerToken,
} from "./estimator.ts";
import type { CheckpointPolicy } from "./policy.ts";

// Llama-2-7B, the model of shared/reference/performance.md section 7.
const LLAMA2_7B: ModelShape = {
  dim: 4096,
  layers: 32,
  heads: 32,
  kvHeads: 32,
  headDim: 128,
  ffn: 11008,
  vocab: 32000,
  tiedEmbeddings: false,
};
const GiB = 2 ** 30;
const H100 = 78 * GiB;
const H200 = 139 * GiB;

function plan(seqLen: number, cp: number, kind: CheckpointPolicy["kind"], extra: Partial<MemoryPlan> = {}): MemoryPlan {
  return {
    model: LLAMA2_7B,
    seqLen,
    mesh: { cp, dp: 1 },
    policy: { kind },
    offload: "none",
    optimizer: "device",
    deviceBytes: H200,
    ...extra,
  };
}
/** The table rounds to one decimal: a value within half a unit (and float noise) matches. */
const expectTable = (got: number, want: number) => expect(Math.abs(got - want)).toBeLessThanOrEqual(0.05 + 1e-9);
const gib = (e: ReturnType<typeof estimateMemory>, name: string) => {
  const t = [...e.gpu, ...e.host].find((x) => x.name === name);
  if (t === undefined) throw new Error(`no term ${name} in ${e.gpu.map((x) => x.name).join(", ")}`);
  return t.bytes / GiB;
};

describe("terms against performance.md section 7 (Llama-2-7B)", () => {
  test("parameter count and per-token bytes", () => {
    expect(paramCounts(LLAMA2_7B).total).toBe(6_738_415_616);
    // full recompute keeps x: 2h B per token per layer = 256 KiB per token over 32 layers
    expect(savedBytesPerToken(LLAMA2_7B, "x") * 32).toBe(256 * 1024);
    // remat-aware adds O (2h) and lse (4 B x 32 heads): (8192 + 8192 + 128) x 32 = 516 KiB per token
    expect((savedBytesPerToken(LLAMA2_7B, "x") + savedBytesPerToken(LLAMA2_7B, "o") + savedBytesPerToken(LLAMA2_7B, "lse")) * 32).toBe(
      516 * 1024,
    );
  });

  // rows of the table: S, P, states, ckpt full, ring (GiB, the table's one decimal)
  const rows: [number, number, number, number, number][] = [
    [32768, 1, 100.4, 8.0, 0],
    [32768, 2, 50.2, 4.0, 1.8],
    [65536, 4, 25.1, 4.0, 1.8],
    [131072, 2, 50.2, 16.0, 7.0],
    [524288, 8, 12.6, 16.0, 7.0],
  ];
  for (const [S, P, states, ckpt, ring] of rows) {
    test(`S=${S / 1024}K P=${P}: states ${states}, checkpoints ${ckpt}, ring ${ring} GiB`, () => {
      const e = estimateMemory(plan(S, P, "full"));
      expectTable(gib(e, "model states"), states);
      expectTable(gib(e, "checkpoints"), ckpt);
      if (P > 1) expectTable(gib(e, "DistAttn buffers"), ring);
      else expect(e.gpu.some((t) => t.name === "DistAttn buffers")).toBe(false);
      // the table's "FSDP transients" of about 2.0 GiB: two gathered layers, embedding and head in bf16, one layer's fp32 gradients
      expectTable(gib(e, "gathered weights") + gib(e, "layer gradients"), 2.0);
      // remat-aware keeps 516 instead of 256 KiB per token
      expect(gib(estimateMemory(plan(S, P, "remat-aware")), "checkpoints")).toBeCloseTo((ckpt * 516) / 256, 6);
    });
  }

  test("one layer's working set: 1.5 x the saved tensors of a layer, less what is already kept", () => {
    // per token: 4 x 2h (x, xn, h, hn) + 2 x 4 (rstd) + 2 x 2h (q, o) + 2 x 2h (k, v; MHA) + 4 x 32 (lse)
    // + 3 x 2f (gu, a) = 131,720 B (the table's 16h + 6f = 131,584 leaves out rstd and lse). Full keeps x.
    const perToken = 1.5 * 131_720 - 8192;
    expect(gib(estimateMemory(plan(32768, 1, "full")), "one layer's working set")).toBeCloseTo((perToken * 32768) / GiB, 6);
    // the table's 6.0 GiB at 32K counts the kept x once more: ours is 5.8
    expect(gib(estimateMemory(plan(32768, 1, "full")), "one layer's working set")).toBeCloseTo(5.78, 2);
    // tiled MLP: the 6f B/token of gate|up and SwiGLU exist for 4096 tokens only
    const tiled = gib(estimateMemory(plan(32768, 1, "full", { mlpChunkTokens: 4096 })), "one layer's working set");
    expect(tiled).toBeCloseTo((1.5 * ((131_720 - 66_048) * 32768 + 66_048 * 4096) - 8192 * 32768) / GiB, 6);
    // under none gate|up and SwiGLU are kept, so tiling cannot drop them
    expect(gib(estimateMemory(plan(8192, 1, "none", { mlpChunkTokens: 1024 })), "one layer's working set")).toBeCloseTo(
      (0.5 * 131_720 * 8192) / GiB,
      6,
    );
  });

  // The table's totals are states + checkpoints + its working set (1.5 x 131,584 B per token, the kept
  // tensors counted again) + ring + 5 GiB (2 of FSDP transients, 3 of runtime), with no loss term (a
  // chunked loss assumed free). Ours, with the table's working set in place of ours and no loss chunk,
  // must give the table's totals up to its rounding (each of its terms to 0.05 GiB).
  test("totals reconcile with the table term by term", () => {
    const table: [number, number, number, number][] = [
      // S, P, total full, total remat-aware (GiB)
      [32768, 1, 119.4, 127.6],
      [32768, 2, 64.0, 68.0],
      [65536, 2, 72.7, 80.8],
      [131072, 4, 47.6, 55.7],
      [262144, 8, 35.1, 43.2],
      [524288, 4, 100.2, 132.7],
    ];
    for (const [S, P, full, remat] of table) {
      for (const [kind, want] of [
        ["full", full],
        ["remat-aware", remat],
      ] as const) {
        const e = estimateMemory(plan(S, P, kind));
        const tableWs = (1.5 * 131_584 * e.localTokens) / GiB;
        const asTable = e.gpuBytes / GiB - gib(e, "loss chunk") - gib(e, "one layer's working set") + tableWs;
        expect(Math.abs(asTable - want)).toBeLessThan(0.2);
      }
    }
  });

  test("fits as the table says: 64K on one H200 with full recompute (tight), not remat-aware; 128K P=2 not on an H100", () => {
    expect(estimateMemory(plan(65536, 1, "full")).fits).toBe(true);
    expect(estimateMemory(plan(65536, 1, "remat-aware")).fits).toBe(false);
    expect(estimateMemory(plan(131072, 2, "full", { deviceBytes: H100 })).fits).toBe(false);
    expect(estimateMemory(plan(65536, 4, "remat-aware", { deviceBytes: H100 })).fits).toBe(true);
  });

  test("DESIGN.md section 7: one H200, optimizer on the host, 256K with full recompute keeps 64 GiB of checkpoints", () => {
    const e = estimateMemory(plan(262144, 1, "full", { optimizer: "host", hostBytes: 128 * GiB }));
    expect(gib(e, "checkpoints")).toBeCloseTo(64, 6);
    expect(gib(e, "optimizer state")).toBeCloseTo(75.3, 1); // 12 B x 6.74B params
    expect(gib(e, "bf16 weight shard")).toBeCloseTo(12.6, 1);
    expect(e.gpu.some((t) => t.name === "model states")).toBe(false);
  });
});

test("optimizer none: whole bf16 weights and f32 gradients, nothing gathered", () => {
  const e = estimateMemory(plan(32768, 1, "full", { optimizer: "none" }));
  expect(gib(e, "bf16 weights")).toBeCloseTo((2 * 6_738_415_616) / GiB, 6);
  expect(gib(e, "f32 gradients")).toBeCloseTo((4 * 6_738_415_616) / GiB, 6);
  expect(e.gpu.map((t) => t.name)).not.toContain("gathered weights");
  expect(e.gpu.map((t) => t.name)).not.toContain("model states");
});

describe("offload", () => {
  test("host: two layers in flight on the GPU, all of them on the host", () => {
    const e = estimateMemory(plan(65536, 2, "remat-aware", { offload: "host", hostBytes: 64 * GiB }));
    const perLayer = 16_512 * 32768;
    expect(gib(e, "checkpoints")).toBeCloseTo((2 * perLayer) / GiB, 6);
    expect(gib(e, "offloaded checkpoints")).toBeCloseTo((32 * perLayer) / GiB, 6);
    expect(e.fits).toBe(true);
  });

  test("spill: as many whole layers on the GPU as fit, the rest on the host", () => {
    const e = estimateMemory(plan(262144, 2, "remat-aware", { offload: "spill", hostBytes: 64 * GiB }));
    const perLayer = 16_512 * 131072;
    const onGpu = gib(e, "checkpoints");
    expect(Number.isInteger(Math.round((onGpu * GiB) / perLayer))).toBe(true);
    expect(onGpu + gib(e, "offloaded checkpoints")).toBeCloseTo((32 * perLayer) / GiB, 6);
    expect(e.gpuBytes).toBeLessThanOrEqual(H200);
    expect(e.gpuBytes + perLayer).toBeGreaterThan(H200); // one more layer would not fit
  });

  test("host use without a host budget does not fit, and says so", () => {
    const e = estimateMemory(plan(32768, 2, "full", { offload: "host" }));
    expect(e.fits).toBe(false);
    expect(e.overflows[0]).toMatch(/host: needs .* but the plan gives no hostBytes/);
  });
});

describe("auto", () => {
  test("the fastest policy that fits, with the reason", () => {
    const base = { model: LLAMA2_7B, mesh: { cp: 2, dp: 1 }, optimizer: "device" as const, deviceBytes: H200, hostBytes: 64 * GiB };
    const a = autoPolicy({ ...base, seqLen: 32768 });
    expect([a.policy.kind, a.offload]).toEqual(["none", "none"]);
    expect(a.reason).toMatch(/^none: .* of 139\.0 GiB on the GPU; the fastest policy fits$/);
    const b = autoPolicy({ ...base, seqLen: 65536 });
    expect([b.policy.kind, b.offload]).toEqual(["remat-aware", "none"]);
    expect(b.reason).toMatch(/faster ones do not fit: none needs GPU: needs .* of 139\.0 GiB/);
    const c = autoPolicy({ ...base, seqLen: 262144 });
    expect([c.policy.kind, c.offload]).toEqual(["remat-aware", "spill"]);
    expect(c.reason).toMatch(/remat-aware needs GPU/);
    // without a host budget, no offload is considered: full recompute on the GPU
    const { hostBytes: _, ...noHost } = base;
    const d = autoPolicy({ ...noHost, seqLen: 262144 });
    expect([d.policy.kind, d.offload]).toEqual(["full", "none"]);
  });

  test("a config that fits nowhere is refused with the terms that broke it", () => {
    let err: unknown;
    try {
      autoPolicy({ model: LLAMA2_7B, seqLen: 131072, mesh: { cp: 1, dp: 1 }, optimizer: "device", deviceBytes: H100 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MemoryEstimateError);
    const msg = (err as Error).message;
    expect(msg).toMatch(
      /^no checkpoint policy fits 131072 tokens on cp=1 x dp=1 ranks: the smallest, full, overflows GPU: needs .* of 78\.0 GiB \(model states 100\.4 GiB, /,
    );
    expect(msg).toMatch(/Try more sequence-parallel ranks \(cp\), or the optimizer on the host/);
  });

  test("bad plans are refused by name", () => {
    expect(() => estimateMemory(plan(0, 1, "full"))).toThrow(/seqLen must be a positive integer, got 0/);
    expect(() => estimateMemory(plan(1024, 1, "full", { weights: "host" }))).toThrow(
      /weights "host" streams the bf16 weights next to a host optimizer/,
    );
    expect(() => estimateMemory(plan(1024, 1, "full", { mlpChunkTokens: 0 }))).toThrow(/mlpChunkTokens must be a positive integer/);
  });

  test("the table names every term", () => {
    const text = formatEstimate(estimateMemory(plan(65536, 2, "remat-aware", { offload: "host", hostBytes: 64 * GiB })));
    for (const name of [
      "model states",
      "gathered weights",
      "layer gradients",
      "one layer's working set",
      "DistAttn buffers",
      "loss chunk",
      "runtime and allocator slack",
      "checkpoints",
      "offloaded checkpoints",
    ]) {
      expect(text).toContain(name);
    }
  });
});
