// Our NCCL declarations against a stand-in library with nccl.h's signatures (fixtures/mock-nccl.c,
// compiled here with the system C compiler): argument order, 64-bit counts, pointers, the 128-byte
// unique id by pointer, NULL config, the error text. Catches a wrong table without a GPU; the real
// library is exercised by nccl.test.ts on GPU machines.

import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FIXTURES } from "./testing.ts";

const cc = Bun.which("cc") ?? Bun.which("gcc");

function runAgainstMock(extraEnv: Record<string, string> = {}): Record<string, unknown> {
  const dir = mkdtempSync(join(tmpdir(), "lightseq-mock-nccl-"));
  try {
    const so = join(dir, "libnccl.so.2");
    const build = Bun.spawnSync([cc as string, "-shared", "-fPIC", "-O1", "-o", so, join(FIXTURES, "mock-nccl.c")], { stderr: "pipe" });
    if (build.exitCode !== 0) throw new Error(`cc failed: ${build.stderr.toString()}`);
    // A process of its own: nccl() keeps the first library it loads.
    const r = Bun.spawnSync([process.execPath, join(FIXTURES, "nccl-ffi-worker.ts")], {
      env: { ...process.env, LIGHTSEQ_NCCL_SO: so, ...extraEnv },
      stderr: "pipe",
    });
    if (r.exitCode !== 0) throw new Error(`worker failed: ${r.stderr.toString()}`);
    return JSON.parse(r.stdout.toString());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test.skipIf(!cc)("the NCCL table passes every argument as nccl.h declares it", () => {
  const seen = runAgainstMock();
  expect(seen).toEqual({
    version: "2.27.3",
    id: [1, 4, 7, 10],
    init: "init nranks=8 rank=5 nId=1 id=ok cfg=(nil)",
    comm: "7f00deadbeef",
    allReduce: "allreduce 0x1000 0x2000 n=1099511627779 dt=9 op=4 comm=0x7f00deadbeef stream=0x3000",
    send: "send buf=0x1000 n=1001 dt=7 peer=3 comm=0x7f00deadbeef stream=0x3000",
    recv: "recv buf=0x1000 n=1001 dt=2 peer=0 comm=0x7f00deadbeef stream=0x3000",
    allGather: "allgather 0x1000 0x2000 n=17 dt=2 comm=0x7f00deadbeef stream=0x3000",
    reduceScatter: "reducescatter 0x1000 0x2000 n=17 dt=9 op=2 comm=0x7f00deadbeef stream=0x3000",
    broadcast: "broadcast 0x1000 0x1000 n=17 dt=7 root=1 comm=0x7f00deadbeef stream=0x3000",
    split: "split comm=0x7f00deadbeef color=-1 key=4 cfg=(nil) -> 0",
    asyncError: 7,
    error:
      "NcclError: ncclAllReduce failed: ncclInvalidArgument (4): invalid argument (run with NCCL_DEBUG=WARN for details); " +
      "last error: allreduce 0x1000 0x2000 n=12345 dt=7 op=0 comm=0x7f00deadbeef stream=0x3000 [Tensor([12345], f32, cuda:0)]",
  });
});

test.skipIf(!cc)("an NCCL older than 2.23 is refused with its version and path", () => {
  const seen = runAgainstMock({ MOCK_NCCL_VERSION: "21805" });
  expect(seen.loadError).toMatch(/^NCCL 2\.18\.5 at .*libnccl\.so\.2 is too old: need >= 2\.23\.0 \(ncclCommInitRankScalable\)/);
});
