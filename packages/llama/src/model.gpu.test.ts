// The tiny model in bf16 on the GPU (auto-selected attention backend: cuDNN when present) against the
// f32 CPU model with the same weights, and the seeded init giving the same bits on both devices.
// Skipped visibly without a GPU; `bun run test:gpu` makes a missing GPU an error.
//
// Tolerance. The GPU model rounds every activation to bf16 (unit roundoff 2^-9 ~ 2e-3) after each of
// ~12 ops per layer, and attention rounds P and dS to bf16; over 2 layers the hidden states carry
// ~1e-2 relative error. The loss is a mean of log-softmaxes of such logits, whose errors mostly average
// out (a CPU model in bf16 measured 7e-5 relative): 2e-3. Weight
// gradients are sums over 200 tokens of products of two such tensors (f32 accumulation): each
// tensor's relative (Frobenius) error within 5e-2. A wrong op (a missing term, a wrong position,
// a transposed weight) gives O(1). (The CPU model in bf16 measured at most 1.5e-2 on this case.)

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { referenceBackend, selectAttentionBackend } from "@lightseq/attention";
import { skipWithoutGpu } from "@lightseq/cuda";
import { cast, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { makeLlamaConfig } from "./config.ts";
import { namedTensors, seqTokens } from "./fixtures/tiny.ts";
import { LocalGradientSink } from "./interfaces.ts";
import { localModel, sequenceBatch } from "./model.ts";
import { initParams, ModelParams, zeroParams } from "./weights.ts";

const noGpu = skipWithoutGpu();
setDefaultTimeout(300_000);

// Head dim 64 (the GPU attention kernels take 64 or 128), GQA, untied head; 200 tokens (not a
// multiple of any tile size).
const cfg = makeLlamaConfig({
  dim: 256,
  layers: 2,
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
const T = 200;
const STD = 0.05;

function widen(p: ModelParams): ModelParams {
  const f = (t: Tensor) => cast(t, "f32");
  return new ModelParams(p.config, p.layers.map(f), f(p.embed), f(p.finalNorm), p.head ? f(p.head) : null);
}

describe.skipIf(noGpu)("tiny model: bf16 on the GPU against f32 on the CPU", () => {
  test("the seeded init gives the same bits on the GPU and the CPU", () => {
    using gpu = initParams(cfg, { seed: 5, dtype: "bf16", device: "cuda:0", std: STD });
    using cpu = initParams(cfg, { seed: 5, dtype: "bf16", std: STD });
    gpu.all().forEach((t, j) => {
      expect(Array.from(toFloat32Array(t))).toEqual(Array.from(toFloat32Array(cpu.all()[j] as Tensor)));
    });
  });

  test("loss and every gradient", async () => {
    const attn = selectAttentionBackend("auto", "cuda:0");
    console.log(attn.reason);
    using gpuParams = initParams(cfg, { seed: 5, dtype: "bf16", device: "cuda:0", std: STD });
    using cpuBf16 = initParams(cfg, { seed: 5, dtype: "bf16", std: STD });
    using cpuParams = widen(cpuBf16); // the very same (bf16-representable) weights in f32
    const batch = sequenceBatch(seqTokens(T, cfg.vocab, 6));
    const gradScale = 1 / (T - 1);

    using gpuGrads = zeroParams(cfg, { device: "cuda:0" });
    const gpuLoss = await localModel(gpuParams, { policy: { kind: "remat-aware" }, backend: attn.backend }).forwardBackward(
      batch,
      new LocalGradientSink(gpuGrads),
      { gradScale },
    );
    using cpuGrads = zeroParams(cfg);
    const cpuLoss = await localModel(cpuParams, { policy: { kind: "none" }, backend: referenceBackend }).forwardBackward(
      batch,
      new LocalGradientSink(cpuGrads),
      { gradScale },
    );
    expect(gpuLoss.count).toBe(cpuLoss.count);
    const rel = Math.abs(gpuLoss.lossSum - cpuLoss.lossSum) / cpuLoss.lossSum;
    console.log(`loss: gpu ${gpuLoss.lossSum / gpuLoss.count}, cpu ${cpuLoss.lossSum / cpuLoss.count}, rel ${rel.toExponential(2)}`);
    expect(rel).toBeLessThan(2e-3);
    const cpuByName = new Map(namedTensors(cpuGrads));
    const worst: [string, number][] = [];
    for (const [name, g] of namedTensors(gpuGrads)) {
      const r = cpuByName.get(name) as Tensor;
      const rep = compareClose(toFloat32Array(g), r, { atol: 0, rtol: 0, label: name });
      worst.push([name, rep.relativeError]);
      g.dispose();
      r.dispose();
    }
    worst.sort((a, b) => b[1] - a[1]);
    console.log(
      `gradient relative errors, worst first: ${worst
        .slice(0, 5)
        .map(([n, e]) => `${n} ${e.toExponential(2)}`)
        .join(", ")}`,
    );
    expect(worst.filter(([, e]) => !(e <= 5e-2))).toEqual([]);
  });
});
