// The demonstration of what exists today (until apps/trainer lands): sequence-parallel attention
// (DistAttn) over several local ranks, every schedule, forward and backward, checked against attention
// over the whole sequence. With two or more GPUs and no more ranks than GPUs, one rank per GPU over
// NCCL; otherwise (no GPU, one GPU, or more ranks than GPUs) CPU processes over the CPU communicator
// with the reference kernels, and a line saying why. Never more GPU ranks than GPUs: NCCL refuses two
// ranks on one device.
//   bun run demo [ranks]

import { availableParallelism, freemem } from "node:os";
import { launch, readCommEnv } from "@lightseq/comm";
import { cliErrors, deviceInfo, probeGpus, UserError } from "@lightseq/cuda";
import { demoPlan } from "./plan.ts";

cliErrors("demo");
const gpus = probeGpus();
const plan = demoPlan({
  arg: process.argv[2],
  gpus: gpus.count,
  gpuName: gpus.count > 0 ? deviceInfo(0).name : "",
  noGpuReason: gpus.reason,
  cores: availableParallelism(),
  freeBytes: freemem(),
});
if ("error" in plan) throw new UserError(plan.error);
readCommEnv(); // a bad LIGHTSEQ_* value, said once here rather than by every rank
console.log(plan.line);
const r = await launch({ nprocs: plan.ranks, script: new URL("./rank.ts", import.meta.url).pathname, args: [plan.backend] });
if (r.exitCode !== 0) {
  console.error(`demo failed: ${r.failure}`);
  process.exit(r.exitCode);
}
console.log(`demo: all ranks agree with single-rank attention (${(r.elapsedMs / 1000).toFixed(1)} s)`);
