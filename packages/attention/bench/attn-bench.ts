// Block attention on one GPU: our CUDA kernels (cuda.ts) and the cuDNN backend (cudnn/) at the shapes
// of Llama-2-7B-like layers.
// H = 32 query heads (Hkv = 32 and 8), D = 128, causal, bf16, T = 8K, 32K, 64K: forward, backward and
// forward+backward in one timed region. CUDA events after warm-up, median of --reps (default 5) runs.
// TFLOP/s use attentionCost (block.ts): causal FLOPs halved, backward = 2.5 x forward. Inputs are random.
//
//   bun packages/attention/bench/attn-bench.ts [out.json] [--T 8192,32768,65536] [--reps 5] [--backends cuda,cudnn]
// Compare with packages/attention/bench/torch_sdpa_bench.py (PyTorch SDPA, cuDNN and flash) on the same card.

import { cliErrors, deviceInfo, requireDevice, type Stream, UserError } from "@lightseq/cuda";
import { medianEventMs } from "@lightseq/cuda/bench/timing";
import { currentStream, empty, fill, randn, type Tensor } from "@lightseq/tensor";
import { type AttnFile, type AttnRow, versioned } from "../../../bench/schema.ts";
import { attentionCost } from "../src/block.ts";
import { backwardAccumulate, backwardWorkspaceBytes, cudaAttentionKernels, forwardInto } from "../src/cuda.ts";
import { cudnnAvailable, cudnnBackwardInto, cudnnForwardInto } from "../src/cudnn/index.ts";
import { attentionEnv } from "../src/env.ts";

cliErrors("attn-bench");
const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const outPath = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const Ts = (flag("--T") ?? "8192,32768,65536").split(",").map(Number);
const reps = Number(flag("--reps") ?? 5);
const backends = (flag("--backends") ?? "cuda").split(",");
for (const b of backends) {
  if (b !== "cuda" && b !== "cudnn") throw new UserError(`--backends: expected a list of cuda, cudnn; got ${JSON.stringify(b)}`);
}
requireDevice(0); // no GPU: one line saying why
if (backends.includes("cudnn") && !cudnnAvailable().ok) throw new UserError(`--backends cudnn: ${cudnnAvailable().reason}`);
const H = 32;
const D = 128;
const dev = "cuda:0";
const stream: Stream = currentStream(0);
/** Which of our kernel sets runs: LIGHTSEQ_ATTN_KERNEL (auto | mma | wgmma; default auto), read once here. */
const { kernels } = attentionEnv();

/** Median milliseconds of fn over `reps` timed runs after `warmup` runs. */
const timeMs = (fn: () => void, warmup = 2): number => medianEventMs(stream, fn, { warmup, reps });

const info = deviceInfo(0);
const kernelName = (b: string) => (b === "cuda" ? `lightseq cuda (${cudaAttentionKernels(0, kernels)})` : "cudnn (fused attention)");
console.log(`device: ${info.name}, ${info.multiProcessors} SMs; H=${H} D=${D} causal bf16, median of ${reps}`);
for (const b of backends) console.log(`  ${b}: ${kernelName(b)}`);
console.log(
  `${"backend".padEnd(7)} ${"T".padStart(6)} ${"Hkv".padStart(4)} ${"fwd ms".padStart(9)} ${"bwd ms".padStart(9)} ${"f+b ms".padStart(9)} ${"fwd TF".padStart(7)} ${"bwd TF".padStart(7)} ${"f+b TF".padStart(7)}`,
);
const results: AttnRow[] = [];
for (const backend of backends)
  for (const T of Ts) {
    for (const Hkv of [32, 8]) {
      const live: Tensor[] = [];
      const keep = <X extends Tensor>(t: X): X => {
        live.push(t);
        return t;
      };
      const p = { dtype: "bf16" as const, device: dev, stream };
      const q = keep(randn([T, H, D], { ...p, seed: 1 }));
      const k = keep(randn([T, Hkv, D], { ...p, seed: 2 }));
      const v = keep(randn([T, Hkv, D], { ...p, seed: 3 }));
      const dO = keep(randn([T, H, D], { ...p, seed: 4 }));
      const o = keep(empty([T, H, D], p));
      const lse = keep(empty([H, T], { device: dev, stream }));
      // Ours add f32 gradients (DistAttn's accumulate path); cuDNN writes bf16 ones.
      const gradDtype = backend === "cuda" ? "f32" : "bf16";
      const grads = {
        dq: keep(empty([T, H, D], { dtype: gradDtype, device: dev, stream })),
        dk: keep(empty([T, Hkv, D], { dtype: gradDtype, device: dev, stream })),
        dv: keep(empty([T, Hkv, D], { dtype: gradDtype, device: dev, stream })),
      };
      for (const g of Object.values(grads)) fill(g, 0, stream);
      const opts = { causal: true, stream };
      let fwd: () => void;
      let bwd: () => void;
      if (backend === "cuda") {
        const workspace = keep(empty([backwardWorkspaceBytes(T, H, D) / 4], { device: dev, stream }));
        fwd = () => forwardInto(q, k, v, { o, lse }, { ...opts, kernels });
        bwd = () => backwardAccumulate(q, k, v, o, lse, dO, grads, { ...opts, kernels, workspace });
      } else {
        fwd = () => cudnnForwardInto(q, k, v, { o, lse }, opts);
        bwd = () => cudnnBackwardInto(q, k, v, o, lse, dO, grads, opts);
      }
      const fwdMs = timeMs(fwd);
      const bwdMs = timeMs(bwd);
      const bothMs = timeMs(() => {
        fwd();
        bwd();
      });
      const shape = { Tq: T, Tk: T, Hq: H, Hkv, D, causal: true };
      const F = attentionCost(shape, "forward").flops;
      const B = attentionCost(shape, "backward").flops;
      const tf = (flops: number, ms: number) => flops / (ms * 1e-3) / 1e12;
      const row = {
        backend,
        kernel: kernelName(backend),
        T,
        H,
        Hkv,
        D,
        causal: true,
        fwdMs,
        bwdMs,
        fwdBwdMs: bothMs,
        fwdTflops: tf(F, fwdMs),
        bwdTflops: tf(B, bwdMs),
        fwdBwdTflops: tf(F + B, bothMs),
      };
      results.push(row);
      console.log(
        `${backend.padEnd(7)} ${String(T).padStart(6)} ${String(Hkv).padStart(4)} ${fwdMs.toFixed(2).padStart(9)} ${bwdMs.toFixed(2).padStart(9)} ${bothMs.toFixed(2).padStart(9)} ${row.fwdTflops.toFixed(1).padStart(7)} ${row.bwdTflops.toFixed(1).padStart(7)} ${row.fwdBwdTflops.toFixed(1).padStart(7)}`,
      );
      stream.synchronize();
      for (const t of live) t.dispose();
    }
  }
const file: AttnFile = versioned({ device: info.name, date: new Date().toISOString(), results });
if (outPath) await Bun.write(outPath, `${JSON.stringify(file, null, 2)}\n`);
