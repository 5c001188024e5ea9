import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Event, skipWithoutGpu } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import { arraySource, concatShards, finalizeSnapshot, latestComplete, readRankShards, writeRankShards } from "../snapshot.ts";
import type { AdamWHyper } from "./adamw.ts";
import { ownedRange } from "./shard.ts";
import { type BufferSpec, LAYER_PARAMS, ShardedAdamW } from "./sharded.ts";
import { ShardedAdamWCuda } from "./sharded-cuda.ts";
import { StreamedAdamW } from "./streamed.ts";

const H: AdamWHyper = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const dims = { attnNorm: 16, wq: 256, wk: 64, wv: 64, wo: 256, mlpNorm: 16, wGate: 384, wUp: 384, wDown: 384 };
const specs: BufferSpec[] = [
  { name: "embed", params: [{ name: "embed", numel: 500 }] },
  { name: "layer0", params: LAYER_PARAMS.map((p) => ({ name: p, numel: dims[p] })) },
  { name: "layer1", params: LAYER_PARAMS.map((p) => ({ name: p, numel: dims[p] })) },
  {
    name: "final",
    params: [
      { name: "finalNorm", numel: 16 },
      { name: "head", numel: 500 },
    ],
  },
];
const numel = (s: BufferSpec) => s.params.reduce((a, p) => a + p.numel, 0);
const init = specs.map((s, i) => T.randn([numel(s)], { seed: 7 + i, std: 0.5 }).data() as Float32Array);
const gradFull = (step: number, b: number) => T.randn([numel(specs[b]!)], { seed: 1000 * step + b, std: 0.1 }).data() as Float32Array;

/** Rank r's gradient shard of buffer b (what a reduce-scatter delivers: padding zero). */
function gradShard(opt: ShardedAdamW, step: number, b: number): Float32Array {
  const l = opt.layoutOf(specs[b]!.name);
  const { start, len } = ownedRange(l, opt.rank);
  const g = new Float32Array(l.shardLen);
  g.set(gradFull(step, b).subarray(start, start + len));
  return g;
}

function makeRanks(ranks: number): ShardedAdamW[] {
  return Array.from({ length: ranks }, (_, r) => {
    const o = new ShardedAdamW(specs, r, ranks, H);
    specs.forEach((s, b) => {
      o.initFromFull(s.name, init[b]!);
    });
    return o;
  });
}

function runSteps(opts: ShardedAdamW[], from: number, to: number) {
  for (let t = from; t <= to; t++)
    for (const o of opts)
      specs.forEach((s, b) => {
        o.step(s.name, gradShard(o, t, b), t, H.lr * (1 - t / 20), 0.8);
      });
}

/** The whole buffer b gathered from every rank's master shard. */
function gathered(opts: ShardedAdamW[], b: number): Float32Array {
  const parts = opts.map((o) => o.master(specs[b]!.name));
  const all = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  return all.subarray(0, numel(specs[b]!));
}

test("3 ranks of shards give exactly the weights of 1 rank holding everything", () => {
  const one = makeRanks(1);
  const three = makeRanks(3);
  runSteps(one, 1, 5);
  runSteps(three, 1, 5);
  specs.forEach((_, b) => {
    expect(gathered(three, b)).toEqual(gathered(one, b));
  });
});

test("norms and embeddings skip weight decay, matrices do not", () => {
  const [o] = makeRanks(1);
  const zero = (b: number) => new Float32Array(o!.layoutOf(specs[b]!.name).shardLen);
  specs.forEach((s, b) => {
    o!.step(s.name, zero(b), 1, H.lr, 1);
  });
  expect(o!.master("embed").subarray(0, 500)).toEqual(init[0]!);
  const layer = o!.master("layer0");
  expect(layer.subarray(0, 16)).toEqual(init[1]!.subarray(0, 16)); // attnNorm
  expect(layer[16]).toBe(Math.fround(init[1]![16]! * Math.fround(1 - H.lr * H.weightDecay))); // wq
  const fin = o!.master("final");
  expect(fin.subarray(0, 16)).toEqual(init[3]!.subarray(0, 16)); // finalNorm
  expect(fin[16]).not.toBe(init[3]![16]); // head decays
});

test("snapshot at step 3 on 2 ranks, resume on 3 ranks: steps 4-6 equal the uninterrupted run", () => {
  const ref = makeRanks(1);
  runSteps(ref, 1, 6);
  const two = makeRanks(2);
  runSteps(two, 1, 3);
  const root = mkdtempSync(join(tmpdir(), "trainer-zero-"));
  const layout = two[0]!.snapshotLayout();
  for (const o of two) writeRankShards(root, 3, o.rank, 2, layout, o.snapshotArrays());
  finalizeSnapshot(root, 3, { mesh: { cp: 2, dp: 1 }, layout, arrays: ["master", "m", "v"], state: { step: 3 }, keep: 1 });
  const { found } = latestComplete(root);
  const three = makeRanks(3);
  for (const o of three) o.restore(readRankShards(found!, o.rank, 3, o.snapshotLayout()));
  runSteps(three, 4, 6);
  specs.forEach((_, b) => {
    expect(gathered(three, b)).toEqual(gathered(ref, b));
  });
});

