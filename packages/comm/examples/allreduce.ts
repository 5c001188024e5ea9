// Two ranks sum a tensor with all-reduce. This file is both the launcher (started without RANK in its
// environment, it starts itself twice through launch(), like torchrun) and the rank. The CPU backend
// connects the ranks over local sockets; `nccl` puts each rank on its own GPU (needs 2 GPUs).
//   bun allreduce.ts [cpu|nccl]
import { initCommunicator, launch } from "@lightseq/comm";
import * as T from "@lightseq/tensor";

const backend = process.argv[2] === "nccl" ? "nccl" : "cpu";
if (process.env.RANK === undefined) {
  const job = await launch({ nprocs: 2, script: import.meta.path, args: [backend] });
  process.exit(job.exitCode);
}

const comm = await initCommunicator({ backend });
const x = T.full([4], comm.rank + 1, { device: comm.device }); // rank 0 holds 1s, rank 1 holds 2s
await comm.allReduce(x, "sum");
const got = T.toFloat32Array(x);
if (!got.every((v) => v === 3)) throw new Error(`rank ${comm.rank}: expected 3s, got ${got.join(", ")}`);
console.log(
  `rank ${comm.rank} of ${comm.size} (${comm.backend} backend, on ${T.deviceName(comm.device)}): all-reduce sum = ${got.join(", ")}`,
);
await comm.destroy();
