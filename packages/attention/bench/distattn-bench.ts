// DistAttn on GPUs (issue 5): forward+backward time per schedule and mode at total T, H = 32, D = 128,
// causal, bf16, MHA and GQA; speedup over one GPU on the whole sequence (our kernel) and over the
// ideal; measured traffic against the schedule's analytic count; plus a bf16 equality check against
// one-GPU attention. Self-launching: run it plainly and it starts one rank per GPU over NCCL.
//   bun packages/attention/bench/distattn-bench.ts out.json [T1,T2,...] [Hkv1,Hkv2] [schedules] [modes]
// Environment: BENCH_BACKEND (cuda: our kernel, the default; cudnn), BENCH_REPS (3), BENCH_EQUALITY
// (run|only|skip), BENCH_ALL_MODES_HKV (the Hkv values, comma list, that run every mode; the others
// run overlap only; default 32; 0 for none), BENCH_NO_BASELINE=1 (no one-GPU run),
// BENCH_COMM_PRIORITY (high, the default, or default: the priority of DistAttn's comm stream),
// BENCH_PHASE (both, the default; fwd or bwd: time that pass alone, the backward from a forward run
// outside the timing; the one-GPU baseline always times both). Each row records the comm priority,
// the phase and any NCCL_* / LIGHTSEQ_P2P* variables set.

import { renameSync } from "node:fs";
import { type Communicator, initCommunicator, launch } from "@lightseq/comm";
import { cliErrors, Event, probeGpus, UserError } from "@lightseq/cuda";
import { median } from "@lightseq/cuda/bench/timing";
import * as T from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { versioned } from "../../../bench/schema.ts";
import type { AttentionBackend } from "../src/block.ts";
import { attentionCost } from "../src/block.ts";
import { createCudaBackend, cudaAttentionKernels } from "../src/cuda.ts";
import { cudnnBackend } from "../src/cudnn/index.ts";
import { type DistMode, distAttnBackward, distAttnForward } from "../src/distattn.ts";
import { attentionEnv } from "../src/env.ts";
import { gatherRows, localRanges, placeSequence } from "../src/placement.ts";
import { checkSchedule, makeSchedule, SCHEDULES, type Schedule, type ScheduleName } from "../src/schedule.ts";
import { noCommCommunicator } from "./nocomm.ts";

cliErrors("distattn-bench");
const [outPath = "", tsArg = "65536,131072,262144", hkvArg = "32,8", schedArg = SCHEDULES.join(","), modeArg = "overlap,sync,nocomm"] =
  process.argv.slice(2);

/** The modes a row times: DistAttn's own (overlap, sync) and "nocomm" (nocomm.ts: no communication). */
const MODES = ["overlap", "sync", "nocomm"] as const;
type BenchMode = (typeof MODES)[number];
const modes = modeArg.split(",").map((m) => {
  if (!MODES.includes(m as BenchMode)) throw new Error(`modes: expected a comma list of ${MODES.join(", ")}, got "${m}"`);
  return m as BenchMode;
});

/** Checked before any rank starts, so a typo stops the launcher rather than every rank. */
function envChoice<C extends string>(name: string, choices: readonly C[], fallback: C): C {
  const v = process.env[name] || fallback;
  if (!choices.includes(v as C)) throw new UserError(`${name}: expected one of ${choices.join(", ")}, got "${v}"`);
  return v as C;
}
/** Block kernels: "cuda" (ours) or "cudnn". */
const BACKEND = envChoice("BENCH_BACKEND", ["cuda", "cudnn"], "cuda");
/** Which of our kernel sets the cuda backend runs (LIGHTSEQ_ATTN_KERNEL: auto | mma | wgmma). */
const { kernels: KERNELS } = attentionEnv();
/** "run" (default), "only" (equality check, no timing) or "skip". */
const EQUALITY = envChoice("BENCH_EQUALITY", ["run", "only", "skip"], "run");
/** Priority of DistAttn's comm stream (PyTorch gives NCCL "high"; the default is what BENCHMARKS.md measured). */
const COMM_PRIORITY = envChoice("BENCH_COMM_PRIORITY", ["default", "high"], "high");
/** Which pass the DistAttn rows time. */
const PHASE = envChoice("BENCH_PHASE", ["both", "fwd", "bwd"], "both");
/** Hkv values that run every mode; the others run overlap only (each mode is a full fwd+bwd per repetition). */
const ALL_MODES_HKV = (process.env.BENCH_ALL_MODES_HKV ?? "32").split(",").map((x) => {
  const v = Number(x);
  if (x === "" || !Number.isInteger(v) || v < 0)
    throw new UserError(`BENCH_ALL_MODES_HKV: expected a comma list of head counts (0 for none), got "${process.env.BENCH_ALL_MODES_HKV}"`);
  return v;
});
/** NCCL_* variables other than the always-set multicast switch, recorded with each row. */
// The communication settings a row ran with: NCCL's variables and our send/recv transport (LIGHTSEQ_P2P*).
const NCCL_ENV = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => (k.startsWith("NCCL_") && k !== "NCCL_NVLS_ENABLE") || k.startsWith("LIGHTSEQ_P2P")),
);

