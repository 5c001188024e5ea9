// CPU matmul: OpenBLAS sgemm (setCpuMatmul("blas"), 1 thread unless --threads) against the TypeScript
// reference, in GFLOP/s, on the shapes a tiny model's step spends its time in. Random inputs; the
// median of several runs after one warm-up (the reference runs once: it takes seconds).
//   bun packages/tensor/bench/cpu-matmul-bench.ts [--threads N] [--no-reference]

import { parseArgs } from "node:util";
import * as T from "@lightseq/tensor";

const { values: flags } = parseArgs({ options: { threads: { type: "string" }, "no-reference": { type: "boolean" } } });
const threads = flags.threads === undefined ? undefined : Number(flags.threads);

interface Case {
  name: string;
  m: number;
  k: number;
  n: number;
  transB: boolean;
}

const cases: Case[] = [
  // x[256,128] @ W[32000,128]^T: the LM head of a 128-wide model over a 32K vocabulary.
  { name: "LM head 256x128 @ (32000x128)^T", m: 256, k: 128, n: 32000, transB: true },
  { name: "LM head 256x128 @ 128x32000", m: 256, k: 128, n: 32000, transB: false },
  { name: "square-ish 512x4096 @ 4096x4096", m: 512, k: 4096, n: 4096, transB: false },
];

function seconds(fn: () => void, reps: number): number {
  fn();
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    times.push((performance.now() - t0) / 1e3);
  }
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)] as number;
}

const info = T.setCpuMatmul("blas", threads === undefined ? {} : { threads });
console.log(`OpenBLAS: ${info.blas?.path} (${info.blas?.flavor}; ${info.blas?.config}); ${info.blas?.threads} thread(s)`);
const rows: string[][] = [["shape", "GFLOP", "blas GFLOP/s", "reference GFLOP/s", "speedup"]];
for (const c of cases) {
  const a = T.randn([c.m, c.k], { seed: 1 });
  const b = T.randn(c.transB ? [c.n, c.k] : [c.k, c.n], { seed: 2 });
  const out = T.empty([c.m, c.n]);
  const gflop = (2 * c.m * c.n * c.k) / 1e9;
  const run = () => T.matmul(a, b, { transB: c.transB, out });
  T.setCpuMatmul("blas", threads === undefined ? {} : { threads });
  const blas = gflop / seconds(run, 5);
  let ref = Number.NaN;
  if (!flags["no-reference"]) {
    T.setCpuMatmul("reference");
    const t0 = performance.now();
    run();
    ref = gflop / ((performance.now() - t0) / 1e3);
  }
  const skipped = Number.isNaN(ref);
  rows.push([c.name, gflop.toFixed(2), blas.toFixed(1), skipped ? "-" : ref.toFixed(2), skipped ? "-" : `${(blas / ref).toFixed(0)}x`]);
}
const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] as string).length))) ?? [];
for (const r of rows) console.log(r.map((v, i) => v.padStart(widths[i] as number)).join("  "));
