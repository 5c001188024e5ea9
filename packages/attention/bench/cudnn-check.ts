// The cuDNN attention backend on a GPU machine, in three steps; each prints what it found and the script
// exits non-zero if any step failed (steps 2 and 3 go on past a failed case so one run says everything).
//
//   1. ABI: the constants the cuDNN backend passes to cuDNN (CUDNN_ABI) against the real headers, as printed
//      by src/cudnn/abi.c (how to build it: the top of that file). Any difference stops the script here.
//   2. Correctness against the CUDA backend (cuda.ts) on fresh random bf16 inputs: o, lse, and dq, dk, dv
//      with both backwards fed the same (CUDA) o and lse, so each step is compared on its own.
//      Printed per tensor: max|got - ref| / max|ref| and ||got - ref|| / ||ref||. Pass: the norm ratio
//      <= 1e-2 and the max ratio <= 5e-2 (both sides round P to bf16 before P V and write bf16 outputs:
//      a correct pair lands near 1e-3; a masking or indexing error lands far above), and nothing non-finite.
//   3. Timing at H = 32, D = 128, causal, T = 8K, 32K, 64K: forward and forward+backward, CUDA events,
//      2 warm-up runs, median of --reps; TFLOP/s with attentionCost (causal halved, backward = 2.5 x forward).
//      The CUDA backend is timed beside it on the same card unless --no-cuda.
//
//   bun packages/attention/bench/cudnn-check.ts <cudnn-abi.txt> [--T 8192,32768,65536] [--reps 5] [--hkv 32]
//       [--no-cuda] [--no-timing]

