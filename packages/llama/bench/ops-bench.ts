// The Llama ops on one GPU at 7B layer shapes: every memory-bound kernel's GB/s (bytes from its op's
// cost(), which counts each tensor read or written once) against the card's device-to-device copy
// bandwidth measured in the same run (target >= 80%), the fused residual + RMSNorm against add then norm
// (does the fusion pay), and the fused LM head + cross-entropy against its three GEMMs alone at the
// same chunking (target: within 15%). CUDA events after warm-up, median of --reps runs; random inputs.
//
//   bun packages/llama/bench/ops-bench.ts [out.json] [--T 32768] [--reps 7]
// Shapes: C = 4096, F = 11008, Hq = Hkv = 32, D = 128 (Llama-2-7B), V = 32000.

import { deviceInfo, type Stream } from "@lightseq/cuda";
import { medianEventMs } from "@lightseq/cuda/bench/timing";
import { add, copy, currentStream, empty, fill, fromArray, matmul, rand, randn, Tensor } from "@lightseq/tensor";
import { embeddingBackward, embeddingCost, embeddingForward, embeddingPlan } from "../src/ops/embedding.ts";
import { crossEntropyRows, crossEntropyRowsCost, defaultChunkTokens, lmHeadLoss, lmHeadLossCost } from "../src/ops/lm-head-loss.ts";
import { residualAdd, residualCost } from "../src/ops/residual.ts";
import { residualRmsnormCost, residualRmsnormForward, rmsnormBackward, rmsnormCost, rmsnormForward } from "../src/ops/rmsnorm.ts";
import { ropeCost, ropeInvFreq, ropeQkvBackward, ropeQkvForward, ropeTable } from "../src/ops/rope.ts";
import { swigluBackward, swigluCost, swigluForward } from "../src/ops/swiglu.ts";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const outPath = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const T = Number(flag("--T") ?? 32768);
const reps = Number(flag("--reps") ?? 7);
const [C, F, H, D, V] = [4096, 11008, 32, 128, 32000];
const dev = "cuda:0";
const stream: Stream = currentStream(0);
const p = { dtype: "bf16" as const, device: dev, stream };
let seed = 1;
const rnd = (shape: number[], std = 1) => randn(shape, { ...p, seed: seed++, std });
const timeMs = (fn: () => void, inner = 3) => medianEventMs(stream, fn, { warmup: 3, reps, inner });
/** Disposes the views an op returned into preallocated outputs. */
const drop = (r: Tensor | object) => {
  for (const t of r instanceof Tensor ? [r] : Object.values(r)) if (t instanceof Tensor) t.dispose();
};

const info = deviceInfo(0);
console.log(`device: ${info.name}, ${info.multiProcessors} SMs; T=${T} C=${C} F=${F} H=${H} D=${D} V=${V}; median of ${reps}`);

// Copy bandwidth: 1 GiB device to device, bytes read + written.
const copyBytes = 1 << 30;
const src = rand([copyBytes / 4], { device: dev, stream, seed: seed++ });
const dst = empty([copyBytes / 4], { device: dev, stream });
const copyMs = timeMs(() => copy(dst, src, stream), 5);
const copyGBs = (2 * copyBytes) / (copyMs * 1e-3) / 1e9;
src.dispose();
dst.dispose();
console.log(`copy d2d 1 GiB: ${copyMs.toFixed(3)} ms, ${copyGBs.toFixed(0)} GB/s (read + write)`);

interface Row {
  kernel: string;
  ms: number;
  gbs: number;
  ofCopy: number;
}
const rows: Row[] = [];
const mem = (kernel: string, bytes: number, fn: () => unknown) => {
  const ms = timeMs(() => {
    const r = fn();
    if (r !== null && typeof r === "object") drop(r);
  });
  const gbs = bytes / (ms * 1e-3) / 1e9;
  rows.push({ kernel, ms, gbs, ofCopy: gbs / copyGBs });
};

