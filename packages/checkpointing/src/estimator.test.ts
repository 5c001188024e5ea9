import { describe, expect, test } from "bun:test";
import {
  autoPolicy,
  estimateMemory,
  formatEstimate,
  keptLayerBytes,
  layersThatFit,
  MemoryEstimateError,
  type MemoryPlan,
  paramCounts,
} from "./estimator.ts";
import { LLAMA2_7B } from "./fixtures/shapes.ts";
import { formatPolicy, mixedPolicy, parsePolicy, type UniformKind } from "./policy.ts";
import { distAttnOneRank, type ModelShape, savedBytesPerToken } from "./working-set.ts";

const GiB = 2 ** 30;
const H100 = 78 * GiB;
const H200 = 139 * GiB;

function plan(seqLen: number, cp: number, kind: UniformKind, extra: Partial<MemoryPlan> = {}): MemoryPlan {
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
    // attention backward under full: dh 8192 + attention inputs 32,772 + o, lse 8320 + dq, dk, dv 24,576 beside
    // RoPE's backward's dqkv 24,576 (more than dO 8192 beside dq, dk, dv at the attention call)
    expect(gib(e, "working set (attention backward)")).toBeCloseTo(((8192 + 32_772 + 8320 + 2 * 24_576) * 32768) / GiB, 9);
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
    // at 64K on 2 ranks remat-aware and full peak in the attention backward (its DistAttn buffers and
    // RoPE's backward: full's 96.1 + 112 KiB per token against its MLP's 193.1); on one rank full peaks in the MLP's
    expect(estimateMemory(plan(65536, 2, "remat-aware")).peakPhase).toBe("attention backward");
    expect(estimateMemory(plan(65536, 2, "full")).peakPhase).toBe("attention backward");
    expect(estimateMemory(plan(65536, 1, "full")).peakPhase).toBe("MLP backward");
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

test("DistAttn on one rank (the trainer's): its f32 accumulators and one block's temporaries join the attention backward", () => {
  // Llama-2-7B at 256K, zigzag over one rank: two chunks of 128K rows. At cuDNN's call for a block: dq,
  // dk, dv f32 [T] 3 x 16,384 + the block's bf16 gradients 3 x 8192 / 2 + its dQ accumulator 16,384 / 2
  // and Delta 128 / 2 + dO 8192, against the layer's dq, dk, dv beside dqkv 2 x 24,576: 28,736 B per token
  const T = 262144;
  const one = {
    model: LLAMA2_7B,
    mesh: { cp: 1, dp: 1 },
    policy: { kind: "remat-aware" },
    offload: "none",
    optimizer: "device",
    deviceBytes: H200,
    mlpChunkTokens: 8192,
  } as const;
  const d = distAttnOneRank(LLAMA2_7B, T);
  expect(d.backward).toBe((3 * 16_384 + (3 * 8192) / 2 + (16_384 + 128) / 2 + 8192 - 2 * 24_576) * T);
  expect(d.backward / T).toBe(28_736);
  expect(d.backward / GiB).toBeCloseTo(7.02, 2);
  // forward (a skip layer's re-run): o, lse f32 of both chunks 16,512 + a block's f32 o, lse 16,512 / 2 and
  // bf16 o 8192 / 2, against the final o, lse the stage counts 8320: 20,544 B per token
  expect(d.forward / T).toBe(20_544);
  const e = estimateMemory({ ...one, seqLen: T, attention: "distattn" });
  expect(e.gpu.find((t) => t.name === "DistAttn buffers (one rank)")?.bytes).toBe(d.backward);
  expect(e.gpu.find((t) => t.name === "DistAttn buffers (one rank)")?.phase).toBe("attention backward");
  // the default on one rank is one backend call (localModel): no DistAttn term
  const local = estimateMemory({ ...one, seqLen: T });
  expect(local.gpu.some((t) => t.name.startsWith("DistAttn"))).toBe(false);
  expect(e.gpuBytes - local.gpuBytes).toBe(d.backward); // the attention backward is the peak of both
  const skip = estimateMemory({ ...one, policy: parsePolicy("(full, skip) x16"), seqLen: T, attention: "distattn" });
  expect(skip.gpu.find((t) => t.name === "DistAttn buffers (one rank, re-forward)")?.bytes).toBe(d.forward);
  expect(() => estimateMemory({ ...one, seqLen: T, mesh: { cp: 2, dp: 1 }, attention: "local" })).toThrow(
    'attention "local" covers one rank\'s rows only; cp = 2 runs DistAttn',
  );
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
    // 64K: none does not fit, remat-aware does with room to spare: the last 17 layers skip recompute
    const b = autoPolicy({ ...base, seqLen: 65536 });
    expect([formatPolicy(b.policy), b.offload]).toEqual(["remat-aware x15 + none x17", "none"]);
    expect(b.estimate.fits).toBe(true);
    const oneMore = estimateMemory({ ...base, seqLen: 65536, policy: mixedPolicy(32, "none", 18, "remat-aware"), offload: "none" });
    expect(oneMore.fits).toBe(false);
    expect(b.reason).toMatch(
      /^remat-aware x15 \+ none x17: .* GiB of 139\.0 GiB on the GPU; faster ones do not fit: none needs GPU: needs .* of 139\.0 GiB; remat-aware x14 \+ none x18 needs GPU: needs .* of 139\.0 GiB$/,
    );
    const c = autoPolicy({ ...base, seqLen: 262144 });
    expect([c.policy.kind, c.offload]).toEqual(["remat-aware", "spill"]);
    expect(c.reason).toMatch(/remat-aware x31 \+ none x1 needs GPU: .*; remat-aware needs GPU/);
    // without a host budget, no offload is considered: full recompute on the first layers only (7: the
    // attention backward counts dq, dk, dv beside dqkv, 2 GiB more at 128K local tokens than dO beside them)
    const { hostBytes: _, ...noHost } = base;
    const d = autoPolicy({ ...noHost, seqLen: 262144 });
    expect([formatPolicy(d.policy), d.offload]).toEqual(["full x7 + remat-aware x25", "none"]);
    expect(d.reason).toMatch(/; remat-aware needs GPU: .*; full x6 \+ remat-aware x26 needs GPU: needs .*$/);
    expect(formatEstimate(d.estimate)).toContain("memory per rank (full x7 + remat-aware x25, offload none");
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
      /^no checkpoint policy fits 131072 tokens on cp=1 x dp=1 ranks: the smallest, \(full, skip\) x16, overflows GPU: needs .* of 78\.0 GiB \(model states 100\.4 GiB, /,
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

describe("mixed policies", () => {
  // A small shape whose per-token bytes are easy by hand: x, xn, h, hn 16 B; rstd1, rstd2 4; q, o 16;
  // k, v 8; lse 8; gu 48; a 24. none keeps 200 B per token, remat-aware 40 (x, o, lse), full 16 (x);
  // a tiled MLP drops gu and a from none: 128.
  const SMALL: ModelShape = { dim: 8, layers: 6, heads: 2, kvHeads: 1, headDim: 4, ffn: 12, vocab: 16, tiedEmbeddings: false };
  const T = 100;
  const small = (policy: string, extra: Partial<MemoryPlan> = {}): MemoryPlan => ({
    model: SMALL,
    seqLen: T,
    mesh: { cp: 1, dp: 1 },
    policy: parsePolicy(policy, SMALL.layers),
    offload: "none",
    optimizer: "device",
    deviceBytes: GiB,
    runtimeBytes: 0,
    ...extra,
  });
  const bytes = (e: ReturnType<typeof estimateMemory>, name: string) => gib(e, name) * GiB;

  test("the checkpoint term is the sum of each layer's kept bytes", () => {
    const e = estimateMemory(small("full*2,remat-aware*2,none*2"));
    expect(bytes(e, "checkpoints")).toBe((2 * 16 + 2 * 40 + 2 * 200) * T);
    expect(keptLayerBytes(SMALL, parsePolicy("full*2,remat-aware*2,none*2"), T)).toEqual([1600, 1600, 4000, 4000, 20000, 20000]);
    expect(e.gpu.find((t) => t.name === "checkpoints")?.detail).toMatch(
      /^full x2 \+ remat-aware x2 \+ none x2: full 0\.0 KiB per token \(x\), remat-aware 0\.0 KiB per token \(x, o, lse\), none 0\.2 KiB per token \(x, rstd1, .*, a\) per layer x 100 tokens$/,
    );
    // tiled MLP: none layers no longer keep gu and a
    const t = estimateMemory(small("full*2,remat-aware*2,none*2", { mlpChunkTokens: 10 }));
    expect(bytes(t, "checkpoints")).toBe((2 * 16 + 2 * 40 + 2 * 128) * T);
    expect(estimateMemory(small("none")).deviceLayers).toBe(6);
  });

  test("each working-set phase is the largest over the kinds present", () => {
    const phase = (policy: string, name: string) => bytes(estimateMemory(small(policy)), name);
    for (const name of ["working set (MLP backward)", "working set (attention backward)"]) {
      const [none, remat, full] = ["none", "remat-aware", "full"].map((k) => phase(k, name)) as [number, number, number];
      expect(none).toBeLessThan(remat);
      expect({ name, mix: phase("full*2,remat-aware*2,none*2", name) }).toEqual({ name, mix: Math.max(none, remat, full) });
      expect({ name, mix: phase("remat-aware*3,none*3", name) }).toEqual({ name, mix: remat });
    }
  });

  test("spill keeps the last layers on the GPU by their own sizes, at least two", () => {
    const mix = "full*2,remat-aware*2,none*2";
    const reversed = "none*2,remat-aware*2,full*2";
    // the GPU besides the checkpoints: the same for every policy with the same worst phase
    const others = (policy: string) => {
      const e = estimateMemory(small(policy, { deviceBytes: 100 * GiB }));
      return e.gpuBytes - bytes(e, "checkpoints");
    };
    const spill = (policy: string, free: number) =>
      estimateMemory(small(policy, { offload: "spill", hostBytes: GiB, deviceBytes: others(policy) + free }));
    // from the last layer: 20000, 40000, 44000, 48000 | 49600 > 48000
    const a = spill(mix, 48000);
    expect([a.deviceLayers, bytes(a, "checkpoints"), bytes(a, "offloaded checkpoints")]).toEqual([4, 48000, 3200]);
    expect(a.fits).toBe(true);
    // the cheap kind first instead: 1600, 3200, 7200, 11200 | 31200 > 11300
    const b = spill(reversed, 11300);
    expect([b.deviceLayers, bytes(b, "checkpoints"), bytes(b, "offloaded checkpoints")]).toEqual([4, 11200, 40000]);
    // no layer fits: still the last two on the GPU (the estimate then does not fit)
    const c = spill(mix, 11300);
    expect([c.deviceLayers, bytes(c, "checkpoints"), c.fits]).toEqual([2, 40000, false]);
    expect(layersThatFit([5, 1, 2, 3], 5)).toBe(2);
    expect(layersThatFit([5, 1, 2, 3], 2)).toBe(0);
    expect(layersThatFit([5, 1, 2, 3], 11)).toBe(4);
  });

  test("host offload: the largest two adjacent layers in flight on the GPU, every layer on the host", () => {
    const e = estimateMemory(small("full*2,remat-aware*2,none*2", { offload: "host", hostBytes: GiB }));
    expect([bytes(e, "checkpoints"), bytes(e, "offloaded checkpoints"), e.deviceLayers]).toEqual([40000, 51200, 0]);
  });

  test("skip layers keep nothing; their backward adds their re-run input x and a re-forward phase (by hand)", () => {
    const e = estimateMemory(small("(full, skip) x3"));
    expect(keptLayerBytes(SMALL, parsePolicy("(full, skip) x3"), T)).toEqual([1600, 0, 1600, 0, 1600, 0]);
    expect(bytes(e, "checkpoints")).toBe(3 * 16 * T);
    // full's MLP backward: dy 16 + attention inputs 52 + o, lse 24 + h, rstd2, hn 36 = 128 narrow, gu, a 72 +
    // dgu 48 + max(da 24, dhn 16) = 144 wide; attention backward: dh 16 + 52 + 24 + dq 16, dk, dv 16 beside
    // dqkv 32 = 156; a skip layer's x (16) is alive in both
    expect(bytes(estimateMemory(small("full")), "working set (MLP backward)")).toBe(272 * T);
    expect(bytes(e, "working set (MLP backward)")).toBe(288 * T);
    expect(bytes(e, "working set (attention backward)")).toBe(172 * T);
    // the re-forward: dy 16 + its largest stage, MLP out: h, rstd2, hn 36 + gu, a 72 + down 16 + y 16 = 140
    expect(bytes(e, "working set (skip re-forward)")).toBe(156 * T);
    expect(e.gpu.find((t) => t.name === "working set (skip re-forward)")?.detail).toBe(
      "0.2 KiB per token (dy beside the forward of the layer before a skip layer, keeping nothing)",
    );
    expect(e.peakPhase).toBe("MLP backward");
    // a run of two skips re-runs a layer from its own (re-run) input: MLP in is then the largest,
    // input 16 + o, lse 24 + 36 + gu, a 72 = 148
    expect(bytes(estimateMemory(small("full*1,skip*2,full*3")), "working set (skip re-forward)")).toBe((16 + 148) * T);
    // tiled (10-token tiles): QKV is the largest, xn 16 + rstd1 4 + qkv and q, k, v 2 x 32 = 84
    expect(bytes(estimateMemory(small("(full, skip) x3", { mlpChunkTokens: 10 })), "working set (skip re-forward)")).toBe((16 + 84) * T);
    // no skip layer, no such phase; on cp > 1 the re-forward's DistAttn buffers join it
    expect(estimateMemory(small("full")).gpu.some((t) => t.phase === "skip re-forward")).toBe(false);
    const cp = estimateMemory(small("(full, skip) x3", { seqLen: 2 * T, mesh: { cp: 2, dp: 1 } }));
    expect(cp.gpu.filter((t) => t.phase === "skip re-forward").map((t) => t.name)).toEqual([
      "working set (skip re-forward)",
      "DistAttn buffers (re-forward)",
    ]);
  });

  test("a mixed policy of another length than the model is refused, naming both", () => {
    expect(() => estimateMemory({ ...small("none"), policy: parsePolicy("none*3,full*2") })).toThrow(
      "checkpoint policy none x3 + full x2 names 5 layers, the model has 6",
    );
  });
});