if (process.env.RANK === undefined) {
  const gpus = probeGpus().count;
  if (gpus < 2) throw new UserError(`needs at least 2 GPUs, found ${gpus}: ${probeGpus().reason}`);
  const r = await launch({ nprocs: gpus, script: import.meta.path, args: process.argv.slice(2) });
  process.exit(r.exitCode);
}

const comm: Communicator = await initCommunicator({ backend: "nccl" });
const noComm = noCommCommunicator(comm);
const P = comm.size;
const dev = "cuda:0";
const stream = T.currentStream(0);
const H = 32;
const REPS = Number(process.env.BENCH_REPS ?? 3);
const backend: AttentionBackend = BACKEND === "cudnn" ? cudnnBackend : createCudaBackend({ kernels: KERNELS });
/** Which of our kernels run (wgmma on H100/H200 unless LIGHTSEQ_ATTN_KERNEL says otherwise), recorded per row. */
const ATTN_KERNELS = BACKEND === "cuda" ? cudaAttentionKernels(0, KERNELS) : undefined;
const D = 128;
const say = (m: string) => {
  if (comm.rank === 0) console.log(m);
};
say(`block kernels: ${backend.name}${ATTN_KERNELS ? ` (${ATTN_KERNELS})` : ""}, comm stream priority ${COMM_PRIORITY}`);

async function maxOverRanks(x: number): Promise<number> {
  const t = T.fromArray([x], [1], { device: dev });
  await comm.allReduce(t, "max");
  const v = T.item(t);
  t.dispose();
  return v;
}

/** Median over reps of the slowest rank's time (ms) of `fn` on the compute stream. */
async function timeMs(fn: () => Promise<void>, reps = REPS, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const e0 = Event.create(0, { timing: true });
  const e1 = Event.create(0, { timing: true });
  const out: number[] = [];
  for (let r = 0; r < reps; r++) {
    stream.synchronize();
    await comm.barrier();
    e0.record(stream);
    await fn();
    e1.record(stream);
    e1.synchronize();
    out.push(await maxOverRanks(e0.elapsedMs(e1)));
  }
  e0.dispose();
  e1.dispose();
  return median(out);
}

/** Chunk-sized tensors of each payload one rank sends, from the schedule (the analytic count), in bytes. */
function analyticBytes(s: Schedule, N: number, Hkv: number, rank: number): { fwd: number; bwd: number } {
  const p = placeSequence(s, N);
  const per = (payload: string, n: number): number => {
    const row = {
      kv: 2 * Hkv * D * 2,
      q: H * D * 2,
      out: H * D * 4 + H * 4,
      qbwd: 3 * H * D * 2 + H * 4,
      dq: H * D * 4,
      dkv: 2 * Hkv * D * 4,
    }[payload] as number;
    return row * n;
  };
  const count = (steps: Schedule["forward"]) =>
    steps.reduce(
      (a, st) => a + st.transfers.filter((x) => x.from === rank).reduce((b, x) => b + per(x.payload, p.len[x.chunk] as number), 0),
      0,
    );
  return { fwd: count(s.forward), bwd: count(s.backward) };
}

