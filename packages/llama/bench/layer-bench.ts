// One Llama-2-7B decoder layer (C = 4096, 32 heads x 128, MHA, ffn 11008) forward and backward on one
// GPU in bf16, at T local tokens (default 32K and 64K), through the model's own layerForward /
// layerBackward (attention: selectAttentionBackend("auto"), i.e. cuDNN when present). Policies:
// "none" (forward, then backward from everything kept) and "remat-aware" (the backward first recomputes
// norm + QKV + RoPE and o-proj + residual + MLP, as in training with LightSeq's checkpoint boundary).
// CUDA events around the forward and the backward after warm-up; median of --reps runs.
//
// FLOPs (DESIGN.md section 9, model FLOPs: recompute not counted, causal attention halved):
//   forward  = 2 T N_mm + 2 T^2 C      N_mm = 4 C^2 + 3 C F  (the layer's matmul weights; MHA)
//   backward = 2 x forward
// Compare with bench/torch_llama_layer.py (the same layer in PyTorch, SDPA cuDNN, eager and compiled):
// pass its JSON with --torch to print both side by side.
//
//   bun packages/llama/bench/layer-bench.ts [out.json] [--tokens 32768,65536] [--reps 5]
//       [--policies none,remat-aware] [--mlp-chunk TOKENS] [--torch torch_layer.json]
// --mlp-chunk runs the tiled MLP (layer.ts) with that many tokens per chunk.

import { selectAttentionBackend } from "@lightseq/attention";
import { type LayerPolicy, layerPolicy, parsePolicy } from "@lightseq/checkpointing";
import { DeviceAllocator, deviceInfo, Event, requireDevice } from "@lightseq/cuda";
import { currentStream, memoryReport, randn, zeros } from "@lightseq/tensor";
import { llamaPreset } from "../src/config.ts";
import { LocalActivationStore, localAttention } from "../src/interfaces.ts";
import { type LayerContext, layerBackward, layerForward, newCounters } from "../src/layer.ts";
import { ropeInvFreq, ropeTable } from "../src/ops/rope.ts";
import { disposeLayerViews, initLayer, layerLayout, layerViews } from "../src/weights.ts";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const outPath = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const tokenList = (flag("--tokens") ?? "32768,65536").split(",").map(Number);
const reps = Number(flag("--reps") ?? 5);
// one layer: each entry is one kind
const policies: LayerPolicy[] = (flag("--policies") ?? "none,remat-aware").split(",").map((s) => layerPolicy(parsePolicy(s, 1), 0, 1));
const torchPath = flag("--torch");
const mlpChunkTokens = flag("--mlp-chunk") === undefined ? undefined : Number(flag("--mlp-chunk"));
for (const T of tokenList)
  if (!Number.isSafeInteger(T) || T <= 0) throw new Error(`--tokens: expected positive integers, got ${flag("--tokens")}`);
if (!Number.isSafeInteger(reps) || reps < 1) throw new Error(`--reps: expected a positive integer, got ${flag("--reps")}`);

requireDevice(0);
const dev = "cuda:0";
const stream = currentStream(0);
const cfg = llamaPreset("llama2-7b", { layers: 1 });
const { dim: C, ffn: F } = cfg;
const attn = selectAttentionBackend("auto", dev);
const info = deviceInfo(0);
console.log(
  `device: ${info.name}; layer C=${C} heads=${cfg.heads}x${cfg.headDim} kv=${cfg.kvHeads} ffn=${F} bf16; ${attn.reason}; median of ${reps}`,
);

const flat = initLayer(cfg, 0, { seed: 1, dtype: "bf16", device: dev });
const w = layerViews(flat, cfg);
const gFlat = zeros([layerLayout(cfg).numel], { device: dev });
const g = layerViews(gFlat, cfg);
const nMm = 4 * C * C + 3 * C * F;

export interface LayerRow {
  impl: string;
  policy: string;
  T: number;
  fwdMs: number;
  bwdMs: number;
  fwdTflops: number;
  bwdTflops: number;
  totalTflops: number;
  /** Allocator high-water mark over this row's runs (weights, their f32 gradients, x, dy included). */
  peakGiB: number;
}

