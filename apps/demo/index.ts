// The demonstration of what exists today (until apps/trainer lands): sequence-parallel attention
// (DistAttn) over several local ranks, every schedule, forward and backward, checked against attention
// over the whole sequence. Without a GPU the ranks are CPU processes talking over the CPU communicator;
// with two or more GPUs, one rank per GPU over NCCL.
//   bun run demo [ranks]

import { launch } from "@lightseq/comm";
import { deviceInfo, probeGpus } from "@lightseq/cuda";

const gpus = probeGpus();
const ranks = Number(process.argv[2] ?? (gpus.count >= 2 ? gpus.count : 4));
if (!Number.isInteger(ranks) || ranks < 1) throw new Error(`ranks: expected a positive integer, got ${process.argv[2]}`);
console.log(
  gpus.count > 0
    ? `GPU: ${gpus.count} x ${deviceInfo(0).name}`
    : `no GPU (${gpus.reason.split(":")[0]}): ${ranks} CPU ranks, reference kernels`,
);
const r = await launch({ nprocs: ranks, script: new URL("./rank.ts", import.meta.url).pathname });
if (r.exitCode !== 0) {
  console.error(`demo failed: ${r.failure}`);
  process.exit(r.exitCode);
}
console.log(`demo: all ranks agree with single-rank attention (${(r.elapsedMs / 1000).toFixed(1)} s)`);
