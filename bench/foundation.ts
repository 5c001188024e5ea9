// Foundation benchmarks (issue 2): cuBLASLt GEMMs through our FFI, device copy bandwidth and the cost
// of one kernel launch through bun:ffi. Timed with CUDA events after warm-up; median of several runs;
// inputs are random (never zeros). Writes JSON to argv[2] (if given) and prints a table.
//   bun bench/foundation.ts [out.json]

import { cliErrors, deviceInfo, kernels, requireDevice } from "@lightseq/cuda";
import { median, medianEventMs } from "@lightseq/cuda/bench/timing";
import * as T from "@lightseq/tensor";
import { type FoundationFile, type FoundationRow, versioned } from "./schema.ts";

cliErrors("bench");
requireDevice(0); // no GPU: one line saying why
const dev = "cuda:0";
const stream = T.currentStream(0);

/** Median milliseconds of `fn` over `reps` timed runs of `inner` calls each, after `warmup` calls. */
function timeMs(fn: () => void, o: { warmup?: number; reps?: number; inner?: number } = {}): number {
  const { warmup = 3, reps = 7, inner = 5 } = o;
  return medianEventMs(stream, fn, { warmup, reps, inner });
}

interface GemmCase {
  name: string;
  m: number;
  k: number;
  n: number;
  transA: boolean;
  transB: boolean;
}

const TOKENS = 32768;
const llama: [string, number, number][] = [
  ["qkv 4096->12288", 4096, 12288],
  ["o 4096->4096", 4096, 4096],
  ["gate_up 4096->22016", 4096, 22016],
  ["down 11008->4096", 11008, 4096],
];
const cases: GemmCase[] = [{ name: "square 8192^3", m: 8192, k: 8192, n: 8192, transA: false, transB: false }];
for (const [name, din, dout] of llama) {
  // y[T,out] = x[T,in] @ W[out,in]^T; dx[T,in] = dy[T,out] @ W; dW[out,in] = dy^T @ x.
  cases.push({ name: `${name} fwd`, m: TOKENS, k: din, n: dout, transA: false, transB: true });
  cases.push({ name: `${name} dgrad`, m: TOKENS, k: dout, n: din, transA: false, transB: false });
  cases.push({ name: `${name} wgrad`, m: dout, k: TOKENS, n: din, transA: true, transB: false });
}

const results: FoundationRow[] = [];
const info = deviceInfo(0);
console.log(`device: ${info.name}, ${info.multiProcessors} SMs`);

for (const c of cases) {
  const a = T.randn(c.transA ? [c.k, c.m] : [c.m, c.k], { seed: 1, dtype: "bf16", device: dev });
  const b = T.randn(c.transB ? [c.n, c.k] : [c.k, c.n], { seed: 2, dtype: "bf16", device: dev });
  const out = T.empty([c.m, c.n], { dtype: "bf16", device: dev });
  const ms = timeMs(() => T.matmul(a, b, { transA: c.transA, transB: c.transB, out }).dispose(), { reps: 9, inner: 3 });
  const tflops = (2 * c.m * c.n * c.k) / (ms * 1e-3) / 1e12;
  results.push({ kind: "gemm", ...c, ms, tflops });
  console.log(`gemm ${c.name.padEnd(26)} ${c.m}x${c.k}x${c.n} ${ms.toFixed(3)} ms ${tflops.toFixed(1)} TFLOP/s`);
  for (const t of [a, b, out]) t.dispose();
}

for (const mib of [256, 1024]) {
  const n = (mib * 1024 * 1024) / 4;
  const src = T.randn([n], { seed: 3, device: dev });
  const dst = T.empty([n], { device: dev });
  const ms = timeMs(() => T.copy(dst, src), { reps: 9, inner: 5 });
  const gbps = (2 * n * 4) / (ms * 1e-3) / 1e9; // bytes read + bytes written
  results.push({ kind: "copy", mib, ms, gbps });
  console.log(`copy d2d ${mib} MiB ${ms.toFixed(3)} ms ${gbps.toFixed(0)} GB/s (read+write)`);
  src.dispose();
  dst.dispose();
}

{
  // Launch cost: host time per ls_noop launch through FFI (enqueue rate), and GPU time per launch.
  const k = kernels();
  const h = stream.handle;
  for (let i = 0; i < 1000; i++) k.ls_noop(h);
  stream.synchronize();
  const N = 20000;
  const hostTimes: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = Bun.nanoseconds();
    for (let i = 0; i < N; i++) k.ls_noop(h);
    hostTimes.push((Bun.nanoseconds() - t0) / N / 1000);
    stream.synchronize();
  }
  const gpuUs = timeMs(() => k.ls_noop(h), { reps: 5, inner: 2000 }) * 1000;
  results.push({ kind: "launch", hostUsPerLaunch: median(hostTimes), gpuUsPerLaunch: gpuUs });
  console.log(`launch ls_noop via FFI: host ${median(hostTimes).toFixed(2)} us/launch, stream ${gpuUs.toFixed(2)} us/launch`);
  // An elementwise op through the full tensor API (checks, allocation from the pool, launch).
  const x = T.randn([1024], { seed: 4, device: dev });
  for (let i = 0; i < 1000; i++) T.add(x, x).dispose();
  stream.synchronize();
  const t0 = Bun.nanoseconds();
  for (let i = 0; i < N; i++) T.add(x, x).dispose();
  const apiUs = (Bun.nanoseconds() - t0) / N / 1000;
  stream.synchronize();
  results.push({ kind: "launch-api", hostUsPerOp: apiUs });
  console.log(`T.add (1024 elems) through the tensor API: host ${apiUs.toFixed(2)} us/op`);
}

const outPath = process.argv[2];
const file: FoundationFile = versioned({ device: info.name, date: new Date().toISOString(), results });
if (outPath) await Bun.write(outPath, JSON.stringify(file, null, 2));