// --- RMSNorm, fused residual + norm, residual add ---
{
  const x = rnd([T, C]);
  const r = rnd([T, C]);
  const w = rnd([C], 0.5);
  const dy = rnd([T, C]);
  const y = empty([T, C], p);
  const h = empty([T, C], p);
  const dx = empty([T, C], p);
  const rstd = empty([T], { device: dev, stream });
  const dw = empty([C], { device: dev, stream });
  fill(dw, 0, stream);
  const eps = 1e-5;
  const shape = { T, C };
  mem("rmsnorm fwd", rmsnormCost(shape, "forward").bytes, () => rmsnormForward(x, w, eps, { stream, out: y, rstdOut: rstd }));
  mem("rmsnorm bwd", rmsnormCost(shape, "backward").bytes, () => rmsnormBackward(x, w, rstd, dy, dw, { stream, out: dx }));
  mem("rmsnorm bwd + residual grad", rmsnormCost(shape, "backward").bytes + T * C * 2, () =>
    rmsnormBackward(x, w, rstd, dy, dw, { stream, out: dx, residual: r }),
  );
  mem("residual add", residualCost(shape).bytes, () => residualAdd(x, r, { stream, out: h }));
  mem("residual + rmsnorm fused", residualRmsnormCost(shape).bytes, () =>
    residualRmsnormForward(x, r, w, eps, { stream, hOut: h, out: y, rstdOut: rstd }),
  );
  // the same work unfused: the fused bytes over the two kernels' time (what the fusion saves shows as a lower GB/s)
  mem("residual add, then rmsnorm (unfused)", residualRmsnormCost(shape).bytes, () => {
    drop(add(x, r, { stream, out: h }));
    return rmsnormForward(h, w, eps, { stream, out: y, rstdOut: rstd });
  });
  for (const t of [x, r, w, dy, y, h, dx, rstd, dw]) t.dispose();
}

// --- RoPE + QKV split ---
{
  const dims = { Hq: H, Hkv: H, D };
  const qkv = rnd([T, 3 * H * D]);
  const positions = Int32Array.from({ length: T }, (_, i) => 100000 + i);
  const table = ropeTable(ropeInvFreq({ headDim: D, ropeTheta: 10000 }), positions, dev, { stream });
  const q = empty([T, H, D], p);
  const k = empty([T, H, D], p);
  const v = empty([T, H, D], p);
  const dqkv = empty([T, 3 * H * D], p);
  const bytes = ropeCost({ T, ...dims }).bytes;
  mem("rope+qkv fwd", bytes, () => ropeQkvForward(qkv, table, dims, { stream, qOut: q, kOut: k, vOut: v }));
  mem("rope+qkv bwd", bytes, () => ropeQkvBackward(q, k, v, table, dims, { stream, out: dqkv }));
  for (const t of [qkv, table.cos, table.sin, q, k, v, dqkv]) t.dispose();
}

// --- SwiGLU ---
{
  const gu = rnd([T, 2 * F], 2);
  const da = rnd([T, F]);
  const a = empty([T, F], p);
  const dgu = empty([T, 2 * F], p);
  const fwd = swigluCost({ T, F }, "forward");
  const bwd = swigluCost({ T, F }, "backward");
  mem("swiglu fwd", fwd.bytes, () => swigluForward(gu, { stream, out: a }));
  mem("swiglu bwd", bwd.bytes, () => swigluBackward(gu, da, { stream, out: dgu }));
  for (const t of [gu, da, a, dgu]) t.dispose();
}

// --- Embedding (tokens with Zipf-like repeats, as text has) ---
{
  const tok = Int32Array.from({ length: T }, (_, i) => Math.floor(V * ((i * 0.6180339887) % 1) ** 3));
  const tokens = fromArray(tok, [T], { dtype: "i32", device: dev, stream });
  const table = rnd([V, C]);
  const x = empty([T, C], p);
  const dx = rnd([T, C]);
  const dTable = empty([V, C], { device: dev, stream });
  fill(dTable, 0, stream);
  const plan = embeddingPlan(tok, V, dev, { stream });
  const bwdBytes = embeddingCost({ T, V, C, distinct: plan.distinct }, "backward").bytes;
  mem("embedding fwd", embeddingCost({ T, V, C }, "forward").bytes, () => embeddingForward(tokens, table, { stream, out: x }));
  mem(`embedding bwd (${plan.distinct} distinct)`, bwdBytes, () => embeddingBackward(tokens, dx, dTable, { stream, plan }));
  for (const t of [tokens, table, x, dx, dTable, plan.data]) t.dispose();
}

