// ZeroGradientSink on one CPU rank: reducing the final norm's and the head's gradients early
// (headDone, right after the loss's backward, while the layers' backward runs) hands the optimizer
// the same gradient shards, to the bit, as reducing everything at the end; and per layer, the update
// callback sees every buffer once, with the head and final norm before the layers.

import { expect, test } from "bun:test";
import { referenceBackend } from "@lightseq/attention";
import { CpuCommunicator } from "@lightseq/comm";
import { makeLlamaConfig, parallelize } from "@lightseq/llama";
import { type Tensor, toFloat32Array } from "@lightseq/tensor";
import { bufferSpecs, initialTensor } from "./buffers.ts";
import { makeState } from "./state.ts";
import { ZeroGradientSink, ZeroWeightSource } from "./zero.ts";

const cfg = makeLlamaConfig({
  dim: 64,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  ffn: 96,
  vocab: 300,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  tiedEmbeddings: false,
  maxPositions: 1024,
  bosId: null,
  eosIds: [],
});
const T = 48;
const hyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

async function gradients(early: boolean, perLayer: boolean): Promise<{ shards: Map<string, Float32Array>; order: string[] }> {
  const comm = CpuCommunicator.single({ timeoutMs: 10_000 });
  const specs = bufferSpecs(cfg);
  using state = makeState("cpu", specs, 0, 1, hyper, null);
  try {
    for (const s of specs) {
      using t = initialTensor(cfg, s.name, 11);
      state.initFromTensor(s.name, t);
    }
    const weights = new ZeroWeightSource(cfg, comm, state, null);
    const order: string[] = [];
    const seen = new Map<string, Float32Array>();
    const onUpdate = (name: string, shard: Tensor) => {
      order.push(name);
      seen.set(name, toFloat32Array(shard));
    };
    const grads = new ZeroGradientSink(
      cfg,
      comm,
      state,
      specs.map((s) => s.name),
      null,
      perLayer ? onUpdate : null,
    );
    // the sink without headDone: the model then hands every non-layer gradient over at the end
    if (!early) Object.defineProperty(grads, "headDone", { value: undefined });
    const pm = parallelize(
      { config: cfg, source: weights },
      { comm, schedule: "zigzag", N: T, backend: referenceBackend },
      { policy: { kind: "none" } },
    );
    const tokens = Int32Array.from({ length: T }, (_, i) => (i * 37 + 5) % cfg.vocab);
    grads.beginStep();
    await pm.model.forwardBackward(pm.place(tokens), grads, { gradScale: 1 / (T - 1) });
    const shards = perLayer ? seen : new Map([...grads.shards].map(([n, t]) => [n, toFloat32Array(t)] as const));
    return { shards, order };
  } finally {
    await comm.destroy();
  }
}

const sameBits = (a: Float32Array, b: Float32Array | undefined) =>
  b !== undefined &&
  Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

test("headDone: the head and final norm reduced early give the same gradient shards as at the end", async () => {
  const late = await gradients(false, false);
  const early = await gradients(true, false);
  expect([...early.shards.keys()].sort()).toEqual([...late.shards.keys()].sort());
  for (const [name, g] of late.shards) {
    expect({ name, equal: sameBits(g, early.shards.get(name)) }).toEqual({ name, equal: true });
    expect(g.some((x) => x !== 0)).toBe(true);
  }
});

test("per layer: each buffer updated once; the head and final norm first, the embedding last", async () => {
  const { order, shards } = await gradients(true, true);
  expect(order).toEqual(["finalNorm", "head", "layer1", "layer0", "embed"]);
  const late = await gradients(false, false);
  for (const [name, g] of late.shards) expect({ name, equal: sameBits(g, shards.get(name)) }).toEqual({ name, equal: true });
});