const results: Record<string, unknown>[] = [];
/**
 * Rank 0 rewrites the JSON after every row (through a temporary file and a rename), so a run cut
 * short by a device time limit still leaves the rows it finished.
 */
async function save(): Promise<void> {
  if (comm.rank !== 0 || !outPath) return;
  await Bun.write(`${outPath}.tmp`, JSON.stringify(versioned({ P, results }), null, 2));
  renameSync(`${outPath}.tmp`, outPath);
}
const Ts = tsArg.split(",").map(Number);
for (const Hkv of EQUALITY === "only" ? [] : hkvArg.split(",").map(Number)) {
  for (const N of Ts) {
    const cost = attentionCost({ Tq: N, Tk: N, Hq: H, D, causal: true }, "forward+backward").flops;
    // One GPU on the whole sequence (rank 0), as the speedup baseline.
    let oneGpuMs = Number.NaN;
    if (comm.rank === 0 && process.env.BENCH_NO_BASELINE !== "1") {
      try {
        const q = T.randn([N, H, D], { seed: 1, dtype: "bf16", device: dev });
        const k = T.randn([N, Hkv, D], { seed: 2, dtype: "bf16", device: dev });
        const v = T.randn([N, Hkv, D], { seed: 3, dtype: "bf16", device: dev });
        const dO = T.randn([N, H, D], { seed: 4, dtype: "bf16", device: dev });
        const e0 = Event.create(0, { timing: true });
        const e1 = Event.create(0, { timing: true });
        const ts: number[] = [];
        for (let r = 0; r < REPS + 1; r++) {
          e0.record(stream);
          const f = backend.forward(q, k, v, { causal: true });
          const g = backend.backward(q, k, v, f.o, f.lse, dO, { causal: true });
          e1.record(stream);
          e1.synchronize();
          if (r >= 1) ts.push(e0.elapsedMs(e1));
          for (const x of [f.o, f.lse, g.dq, g.dk, g.dv]) x.dispose();
        }
        oneGpuMs = median(ts);
        for (const x of [q, k, v, dO, e0, e1]) x.dispose();
      } catch (e) {
        console.log(`one GPU at T=${N}: ${(e as Error).message.split("\n")[0]}`);
      }
    }
    oneGpuMs = await maxOverRanks(Number.isNaN(oneGpuMs) ? -1 : oneGpuMs);
    for (const name of schedArg.split(",") as ScheduleName[]) {
      const s = makeSchedule(name, P);
      const p = placeSequence(s, N);
      const n = p.localLen[comm.rank] as number;
      const seed = 100 + comm.rank;
      const q = T.randn([n, H, D], { seed, dtype: "bf16", device: dev });
      const k = T.randn([n, Hkv, D], { seed: seed + 10, dtype: "bf16", device: dev });
      const v = T.randn([n, Hkv, D], { seed: seed + 20, dtype: "bf16", device: dev });
      const dO = T.randn([n, H, D], { seed: seed + 30, dtype: "bf16", device: dev });
      const row: Record<string, unknown> = {
        N,
        H,
        Hkv,
        D,
        P,
        schedule: name,
        kernel: backend.name,
        attnKernels: ATTN_KERNELS,
        oneGpuMs,
        commPriority: COMM_PRIORITY,
        ncclEnv: NCCL_ENV,
        ...(PHASE === "both" ? {} : { phase: PHASE }),
      };
      for (const mode of modes) {
        if (mode !== "overlap" && !ALL_MODES_HKV.includes(Hkv)) continue;
        const run: { comm: Communicator; mode: DistMode } = mode === "nocomm" ? { comm: noComm, mode: "overlap" } : { comm, mode };
        const opts = { schedule: s, N, backend, commPriority: COMM_PRIORITY, ...run };
        let traffic = { fwd: 0, bwd: 0 };
        // BENCH_PHASE=bwd: one forward, outside the timing, feeds every timed backward.
        const f0 = PHASE === "bwd" ? await distAttnForward(q, k, v, opts) : null;
        const ms = await timeMs(async () => {
          const f = f0 ?? (await distAttnForward(q, k, v, opts));
          const g = PHASE === "fwd" ? null : await distAttnBackward(q, k, v, f, dO, opts);
          traffic = { fwd: f0 ? 0 : f.traffic.sentBytes, bwd: g ? g.traffic.sentBytes : 0 };
          if (!f0) for (const x of [f.o, ...f.lse]) x.dispose();
          if (g) for (const x of [g.dq, g.dk, g.dv]) x.dispose();
        });
        if (f0) for (const x of [f0.o, ...f0.lse]) x.dispose();
        row[`${mode}_ms`] = ms;
        row[`${mode}_tflops_per_gpu`] = cost / (ms * 1e-3) / 1e12 / P;
        if (mode === "overlap") {
          row.sent_bytes_rank0 = traffic;
          row.analytic_bytes_rank0 = analyticBytes(s, N, Hkv, 0);
        }
      }
      // The ideal is P (perfect scaling); the schedule's own bound (its critical path with free
      // communication) is below P for ring and, for even P, lightseq.
      row.schedule_bound = checkSchedule(s).idealSpeedup;
      if (oneGpuMs > 0 && PHASE === "both") {
        row.speedup = oneGpuMs / (row.overlap_ms as number);
        row.fraction_of_ideal = (row.speedup as number) / P;
      }
      for (const x of [q, k, v, dO]) x.dispose();
      results.push(row);
      say(JSON.stringify(row));
      await save();
    }
  }
}