// --- LM head + cross-entropy ---
const chunk = defaultChunkTokens(V, "cuda");
let lm: Record<string, number> = {};
{
  const h = rnd([T, C]);
  const W = rnd([V, C], 0.02);
  const lab = Int32Array.from({ length: T }, (_, i) => (i % 97 === 0 ? -100 : (i * 7919) % V));
  const labels = fromArray(lab, [T], { dtype: "i32", device: dev, stream });
  const dh = empty([T, C], p);
  const dW = empty([V, C], { device: dev, stream });
  fill(dW, 0, stream);
  const gradScale = 1 / lab.filter((l) => l !== -100).length;
  // the row kernel alone, on one chunk of GEMM-made logits
  const logits = empty([chunk, V], { device: dev, stream });
  const dlogits = empty([chunk, V], p);
  const rowLoss = empty([chunk], { device: dev, stream });
  const hs = h.narrow(0, chunk);
  const labs = labels.narrow(0, chunk);
  matmul(hs, W, { transB: true, out: logits, outDtype: "f32", stream }).dispose();
  mem(`cross-entropy rows (${chunk} x ${V})`, crossEntropyRowsCost({ T: chunk, V }).bytes, () =>
    crossEntropyRows(logits, labs, gradScale, dlogits, rowLoss, stream),
  );
  const fusedMs = timeMs(() => drop(lmHeadLoss(h, W, labels, { gradScale, chunkTokens: chunk, dh, dW, stream })), 1);
  const gemmsMs = timeMs(() => {
    for (let s = 0; s < T; s += chunk) {
      const n = Math.min(chunk, T - s);
      using hc = h.narrow(s, n);
      using lg = logits.narrow(0, n);
      using dl = dlogits.narrow(0, n);
      using dhc = dh.narrow(s, n);
      matmul(hc, W, { transB: true, out: lg, outDtype: "f32", stream }).dispose();
      matmul(dl, W, { out: dhc, stream }).dispose();
      matmul(dl, hc, { transA: true, out: dW, beta: 1, outDtype: "f32", stream }).dispose();
    }
  }, 1);
  const flops = lmHeadLossCost({ T, C, V }, "backward").flops;
  lm = { chunk, fusedMs, gemmsMs, overhead: fusedMs / gemmsMs - 1, fusedTflops: flops / (fusedMs * 1e-3) / 1e12 };
  for (const t of [h, W, labels, dh, dW, logits, dlogits, rowLoss, hs, labs]) t.dispose();
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
console.log("");
console.log(`${"kernel".padEnd(40)} ${"ms".padStart(8)} ${"GB/s".padStart(7)} ${"of copy".padStart(8)}  target >= 80%`);
for (const r of rows)
  console.log(
    `${r.kernel.padEnd(40)} ${r.ms.toFixed(3).padStart(8)} ${r.gbs.toFixed(0).padStart(7)} ${pct(r.ofCopy).padStart(8)}  ${r.ofCopy >= 0.8 ? "ok" : "BELOW"}`,
  );
console.log(
  `lm head + CE (T=${T}, chunk ${lm.chunk}): fused ${lm.fusedMs?.toFixed(2)} ms vs its 3 GEMMs ${lm.gemmsMs?.toFixed(2)} ms: +${pct(lm.overhead ?? 0)} (target <= 15%) ${(lm.overhead ?? 1) <= 0.15 ? "ok" : "ABOVE"}; ${lm.fusedTflops?.toFixed(0)} TFLOP/s`,
);
if (outPath)
  await Bun.write(
    outPath,
    `${JSON.stringify({ device: info.name, date: new Date().toISOString(), T, C, F, H, D, V, copyGBs, kernels: rows, lmHead: lm }, null, 2)}\n`,
  );