test("the bf16 shard is the rounded master; wrong shapes are refused by name", () => {
  const [o] = makeRanks(1);
  const g = gradShard(o!, 1, 1);
  const w = new Uint16Array(g.length);
  o!.step("layer0", g, 1, H.lr, 1, w);
  expect([...w]).toEqual([...T.encodeBf16(o!.master("layer0"))]);
  expect(() => o!.step("layer0", new Float32Array(3), 1, H.lr, 1)).toThrow(/buffer "layer0": gradient shard of 3 elements, expected \d+/);
  expect(() => o!.master("layer9")).toThrow(/no buffer "layer9" \(buffers: embed, layer0, layer1, final\)/);
  expect(() => o!.initFromFull("embed", new Float32Array(3))).toThrow(/3 values for 500 parameters/);
});

describe.skipIf(skipWithoutGpu())("ShardedAdamWCuda", () => {
  test("equals the CPU state bit for bit over steps, on every rank of 3; snapshot arrays and restore round-trip", () => {
    for (let r = 0; r < 3; r++) {
      const cpu = makeRanks(3)[r]!;
      using gpu = new ShardedAdamWCuda(specs, r, 3, H);
      specs.forEach((s, b) => {
        gpu.initFromFull(s.name, init[b]!);
      });
      for (let t = 1; t <= 4; t++) {
        specs.forEach((s, b) => {
          const g = gradShard(cpu, t, b);
          cpu.step(s.name, g, t, H.lr, 0.8);
          const dg = T.to(T.fromArray(g, [g.length]), "cuda:0");
          gpu.step(s.name, dg, t, H.lr, 0.8);
          dg.dispose();
        });
      }
      for (const s of specs) {
        expect(T.toFloat32Array(gpu.master(s.name))).toEqual(cpu.master(s.name));
        expect([...(T.to(gpu.bf16(s.name), "cpu").data() as Uint16Array)]).toEqual([...T.encodeBf16(cpu.master(s.name))]);
      }
      const L = cpu.snapshotLayout();
      const a = concatShards(L, 3, gpu.snapshotArrays());
      expect(a).toEqual(concatShards(L, 3, cpu.snapshotArrays()));
      using again = new ShardedAdamWCuda(specs, r, 3, H);
      again.restore(arraySource(L, 3, a));
      expect(concatShards(L, 3, again.snapshotArrays())).toEqual(a);
      // The bf16 shard a restore (or an init) uploads is the master's rounding, as the kernel writes it.
      for (const s of specs)
        expect([...(T.to(again.bf16(s.name), "cpu").data() as Uint16Array)]).toEqual([...T.encodeBf16(cpu.master(s.name))]);
    }
  }, 60_000);
});

describe.skipIf(skipWithoutGpu())("StreamedAdamW (state in pinned host memory)", () => {
  test("equals the CPU state bit for bit with many small chunks, 2 and 3 slots; snapshot and restore round-trip", () => {
    for (const slots of [2, 3]) {
      const cpu = makeRanks(2)[1]!;
      using gpu = new StreamedAdamW(specs, 1, 2, H, { chunk: 64, slots });
      specs.forEach((s, b) => {
        gpu.initFromFull(s.name, init[b]!);
      });
      const compute = T.currentStream(0);
      const ready = Event.create(0);
      const consumed = Event.create(0);
      for (let t = 1; t <= 3; t++) {
        const keep: T.Tensor[] = [];
        specs.forEach((s, b) => {
          const g = gradShard(cpu, t, b);
          cpu.step(s.name, g, t, H.lr, 0.8);
          const dg = T.to(T.fromArray(g, [g.length]), "cuda:0");
          ready.record(compute);
          compute.wait(gpu.step(s.name, dg, t, H.lr, 0.8, ready, consumed));
          keep.push(dg);
        });
        compute.synchronize();
        for (const k of keep) k.dispose();
      }
      for (const s of specs)
        expect([...(T.to(gpu.bf16(s.name), "cpu").data() as Uint16Array)]).toEqual([...T.encodeBf16(cpu.master(s.name))]);
      const L = cpu.snapshotLayout();
      const a = concatShards(L, 2, gpu.snapshotArrays());
      expect(a).toEqual(concatShards(L, 2, cpu.snapshotArrays()));
      using again = new StreamedAdamW(specs, 1, 2, H, { chunk: 1 << 20 });
      again.restore(arraySource(L, 2, a));
      expect(concatShards(L, 2, again.snapshotArrays())).toEqual(a);
      again.opt.synchronize();
      for (const s of specs)
        expect([...(T.to(again.bf16(s.name), "cpu").data() as Uint16Array)]).toEqual([...T.encodeBf16(cpu.master(s.name))]);
      ready.dispose();
      consumed.dispose();
    }
  }, 60_000);
});

describe.skipIf(skipWithoutGpu())("StreamedAdamW.initFromDevice", () => {
  test("equals initFromFull: the same master shard, zero moments, the same bf16 shard", () => {
    using a = new StreamedAdamW(specs, 1, 2, H, { chunk: 64 });
    using b = new StreamedAdamW(specs, 1, 2, H, { chunk: 64 });
    specs.forEach((s, i) => {
      a.initFromFull(s.name, init[i]!);
      using full = T.to(T.fromArray(init[i]!, [init[i]!.length]), "cuda:0");
      b.initFromDevice(s.name, full);
    });
    a.opt.synchronize();
    const L = a.snapshotLayout();
    expect(concatShards(L, 2, b.snapshotArrays())).toEqual(concatShards(L, 2, a.snapshotArrays()));
    for (const s of specs)
      expect([...(T.to(b.bf16(s.name), "cpu").data() as Uint16Array)]).toEqual([...(T.to(a.bf16(s.name), "cpu").data() as Uint16Array)]);
  });
});