const rows: LayerRow[] = [];
for (const T of tokenList) {
  const positions = Int32Array.from({ length: T }, (_, i) => i);
  const rope = ropeTable(ropeInvFreq(cfg), positions, dev, { stream });
  const x = randn([T, C], { seed: 2, dtype: "bf16", device: dev });
  const dy = randn([T, C], { seed: 3, dtype: "bf16", device: dev, std: 1e-3 });
  const fwdFlops = 2 * T * nMm + 2 * T * T * C;
  for (const policy of policies) {
    const ctx: LayerContext = {
      cfg,
      attention: localAttention(attn.backend),
      rope,
      policy,
      counters: newCounters(),
      stream,
      mlpChunkTokens,
    };
    const store = new LocalActivationStore();
    const step = async (e: Event[] | null) => {
      e?.[0]?.record(stream);
      const y = await layerForward(0, x.view(), w, ctx, store);
      e?.[1]?.record(stream);
      const dx = await layerBackward(0, dy.view(), w, g, ctx, store);
      e?.[2]?.record(stream);
      y.dispose();
      dx.dispose();
    };
    stream.synchronize();
    DeviceAllocator.forDevice(0).resetPeak();
    for (let i = 0; i < 2; i++) await step(null);
    stream.synchronize();
    const ev = [0, 1, 2].map(() => Event.create(0, { timing: true }));
    const fwd: number[] = [];
    const bwd: number[] = [];
    for (let r = 0; r < reps; r++) {
      await step(ev);
      (ev[2] as Event).synchronize();
      fwd.push((ev[0] as Event).elapsedMs(ev[1] as Event));
      bwd.push((ev[1] as Event).elapsedMs(ev[2] as Event));
    }
    for (const e of ev) e.dispose();
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
    const [fwdMs, bwdMs] = [med(fwd), med(bwd)];
    rows.push({
      impl: mlpChunkTokens === undefined ? "lightseq" : `lightseq mlp/${mlpChunkTokens}`,
      policy: policy.kind,
      T,
      fwdMs,
      bwdMs,
      fwdTflops: fwdFlops / fwdMs / 1e9,
      bwdTflops: (2 * fwdFlops) / bwdMs / 1e9,
      totalTflops: (3 * fwdFlops) / (fwdMs + bwdMs) / 1e9,
      peakGiB: memoryReport(dev).peak / 2 ** 30,
    });
  }
  for (const t of [x, dy, rope.cos, rope.sin]) t.dispose();
}
disposeLayerViews(w);
disposeLayerViews(g);
flat.dispose();
gFlat.dispose();

let torchRows: LayerRow[] = [];
if (torchPath !== undefined) {
  if (await Bun.file(torchPath).exists()) torchRows = (JSON.parse(await Bun.file(torchPath).text()) as { rows: LayerRow[] }).rows;
  else console.log(`--torch ${torchPath}: no such file (did the PyTorch side fail?); showing ours alone`);
}
const all = [...rows, ...torchRows].sort((a, b) => a.T - b.T);
const eager = (T: number) => torchRows.find((r) => r.T === T && r.impl === "torch-eager");
console.log(
  `${"impl".padEnd(14)} ${"policy".padEnd(12)} ${"T".padStart(6)} ${"fwd ms".padStart(8)} ${"bwd ms".padStart(8)} ${"fwd TF".padStart(7)} ${"bwd TF".padStart(7)} ${"f+b TF".padStart(7)} ${"vs eager".padStart(8)} ${"peak GiB".padStart(8)}`,
);
for (const r of all) {
  const e = eager(r.T);
  const vs = e ? `${((e.fwdMs + e.bwdMs) / (r.fwdMs + r.bwdMs)).toFixed(2)}x` : "";
  console.log(
    `${r.impl.padEnd(14)} ${r.policy.padEnd(12)} ${String(r.T).padStart(6)} ${r.fwdMs.toFixed(1).padStart(8)} ${r.bwdMs.toFixed(1).padStart(8)} ${r.fwdTflops.toFixed(0).padStart(7)} ${r.bwdTflops.toFixed(0).padStart(7)} ${r.totalTflops.toFixed(0).padStart(7)} ${vs.padStart(8)} ${r.peakGiB.toFixed(1).padStart(8)}`,
  );
}
console.log(
  "TFLOP/s: model FLOPs (fwd 2*T*N_mm + 2*T^2*C, bwd 2x fwd; remat-aware's recompute not counted); vs eager: PyTorch eager time / this time",
);
if (outPath) await Bun.write(outPath, JSON.stringify({ device: info.name, attention: attn.reason, rows }, null, 2));
