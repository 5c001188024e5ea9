// One rank of the demo: DistAttn forward + backward over a sequence split across the ranks, for every
// schedule, checked against attention over the whole sequence on one rank. CPU ranks use the reference
// kernels over the CPU communicator; GPU ranks the auto-selected block kernels over NCCL.
//   bun rank.ts cpu|nccl   (under the launcher; index.ts decides which, plan.ts says why)

import {
  checkSchedule,
  distAttnBackward,
  distAttnForward,
  gatherRows,
  localRanges,
  makeSchedule,
  placeSequence,
  SCHEDULES,
  selectAttentionBackend,
} from "@lightseq/attention";
import { initCommunicator } from "@lightseq/comm";
import { cliErrors, fmtBytes, UserError } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import { compareClose } from "@lightseq/tensor/testing";
import { CPU_TOKENS } from "./plan.ts";

cliErrors("demo rank");
const choice = process.argv[2];
if (choice !== "cpu" && choice !== "nccl")
  throw new UserError(`backend: expected cpu or nccl, got ${JSON.stringify(choice)} (run \`bun run demo\`)`);
const comm = await initCommunicator({ backend: choice });
const gpu = comm.backend === "nccl";
const device = gpu ? "cuda:0" : "cpu";
const dtype = gpu ? "bf16" : "f32";
const [N, Hq, Hkv, D] = gpu ? [8192 + 37, 32, 8, 128] : [CPU_TOKENS, 4, 2, 16];
const { backend, reason } = selectAttentionBackend("auto", device);
const say = (m: string) => comm.rank === 0 && console.log(m);
say(reason);
say(
  `DistAttn over ${comm.size} ${gpu ? "GPUs (NCCL)" : "CPU processes"}: N=${N} tokens, ${Hq} query heads, ${Hkv} K/V heads, D=${D}, ${dtype}, causal`,
);

// The whole sequence, the same on every rank (seeded), and the oracle: attention on one rank.
const whole = {
  q: T.randn([N, Hq, D], { seed: 1, dtype }),
  k: T.randn([N, Hkv, D], { seed: 2, dtype }),
  v: T.randn([N, Hkv, D], { seed: 3, dtype }),
  dO: T.randn([N, Hq, D], { seed: 4, dtype }),
};
// The oracle runs the same block kernel on the whole sequence.
const oracleOn = backend;
const dev = (t: T.Tensor) => (gpu ? T.to(t, device) : t.view());
const wq = dev(whole.q);
const wk = dev(whole.k);
const wv = dev(whole.v);
const wdO = dev(whole.dO);
const ref = oracleOn.forward(wq, wk, wv, { causal: true });
const refG = oracleOn.backward(wq, wk, wv, ref.o, ref.lse, wdO, { causal: true });
const host = { o: T.to(ref.o, "cpu"), dq: T.to(refG.dq, "cpu"), dk: T.to(refG.dk, "cpu"), dv: T.to(refG.dv, "cpu") };

let ok = true;
for (const name of SCHEDULES) {
  const s = makeSchedule(name, comm.size);
  const ranges = localRanges(s, placeSequence(s, N), comm.rank);
  const [q, k, v, dO] = [whole.q, whole.k, whole.v, whole.dO].map((t) => dev(gatherRows(t, ranges))) as [
    T.Tensor,
    T.Tensor,
    T.Tensor,
    T.Tensor,
  ];
  const t0 = performance.now();
  const opts = { schedule: s, N, comm, backend };
  const f = await distAttnForward(q, k, v, opts);
  const g = await distAttnBackward(q, k, v, f, dO, opts);
  const errs = [
    compareClose(f.o, gatherRows(host.o, ranges), { rtol: 1, atol: 1 }).relativeError,
    compareClose(g.dq, gatherRows(host.dq, ranges), { rtol: 1, atol: 1 }).relativeError,
    compareClose(g.dk, gatherRows(host.dk, ranges), { rtol: 1, atol: 1 }).relativeError,
    compareClose(g.dv, gatherRows(host.dv, ranges), { rtol: 1, atol: 1 }).relativeError,
  ];
  const ms = performance.now() - t0;
  const worst = Math.max(...errs);
  const limit = dtype === "f32" ? 1e-5 : 1e-2;
  const mine = worst <= limit;
  ok &&= mine;
  const report = checkSchedule(s);
  console.log(
    `${name.padEnd(8)} steps ${String(report.computeSteps).padStart(2)}  chunks ${JSON.stringify(s.chunksOf[comm.rank])}  ` +
      `sent ${fmtBytes(f.traffic.sentBytes + g.traffic.sentBytes).padStart(10)}  ${ms.toFixed(0).padStart(5)} ms  max rel err ${worst.toExponential(2)} ${mine ? "ok" : "MISMATCH"}`,
  );
  for (const t of [q, k, v, dO, f.o, ...f.lse, g.dq, g.dk, g.dv]) t.dispose();
  await comm.barrier();
  say(
    `${name}: ideal speedup of the schedule ${report.idealSpeedup.toFixed(2)}x on ${comm.size} ranks (balance ${(100 * report.balance).toFixed(0)}%)`,
  );
}
await comm.destroy();
process.exit(ok ? 0 : 1);
