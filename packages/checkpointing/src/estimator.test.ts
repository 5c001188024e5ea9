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

  test("a layer's backward, phase by phase (layer.ts's order), per token for Llama-2-7B", () => {
    // MLP backward under full: dy 8192 + recomputed attention inputs (rstd1 4, xn 8192, q, k, v 3 x 8192)
    // + o 8192 + lse 128 + h, hn 2 x 8192 + rstd2 4 + gu 44,032 + a 22,016 + dgu 44,032 + max(da 22,016, dhn 8192)
    const fullMlp = 8192 + (4 + 4 * 8192) + (8192 + 128) + (2 * 8192 + 4) + 44_032 + 22_016 + 44_032 + 22_016;
    expect(fullMlp).toBe(197_768);
    const e = estimateMemory(plan(32768, 1, "full"));
    expect(gib(e, "working set (MLP backward)")).toBeCloseTo((fullMlp * 32768) / GiB, 9);
    expect(e.peakPhase).toBe("MLP backward");
    expectTable(gib(e, "working set (MLP backward)"), 6.0); // the table's 1.5 x 131,584 B per token: 6.0 GiB as well
    // attention backward under full: dh 8192 + attention inputs 32,772 + o, lse 8320 + dO 8192 + dq, dk, dv 24,576
    expect(gib(e, "working set (attention backward)")).toBeCloseTo(((8192 + 32_772 + 8320 + 8192 + 24_576) * 32768) / GiB, 9);
    // remat-aware keeps o and lse: the MLP phase no longer holds the attention inputs
    const remat = 8192 + (2 * 8192 + 4) + 44_032 + 22_016 + 44_032 + 22_016;
    expect(gib(estimateMemory(plan(32768, 1, "remat-aware")), "working set (MLP backward)")).toBeCloseTo((remat * 32768) / GiB, 9);
    // none keeps everything: only the gradients dy, dgu and da
    expect(gib(estimateMemory(plan(8192, 1, "none")), "working set (MLP backward)")).toBeCloseTo(
      ((8192 + 44_032 + 22_016) * 8192) / GiB,
      9,
    );
    // tiled MLP (4096-token tiles): gu, a, da and dgu exist for one tile; dhn [T, C] whole; gu and a are
    // never kept, even under none
    const tiledNarrow = 8192 + (2 * 8192 + 4) + 8192;
    const tiledWide = 44_032 + 22_016 + 44_032 + 22_016;
    const t = estimateMemory(plan(32768, 1, "remat-aware", { mlpChunkTokens: 4096 }));
    expect(gib(t, "working set (MLP backward)")).toBeCloseTo((tiledNarrow * 32768 + tiledWide * 4096) / GiB, 9);
    const none = estimateMemory(plan(8192, 1, "none", { mlpChunkTokens: 1024 }));
    expect(gib(none, "checkpoints")).toBeCloseTo(((131_720 - 66_048) * 8192 * 32) / GiB, 9);
  });

  // The table's totals are states + checkpoints + its working set (1.5 x 131,584 B per token) + ring +
  // 5 GiB (2 of FSDP transients, 3 of runtime), every term added. Ours keeps one phase at a time; with
  // the table's working set and ring in place of our phases, the always-alive terms must give the
  // table's totals up to its rounding (each of its terms to 0.05 GiB).
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
        const always = e.gpu.filter((t) => t.phase === undefined).reduce((s, t) => s + t.bytes, 0) / GiB;
        const ring = P > 1 ? gib(e, "DistAttn buffers") : 0;
        const asTable = always + (1.5 * 131_584 * e.localTokens) / GiB + ring;
        expect(Math.abs(asTable - want)).toBeLessThan(0.2);
      }
    }
  });

  test("the peak is the always-alive terms plus the largest phase", () => {
    for (const [S, P, kind] of [
      [32768, 1, "full"],
      [65536, 2, "remat-aware"],
      [131072, 4, "none"],
    ] as const) {
      const e = estimateMemory(plan(S, P, kind, { deviceBytes: 1000 * GiB }));
      const sumOf = (f: (t: (typeof e.gpu)[number]) => boolean) => e.gpu.filter(f).reduce((s, t) => s + t.bytes, 0);
      const phases = (["loss", "MLP backward", "attention backward"] as const).map((p) => sumOf((t) => t.phase === p));
      expect(e.gpuBytes).toBe(sumOf((t) => t.phase === undefined) + Math.max(...phases));
    }
    // at 64K on 2 ranks remat-aware peaks in the attention backward (its DistAttn buffers), full in the MLP's
    expect(estimateMemory(plan(65536, 2, "remat-aware")).peakPhase).toBe("attention backward");
    expect(estimateMemory(plan(65536, 2, "full")).peakPhase).toBe("MLP backward");
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
      "working set (MLP backward)",
      "working set (attention backward)",
      "DistAttn buffers",
      "loss chunk",
      "runtime and allocator slack",
      "checkpoints",
      "offloaded checkpoints",
    ]) {
      expect(text).toContain(name);
    }
    expect(text).toContain("[attention backward, the peak]");
  });
});