import { deviceInfo, type Stream } from "@lightseq/cuda";
import { medianEventMs } from "@lightseq/cuda/bench/timing";
import { currentStream, empty, fill, randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { attentionCost } from "../src/block.ts";
import { backwardAccumulate, createCudaBackend, forwardInto } from "../src/cuda.ts";
import {
  CUDNN_ABI,
  checkCudnnAbi,
  cudnnAvailable,
  cudnnBackend,
  cudnnBackwardInto,
  cudnnForwardInto,
  cudnnPlans,
} from "../src/cudnn/index.ts";
import { attentionEnv } from "../src/env.ts";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const valued = new Set(["--T", "--reps", "--hkv"]);
const abiPath = args.find((a, i) => !a.startsWith("--") && !valued.has(args[i - 1] ?? ""));
const Ts = (flag("--T") ?? "8192,32768,65536").split(",").map(Number);
const reps = Number(flag("--reps") ?? 5);
const timingHkv = Number(flag("--hkv") ?? 32);
const withCuda = !args.includes("--no-cuda");
const withTiming = !args.includes("--no-timing");
/** Our kernels, the reference here: the set LIGHTSEQ_ATTN_KERNEL names (default auto). */
const { kernels } = attentionEnv();
const cudaBackend = createCudaBackend({ kernels });
let failures = 0;

// ---- 1. ABI ------------------------------------------------------------------------------------------------

if (!abiPath) {
  console.error(
    "usage: bun packages/attention/bench/cudnn-check.ts <cudnn-abi.txt> [...]  (build the file with packages/attention/src/cudnn/abi.c)",
  );
  process.exit(2);
}
{
  const abi = checkCudnnAbi(await Bun.file(abiPath).text(), abiPath);
  for (const h of abi.headers) console.log(`headers: ${h}`);
  if (abi.diffs.length > 0) {
    console.error(`ABI: ${abi.diffs.length} difference(s) between CUDNN_ABI and the headers (${abiPath}):\n  ${abi.diffs.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`ABI: all ${Object.keys(CUDNN_ABI).length} constants match the headers`);
}

// ---- setup -------------------------------------------------------------------------------------------------

const avail = cudnnAvailable();
if (!avail.ok) {
  console.error(`cuDNN backend unavailable: ${avail.reason}`);
  process.exit(1);
}
const info = deviceInfo(0);
console.log(`device: ${info.name}, ${info.multiProcessors} SMs, cc ${info.computeCapability.join(".")}`);
console.log(`cudnn: ${avail.reason}`);
const dev = "cuda:0";
const stream: Stream = currentStream(0);
let seed = 1;

function input(shape: number[]): Tensor {
  return randn(shape, { dtype: "bf16", device: dev, stream, seed: seed++ });
}

/** max|a - b| / max|b| and ||a - b|| / ||b|| over the finite pairs, plus a count of mismatched non-finite ones. */
function compare(got: Tensor, ref: Tensor): { maxRel: number; normRel: number; nonFinite: number } {
  const a = toFloat32Array(got);
  const b = toFloat32Array(ref);
  let maxDiff = 0;
  let maxRef = 0;
  let num = 0;
  let den = 0;
  let nonFinite = 0;
  for (let i = 0; i < b.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      if (x !== y) nonFinite++;
      continue;
    }
    const d = Math.abs(x - y);
    maxDiff = Math.max(maxDiff, d);
    maxRef = Math.max(maxRef, Math.abs(y));
    num += d * d;
    den += y * y;
  }
  return { maxRel: maxRef > 0 ? maxDiff / maxRef : maxDiff, normRel: den > 0 ? Math.sqrt(num / den) : Math.sqrt(num), nonFinite };
}

// ---- 2. correctness ----------------------------------------------------------------------------------------

console.log("\ncorrectness against the CUDA backend (bf16 inputs; max = max|d|/max|ref|, norm = ||d||/||ref||)");
const cases: [number, number, number, number, number, boolean][] = [];
for (const T of [1000, 4096]) for (const D of [64, 128]) for (const causal of [false, true]) cases.push([T, T, 8, 2, D, causal]);
// The two reshaped causal cases: bottom-right mask (Tq < Tk, as DistAttn's prefix calls) and Tq > Tk (empty rows).
cases.push([1000, 4096, 8, 2, 128, true], [4096, 1000, 8, 2, 64, true]);
for (const [Tq, Tk, Hq, Hkv, D, causal] of cases) {
  const what = `Tq=${Tq} Tk=${Tk} Hq=${Hq} Hkv=${Hkv} D=${D} causal=${causal}`;
  const live: Tensor[] = [];
  const keep = <R extends object>(r: R): R => {
    for (const t of Object.values(r)) live.push(t as Tensor);
    return r;
  };
  try {
    const { q, k, v, dO } = keep({ q: input([Tq, Hq, D]), k: input([Tk, Hkv, D]), v: input([Tk, Hkv, D]), dO: input([Tq, Hq, D]) });
    const opts = { causal, stream };
    const ref = keep(cudaBackend.forward(q, k, v, opts));
    const got = keep(cudnnBackend.forward(q, k, v, opts));
    const gref = keep(cudaBackend.backward(q, k, v, ref.o, ref.lse, dO, opts));
    const ggot = keep(cudnnBackend.backward(q, k, v, ref.o, ref.lse, dO, opts));
    const row: string[] = [];
    let ok = true;
    for (const [name, a, b] of [
      ["o", got.o, ref.o],
      ["lse", got.lse, ref.lse],
      ["dq", ggot.dq, gref.dq],
      ["dk", ggot.dk, gref.dk],
      ["dv", ggot.dv, gref.dv],
    ] as const) {
      const r = compare(a, b);
      const pass = r.normRel <= 1e-2 && r.maxRel <= 5e-2 && r.nonFinite === 0;
      ok &&= pass;
      row.push(
        `${name} ${r.maxRel.toExponential(1)}/${r.normRel.toExponential(1)}${r.nonFinite ? ` (${r.nonFinite} non-finite)` : ""}${pass ? "" : " FAIL"}`,
      );
    }
    if (!ok) failures++;
    console.log(`  ${ok ? "ok  " : "FAIL"} ${what.padEnd(48)} ${row.join("  ")}`);
  } catch (e) {
    failures++;
    console.log(`  FAIL ${what}: ${(e as Error).stack ?? e}`);
  } finally {
    stream.synchronize();
    for (const t of live) t.dispose();
  }
}
console.log("plans built:");
for (const p of cudnnPlans())
  console.log(`  ${p.key.padEnd(70)} engine ${p.engine}, workspace ${p.workspaceBytes} B, built in ${(p.buildMs / 1000).toFixed(2)} s`);

// ---- 3. timing ---------------------------------------------------------------------------------------------

const timeMs = (fn: () => void): number => medianEventMs(stream, fn, { warmup: 2, reps });

if (withTiming) {
  const H = 32;
  const D = 128;
  console.log(`\ntiming: H=${H} Hkv=${timingHkv} D=${D} causal bf16, median of ${reps} (TFLOP/s: causal halved, bwd = 2.5 x fwd)`);
  console.log(
    `${"T".padStart(6)} ${"backend".padEnd(8)} ${"fwd ms".padStart(9)} ${"f+b ms".padStart(9)} ${"fwd TF".padStart(7)} ${"f+b TF".padStart(7)} ${"plan s".padStart(7)}`,
  );
  for (const T of Ts) {
    const live: Tensor[] = [];
    const keep = <X extends Tensor>(t: X): X => {
      live.push(t);
      return t;
    };
    try {
      const q = keep(input([T, H, D]));
      const k = keep(input([T, timingHkv, D]));
      const v = keep(input([T, timingHkv, D]));
      const dO = keep(input([T, H, D]));
      const p = { dtype: "bf16" as const, device: dev, stream };
      const o = keep(empty([T, H, D], p));
      const lse = keep(empty([H, T], { device: dev, stream }));
      const opts = { causal: true, stream, kernels };
      const shape = { Tq: T, Tk: T, Hq: H, Hkv: timingHkv, D, causal: true };
      const F = attentionCost(shape, "forward").flops;
      const B = attentionCost(shape, "backward").flops;
      const tf = (flops: number, ms: number) => flops / (ms * 1e-3) / 1e12;
      const report = (name: string, fwd: () => void, both: () => void, planMs: number | null) => {
        const fwdMs = timeMs(fwd);
        const bothMs = timeMs(both);
        console.log(
          `${String(T).padStart(6)} ${name.padEnd(8)} ${fwdMs.toFixed(2).padStart(9)} ${bothMs.toFixed(2).padStart(9)} ${tf(F, fwdMs).toFixed(1).padStart(7)} ${tf(
            F + B,
            bothMs,
          )
            .toFixed(1)
            .padStart(7)} ${(planMs === null ? "-" : (planMs / 1000).toFixed(2)).padStart(7)}`,
        );
      };
      {
        const g = { dq: keep(empty([T, H, D], p)), dk: keep(empty([T, timingHkv, D], p)), dv: keep(empty([T, timingHkv, D], p)) };
        const fwd = () => cudnnForwardInto(q, k, v, { o, lse }, opts);
        const bwd = () => cudnnBackwardInto(q, k, v, o, lse, dO, g, opts);
        // First calls build the plans (host-timed, synchronised): reported apart from the kernel times.
        const t0 = performance.now();
        fwd();
        bwd();
        stream.synchronize();
        report(
          "cudnn",
          fwd,
          () => {
            fwd();
            bwd();
          },
          performance.now() - t0,
        );
      }
      if (withCuda) {
        const f32 = { device: dev, stream };
        const g = { dq: keep(empty([T, H, D], f32)), dk: keep(empty([T, timingHkv, D], f32)), dv: keep(empty([T, timingHkv, D], f32)) };
        for (const t of Object.values(g)) fill(t, 0, stream);
        const fwd = () => forwardInto(q, k, v, { o, lse }, opts);
        const bwd = () => backwardAccumulate(q, k, v, o, lse, dO, g, opts);
        report(
          "cuda",
          fwd,
          () => {
            fwd();
            bwd();
          },
          null,
        );
      }
    } catch (e) {
      failures++;
      console.log(`  FAIL T=${T}: ${(e as Error).stack ?? e}`);
    } finally {
      stream.synchronize();
      for (const t of live) t.dispose();
    }
  }
}

console.log(failures === 0 ? "\ncudnn-check: all passed" : `\ncudnn-check: ${failures} failure(s)`);
process.exit(failures === 0 ? 0 : 1);
