// The tiny model in bf16 on the GPU with its kept tensors offloaded to pinned host memory (and spilled:
// the last layer on the GPU) against the same model with them kept in place: the store only moves bytes, so the
// forward is the same computation on the same bits, and the loss and the gradients must be as close as
// two runs of the in-place model are to each other: equal where the kernels are deterministic, within
// their own run-to-run noise where one accumulates with atomics (an attention backward may).
// Per-layer mixes (kept in place and spilled) against `none` kept in place: what a layer recomputes is
// the same computation on the same bits, so the same tolerance holds.
// Skipped visibly without a GPU.

import { describe, expect, test } from "bun:test";
import { selectAttentionBackend } from "@lightseq/attention";
import {
  type ActivationStore,
  type CheckpointPolicy,
  OffloadActivationStore,
  POLICY_KINDS,
  type PolicyKind,
  parsePolicy,
} from "@lightseq/checkpointing";
import { skipWithoutGpu } from "@lightseq/cuda";
import { toFloat32Array } from "@lightseq/tensor";
import { makeLlamaConfig } from "./config.ts";
import { namedTensors, seqTokens } from "./fixtures/tiny.ts";
import { LocalActivationStore, LocalGradientSink, LocalWeightSource, localAttention } from "./interfaces.ts";
import { LlamaModel, sequenceBatch } from "./model.ts";
import { initParams, type ModelParams, zeroParams } from "./weights.ts";

const noGpu = skipWithoutGpu();
const dev = "cuda:0";

// Head dim 64 (the GPU attention kernels take 64 or 128), GQA, 3 layers, 300 tokens.
const cfg = makeLlamaConfig({
  dim: 256,
  layers: 3,
  heads: 4,
  kvHeads: 2,
  ffn: 384,
  vocab: 500,
  normEps: 1e-5,
  ropeTheta: 500000,
  ropeScaling: null,
  tiedEmbeddings: false,
  maxPositions: 4096,
  bosId: null,
  eosIds: [],
});
const T = 300;

async function step(params: ModelParams, policy: PolicyKind | CheckpointPolicy, store: ActivationStore) {
  const attn = selectAttentionBackend("auto", dev);
  const model = new LlamaModel({
    config: cfg,
    weights: new LocalWeightSource(params),
    attention: localAttention(attn.backend),
    store,
    policy: typeof policy === "string" ? { kind: policy } : policy,
  });
  using grads = zeroParams(cfg, { device: dev });
  const loss = await model.forwardBackward(sequenceBatch(seqTokens(T, cfg.vocab, 3)), new LocalGradientSink(grads), {
    gradScale: 1 / (T - 1),
  });
  expect(store.bytes()).toBe(0);
  return { loss, grads: namedTensors(grads).map(([n, t]) => [n, toFloat32Array(t)] as const) };
}

/** Largest relative (Frobenius) difference over the gradient tensors. */
function worst(a: Awaited<ReturnType<typeof step>>, b: Awaited<ReturnType<typeof step>>): number {
  let w = 0;
  a.grads.forEach(([, x], j) => {
    const y = (b.grads[j] as readonly [string, Float32Array])[1];
    let d = 0;
    let n = 0;
    for (let i = 0; i < x.length; i++) {
      d += ((x[i] as number) - (y[i] as number)) ** 2;
      n += (y[i] as number) ** 2;
    }
    w = Math.max(w, Math.sqrt(d / Math.max(n, 1e-30)));
  });
  return w;
}

describe.skipIf(noGpu)("tiny bf16 model on the GPU: offloaded = kept in place", () => {
  for (const policy of POLICY_KINDS) {
    test(`${policy}: host offload and spill (the last layer on the GPU)`, async () => {
      using params = initParams(cfg, { seed: 5, dtype: "bf16", device: dev, std: 0.05 });
      const ref = await step(params, policy, new LocalActivationStore());
      const again = await step(params, policy, new LocalActivationStore());
      const noise = worst(again, ref);
      for (const deviceLayers of [0, 1]) {
        using store = new OffloadActivationStore({ layers: cfg.layers, deviceLayers });
        const got = await step(params, policy, store);
        // The same bits in, the same kernels: equal unless the in-place runs differ among themselves.
        const lossNoise = Math.abs(again.loss.lossSum - ref.loss.lossSum);
        expect({ deviceLayers, lossDiff: Math.abs(got.loss.lossSum - ref.loss.lossSum) <= 4 * lossNoise }).toEqual({
          deviceLayers,
          lossDiff: true,
        });
        // 4x the measured run-to-run noise (0 when deterministic) + 1e-6 for an unlucky draw of atomics.
        expect({ deviceLayers, worst: worst(got, ref) <= 4 * noise + 1e-6 }).toEqual({ deviceLayers, worst: true });
        expect(store.report().copiesOut).toBeGreaterThan(0);
      }
    }, 120_000);
  }
});

describe.skipIf(noGpu)("tiny bf16 model on the GPU: per-layer mixes = none kept in place", () => {
  for (const spec of [
    "full*1,remat-aware*1,none*1",
    "remat-aware*2,none*1",
    "full*2,remat-aware*1",
    "full*1,skip*1,none*1",
    "remat-aware*1,skip*2",
  ]) {
    test(`${spec}: in place and spilled (the last layer on the GPU)`, async () => {
      using params = initParams(cfg, { seed: 7, dtype: "bf16", device: dev, std: 0.05 });
      const ref = await step(params, "none", new LocalActivationStore());
      const again = await step(params, "none", new LocalActivationStore());
      const noise = worst(again, ref);
      const lossNoise = Math.abs(again.loss.lossSum - ref.loss.lossSum);
      const policy = parsePolicy(spec, cfg.layers);
      for (const store of [new LocalActivationStore(), new OffloadActivationStore({ layers: cfg.layers, deviceLayers: 1 })]) {
        const got = await step(params, policy, store);
        const where = store instanceof OffloadActivationStore ? "spilled" : "in place";
        expect({ where, lossDiff: Math.abs(got.loss.lossSum - ref.loss.lossSum) <= 4 * lossNoise + 1e-4 }).toEqual({
          where,
          lossDiff: true,
        });
        expect({ where, worst: worst(got, ref) <= 4 * noise + 1e-6 }).toEqual({ where, worst: true });
        if (store instanceof OffloadActivationStore) store[Symbol.dispose]();
      }
    }, 120_000);
  }
});
