// The demonstration of what exists today: the same seeded random numbers on every device, a small
// two-layer MLP forward (matmul, elementwise ops, sum of squares) on the CPU reference backend and,
// where a GPU is present, on CUDA in bf16 and f32, checked against each other, with timings.
//   bun run demo

import { deviceInfo, fmtBytes, probeGpus } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";

const tokens = 512;
const dim = 256;
const hidden = 688;

function mlp(device: string, dtype: T.DType): { out: T.Tensor; ms: number } {
  const t0 = performance.now();
  const x = T.randn([tokens, dim], { seed: 1, dtype, device });
  const w1 = T.randn([hidden, dim], { seed: 2, dtype, device, std: 1 / Math.sqrt(dim) });
  const w2 = T.randn([dim, hidden], { seed: 3, dtype, device, std: 1 / Math.sqrt(hidden) });
  const h = T.matmul(x, w1, { transB: true }); // [tokens, hidden]
  const g = T.mul(h, h); // a stand-in nonlinearity made of the ops that exist
  const y = T.matmul(g, w2, { transB: true }); // [tokens, dim]
  T.axpy(1, x, y); // residual
  const out = T.cast(y, "f32");
  const ss = T.item(T.sumOfSquares(out));
  const ms = performance.now() - t0;
  console.log(`  ${device.padEnd(7)} ${dtype.padEnd(4)}  |y|^2 = ${ss.toFixed(3).padStart(14)}  ${ms.toFixed(1)} ms`);
  for (const t of [x, w1, w2, h, g, y]) t.dispose();
  return { out, ms };
}

console.log(`lightseq-ts demo: MLP forward, ${tokens} tokens, ${dim} -> ${hidden} -> ${dim}`);
const gpus = probeGpus();
console.log(gpus.count > 0 ? `GPU: ${deviceInfo(0).name}` : `no GPU (${gpus.reason}); CPU reference only`);

const ref = mlp("cpu", "f32");
const refBf16 = mlp("cpu", "bf16");
const r = compareClose(refBf16.out, ref.out, { rtol: 5e-2, atol: 5e-2 });
console.log(`  cpu bf16 vs cpu f32: relative error ${r.relativeError.toExponential(2)} (bf16 operands: ~1e-2 expected)`);

let ok = true;
if (gpus.count > 0) {
  for (const dtype of ["f32", "bf16"] as const) {
    const gpu = mlp("cuda:0", dtype);
    const cpu = dtype === "f32" ? ref : refBf16;
    const c = compareClose(gpu.out, cpu.out, { rtol: dtype === "f32" ? 1e-4 : 2e-2, atol: dtype === "f32" ? 1e-4 : 2e-2 });
    console.log(`  cuda:0 ${dtype} vs cpu ${dtype}: relative error ${c.relativeError.toExponential(2)} ${c.ok ? "ok" : "MISMATCH"}`);
    ok &&= c.ok;
  }
  const mem = T.memoryReport("cuda:0");
  console.log(`  cuda:0 memory: in use ${fmtBytes(mem.inUse)}, peak ${fmtBytes(mem.peak)}, reserved ${fmtBytes(mem.reserved)}`);
}
if (!ok) {
  console.error("demo: GPU and CPU results disagree");
  process.exit(1);
}