// Equality with one-GPU attention in bf16 (T = 8192, every schedule, MHA and GQA).
for (const Hkv of EQUALITY === "skip" ? [] : [H, 8]) {
  const N = 8192 + 37;
  const g = {
    q: T.randn([N, H, D], { seed: 7, dtype: "bf16" }),
    k: T.randn([N, Hkv, D], { seed: 8, dtype: "bf16" }),
    v: T.randn([N, Hkv, D], { seed: 9, dtype: "bf16" }),
    dO: T.randn([N, H, D], { seed: 10, dtype: "bf16" }),
  };
  const gd = { q: T.to(g.q, dev), k: T.to(g.k, dev), v: T.to(g.v, dev), dO: T.to(g.dO, dev) };
  const ref = backend.forward(gd.q, gd.k, gd.v, { causal: true });
  const refG = backend.backward(gd.q, gd.k, gd.v, ref.o, ref.lse, gd.dO, { causal: true });
  const host = { o: T.to(ref.o, "cpu"), dq: T.to(refG.dq, "cpu"), dk: T.to(refG.dk, "cpu"), dv: T.to(refG.dv, "cpu") };
  for (const name of schedArg.split(",") as ScheduleName[]) {
    const s = makeSchedule(name, P);
    const ranges = localRanges(s, placeSequence(s, N), comm.rank);
    const take = (t: T.Tensor): T.Tensor => gatherRows(t, ranges);
    const opts = { schedule: s, N, comm, backend, commPriority: COMM_PRIORITY };
    const lq = T.to(take(g.q), dev);
    const lk = T.to(take(g.k), dev);
    const lv = T.to(take(g.v), dev);
    const ldO = T.to(take(g.dO), dev);
    const f = await distAttnForward(lq, lk, lv, opts);
    const b = await distAttnBackward(lq, lk, lv, f, ldO, opts);
    const errs: Record<string, number> = {};
    for (const [label, got, want] of [
      ["o", f.o, host.o],
      ["dq", b.dq, host.dq],
      ["dk", b.dk, host.dk],
      ["dv", b.dv, host.dv],
    ] as const) {
      errs[label] = compareClose(got, take(want), { rtol: 1, atol: 1 }).relativeError;
    }
    const worst = await maxOverRanks(Math.max(...Object.values(errs)));
    say(JSON.stringify({ check: "bf16 equality vs one GPU", N, Hkv, schedule: name, worstRelErr: worst, ok: worst <= 1e-2 }));
    results.push({
      check: "equality",
      N,
      Hkv,
      schedule: name,
      kernel: backend.name,
      attnKernels: ATTN_KERNELS,
      commPriority: COMM_PRIORITY,
      worstRelErr: worst,
    });
    await save();
  }
}

await save();
await comm.destroy();
