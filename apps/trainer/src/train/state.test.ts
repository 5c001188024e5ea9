// The host state's split (state.ts): which buffers stay on the GPU, and how a snapshot's buffer
// indices map onto the two parts (CPU); on a GPU, the host state with layer 0's and the embedding's
// state resident equals the CPU reference bit for bit, and its snapshots restore into the all-streamed
// host state and the device state alike (the same layout in spec order).

import { describe, expect, test } from "bun:test";
import { Event, skipWithoutGpu } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import type { AdamWHyper } from "../optim/adamw.ts";
import { ownedRange } from "../optim/shard.ts";
import { type BufferSpec, LAYER_PARAMS, ShardedAdamW } from "../optim/sharded.ts";
import { arraySource, concatShards } from "../snapshot.ts";
import { makeState, residentBuffers, splitSpecs } from "./state.ts";

const H: AdamWHyper = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const dims = { attnNorm: 16, wq: 256, wk: 64, wv: 64, wo: 256, mlpNorm: 16, wGate: 384, wUp: 384, wDown: 384 };
const layer = LAYER_PARAMS.map((p) => ({ name: p, numel: dims[p] }));
const specs: BufferSpec[] = [
  { name: "layer0", params: layer },
  { name: "layer1", params: layer },
  { name: "embed", params: [{ name: "embed", numel: 500 }] },
  { name: "finalNorm", params: [{ name: "finalNorm", numel: 16 }] },
  { name: "head", params: [{ name: "head", numel: 500 }] },
];
const numel = (s: BufferSpec) => s.params.reduce((a, p) => a + p.numel, 0);

test("residentBuffers: layer 0 and the embedding, the buffers whose gradients are final last", () => {
  expect(residentBuffers(specs)).toEqual(["layer0", "embed"]);
  expect(residentBuffers(specs.filter((s) => s.name !== "embed"))).toEqual(["layer0"]);
});

test("splitSpecs keeps spec order in each part and maps every spec index to its part's index", () => {
  const s = splitSpecs(specs, ["embed", "layer0"]);
  expect(s.device.map((b) => b.name)).toEqual(["layer0", "embed"]);
  expect(s.host.map((b) => b.name)).toEqual(["layer1", "finalNorm", "head"]);
  expect(s.at).toEqual([
    { device: true, index: 0 },
    { device: false, index: 0 },
    { device: true, index: 1 },
    { device: false, index: 1 },
    { device: false, index: 2 },
  ]);
  expect(splitSpecs(specs, []).host).toHaveLength(5);
  expect(() => splitSpecs(specs, ["layer7"])).toThrow(/resident buffer "layer7" is not a buffer/);
});

describe.skipIf(skipWithoutGpu())("host state with resident buffers (GPU)", () => {
  test("equals the CPU reference bit for bit on rank 1 of 2; its snapshot restores into the streamed and the device state", () => {
    const R = 2;
    const rank = 1;
    const init = specs.map((s, i) => T.randn([numel(s)], { seed: 11 + i, std: 0.5 }).data() as Float32Array);
    const cpu = new ShardedAdamW(specs, rank, R, H);
    const compute = T.currentStream(0);
    using host = makeState("host", specs, rank, R, H, compute, residentBuffers(specs));
    specs.forEach((s, i) => {
      cpu.initFromFull(s.name, init[i] as Float32Array);
      host.initFromFull(s.name, init[i] as Float32Array);
    });
    const consumed = specs.map(() => Event.create(0));
    for (let t = 1; t <= 3; t++) {
      const keep: T.Tensor[] = [];
      specs.forEach((s, b) => {
        const l = cpu.layoutOf(s.name);
        const { start, len } = ownedRange(l, rank);
        const full = T.randn([numel(s)], { seed: 1000 * t + b, std: 0.1 }).data() as Float32Array;
        const g = new Float32Array(l.shardLen);
        g.set(full.subarray(start, start + len));
        cpu.step(s.name, g, t, H.lr, 0.8);
        const dg = T.to(T.fromArray(g, [g.length]), "cuda:0");
        host.step(s.name, dg, t, H.lr, 0.8, { stream: compute, consumed: consumed[b] as Event });
        keep.push(dg);
      });
      host.stepsDone();
      compute.synchronize();
      for (const k of keep) k.dispose();
    }
    for (const s of specs)
      expect([...(T.to(host.weightShard(s.name), "cpu").data() as Uint16Array)]).toEqual([...T.encodeBf16(cpu.master(s.name))]);
    const L = host.snapshotLayout();
    expect(L).toEqual(cpu.snapshotLayout());
    const a = concatShards(L, R, host.snapshotArrays());
    expect(a).toEqual(concatShards(L, R, cpu.snapshotArrays()));
    for (const [place, resident] of [
      ["host", []],
      ["host", residentBuffers(specs)],
      ["device", []],
    ] as const) {
      using again = makeState(place, specs, rank, R, H, compute, resident);
      again.restore(arraySource(L, R, a));
      compute.synchronize();
      expect(concatShards(L, R, again.snapshotArrays())).toEqual(a);
      for (const s of specs)
        expect([...(T.to(again.weightShard(s.name), "cpu").data() as Uint16Array)]).toEqual([...T.encodeBf16(cpu.master(s.name))]);
    }
    for (const e of consumed) e.dispose();
  }, 60_000);
});
