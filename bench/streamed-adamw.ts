// What streaming the optimizer state costs (issue 14): AdamW over L Llama-2-7B layers (202M parameters
// each) with the state on the GPU (ShardedAdamWCuda) and in pinned host memory (StreamedAdamW, chunked
// copies in and out over PCIe on their own streams), one rank. Alone on the GPU, so this is the whole
// cost; in training it overlaps the backward.
//   bun bench/streamed-adamw.ts [out.json] [--layers 4]
// Prints ms per layer and the PCIe traffic rate (12 bytes in and 12 out per parameter).

import { writeFileSync } from "node:fs";
import { Event } from "@lightseq/cuda";
import { median } from "@lightseq/cuda/bench/timing";
import * as T from "@lightseq/tensor";
import type { AdamWHyper } from "../apps/trainer/src/optim/adamw.ts";
import { type BufferSpec, LAYER_PARAMS } from "../apps/trainer/src/optim/sharded.ts";
import { ShardedAdamWCuda } from "../apps/trainer/src/optim/sharded-cuda.ts";
import { StreamedAdamW } from "../apps/trainer/src/optim/streamed.ts";

const args = process.argv.slice(2);
const out = args[0] && !args[0].startsWith("--") ? args[0] : null;
const li = args.indexOf("--layers");
const layers = li >= 0 ? Number(args[li + 1]) : 4;
const h: AdamWHyper = { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
const dim = 4096;
const ffn = 11008;
const numel: Record<(typeof LAYER_PARAMS)[number], number> = {
  attnNorm: dim,
  wq: dim * dim,
  wk: dim * dim,
  wv: dim * dim,
  wo: dim * dim,
  mlpNorm: dim,
  wGate: dim * ffn,
  wUp: dim * ffn,
  wDown: dim * ffn,
};
const specs: BufferSpec[] = Array.from({ length: layers }, (_, i) => ({
  name: `layer${i}`,
  params: LAYER_PARAMS.map((p) => ({ name: p, numel: numel[p] })),
}));
const perLayer = specs[0]!.params.reduce((a, p) => a + p.numel, 0);
const compute = T.currentStream(0);
const grads = specs.map((_, i) => T.randn([perLayer], { seed: i + 1, std: 1e-3, device: "cuda:0" }));
compute.synchronize();
const ready = Event.create(0).record(compute);
const consumed = Event.create(0);

function timeRuns(run: (t: number) => void, sync: () => void): number {
  const ms: number[] = [];
  for (let t = 1; t <= 6; t++) {
    const t0 = performance.now();
    run(t);
    sync();
    if (t > 1) ms.push(performance.now() - t0);
  }
  return median(ms);
}

const rows: { placement: string; chunk: number | null; ms_per_layer: number; gb_per_s: number | null }[] = [];
{
  using o = new ShardedAdamWCuda(specs, 0, 1, h);
  const ms = timeRuns(
    (t) => {
      for (const [i, s] of specs.entries()) o.step(s.name, grads[i]!, t, h.lr, 1, compute);
    },
    () => compute.synchronize(),
  );
  rows.push({ placement: "GPU", chunk: null, ms_per_layer: ms / layers, gb_per_s: null });
}
for (const chunk of [4 << 20, 16 << 20]) {
  using o = new StreamedAdamW(specs, 0, 1, h, { chunk, slots: 3 });
  const ms = timeRuns(
    (t) => {
      for (const [i, s] of specs.entries()) o.step(s.name, grads[i]!, t, h.lr, 1, ready, consumed);
    },
    () => o.syncHost(),
  );
  rows.push({ placement: "pinned host", chunk, ms_per_layer: ms / layers, gb_per_s: (24 * perLayer * layers) / (ms / 1000) / 1e9 });
}
console.log(`AdamW over ${layers} Llama-2-7B layers (${(perLayer / 1e6).toFixed(1)}M parameters each), one GPU`);
console.log("placement     chunk (elements)  ms/layer  PCIe GB/s (in+out)");
for (const r of rows)
  console.log(
    `${r.placement.padEnd(13)} ${String(r.chunk ?? "-").padStart(16)}  ${r.ms_per_layer.toFixed(1).padStart(8)}  ${r.gb_per_s?.toFixed(1) ?? "-"}`,
  );
if (out) writeFileSync(out, `${JSON.stringify({ layers, perLayer, rows }, null, 2)}\n`);
