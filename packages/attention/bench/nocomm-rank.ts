// DistAttn's compute alone for one rank of a P-rank job, on one GPU: the no-communication communicator
// (nocomm.ts) stands in for the peers, so this is the "nocomm" row of distattn-bench.ts for that rank
// (zigzag is balanced: every rank's time is about the same) without the other GPUs. Forward+backward,
// H = 32, D = 128, causal, bf16, CUDA events, median of BENCH_REPS (3) after one warm-up.
//   bun packages/attention/bench/nocomm-rank.ts [out.json] [T=65536] [P=2] [schedule=zigzag] [Hkv=32] [rank=0]
// Environment: BENCH_BACKEND (cuda, the default: our kernels, LIGHTSEQ_ATTN_KERNEL's set; cudnn).

import { Event, probeGpus } from "@lightseq/cuda";
import { median } from "@lightseq/cuda/bench/timing";
import * as T from "@lightseq/tensor";
import type { AttentionBackend } from "../src/block.ts";
import { createCudaBackend, cudaAttentionKernels } from "../src/cuda.ts";
import { cudnnBackend } from "../src/cudnn/index.ts";
import { distAttnBackward, distAttnForward } from "../src/distattn.ts";
import { attentionEnv } from "../src/env.ts";
import { placeSequence } from "../src/placement.ts";
import { makeSchedule, SCHEDULES, type ScheduleName } from "../src/schedule.ts";
import { noCommCommunicator } from "./nocomm.ts";

const [outPath = "", tArg = "65536", pArg = "2", schedArg = "zigzag", hkvArg = "32", rankArg = "0"] = process.argv.slice(2);
const fail = (m: string): never => {
  console.error(`nocomm-rank: ${m}`);
  process.exit(2);
};
const int = (name: string, v: string, min: number) => {
  const n = Number(v);
  return Number.isInteger(n) && n >= min ? n : fail(`${name}: expected an integer >= ${min}, got "${v}"`);
};
const [N, P, Hkv, rank] = [int("T", tArg, 1), int("P", pArg, 1), int("Hkv", hkvArg, 1), int("rank", rankArg, 0)];
if (rank >= P) fail(`rank: expected < P = ${P}, got ${rank}`);
if (!SCHEDULES.includes(schedArg as ScheduleName)) fail(`schedule: expected one of ${SCHEDULES.join(", ")}, got "${schedArg}"`);
const BACKEND = process.env.BENCH_BACKEND || "cuda";
if (BACKEND !== "cuda" && BACKEND !== "cudnn") fail(`BENCH_BACKEND: expected cuda or cudnn, got "${BACKEND}"`);
const { kernels } = attentionEnv();
const REPS = int("BENCH_REPS", process.env.BENCH_REPS ?? "3", 1);
if (probeGpus().count < 1) fail(`needs a GPU: ${probeGpus().reason}`);

const H = 32;
const D = 128;
const dev = "cuda:0";
const stream = T.currentStream(0);
const backend: AttentionBackend = BACKEND === "cudnn" ? cudnnBackend : createCudaBackend({ kernels });
const s = makeSchedule(schedArg as ScheduleName, P);
const n = placeSequence(s, N).localLen[rank] as number;
const seed = 100 + rank; // as distattn-bench.ts
const q = T.randn([n, H, D], { seed, dtype: "bf16", device: dev });
const k = T.randn([n, Hkv, D], { seed: seed + 10, dtype: "bf16", device: dev });
const v = T.randn([n, Hkv, D], { seed: seed + 20, dtype: "bf16", device: dev });
const dO = T.randn([n, H, D], { seed: seed + 30, dtype: "bf16", device: dev });
const opts = { schedule: s, N, comm: noCommCommunicator({ rank, size: P }), backend };

const once = async () => {
  const f = await distAttnForward(q, k, v, opts);
  const g = await distAttnBackward(q, k, v, f, dO, opts);
  for (const x of [f.o, ...f.lse, g.dq, g.dk, g.dv]) x.dispose();
};
await once();
const e0 = Event.create(0, { timing: true });
const e1 = Event.create(0, { timing: true });
const ms: number[] = [];
for (let r = 0; r < REPS; r++) {
  stream.synchronize();
  e0.record(stream);
  await once();
  e1.record(stream);
  e1.synchronize();
  ms.push(e0.elapsedMs(e1));
}
const row = {
  N,
  H,
  Hkv,
  D,
  P,
  rank,
  schedule: schedArg,
  kernel: backend.name,
  attnKernels: BACKEND === "cuda" ? cudaAttentionKernels(0, kernels) : undefined,
  nocomm_ms: median(ms),
};
console.log(JSON.stringify(row));
if (outPath) await Bun.write(outPath, `${JSON.stringify({ results: [row] }, null, 2)}\n`);
for (const x of [q, k, v, dO, e0, e1]) x.dispose();
