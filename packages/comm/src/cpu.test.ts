// The CPU backend's own behaviour, with all ranks in this process (one Mesh each, over real
// sockets): mismatched calls, timeouts, abort, destroy, groups. The cross-backend semantics are
// in the conformance suite.

import { expect, test } from "bun:test";
import { fromArray, toFloat32Array, zeros } from "@lightseq/tensor";
import { CommError } from "./communicator.ts";
import { CpuCommunicator } from "./cpu.ts";
import { Mesh } from "./mesh.ts";

let sessions = 0;

/** `size` communicators, one per rank, connected in this process. */
async function localRanks(size: number, timeoutMs = 5_000, transport: "unix" | "tcp" = "unix"): Promise<CpuCommunicator[]> {
  const session = `cpu-test-${process.pid}-${sessions++}`;
  const meshes = Array.from({ length: size }, (_, rank) => new Mesh({ rank, size, session, transport }));
  const addresses = meshes.map((m) => m.listen());
  await Promise.all(meshes.map((m, rank) => m.connect(addresses.slice(0, rank), 2_000)));
  const world = Array.from({ length: size }, (_, r) => r);
  return meshes.map((m, rank) => new CpuCommunicator(m, 0, world, rank, { timeoutMs }));
}

async function settle(ps: Promise<unknown>[]): Promise<(unknown | Error)[]> {
  return (await Promise.allSettled(ps)).map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error)));
}

test("both transports carry a ring exchange (abstract Unix sockets by default, loopback TCP on request)", async () => {
  for (const transport of ["unix", "tcp"] as const) {
    const comms = await localRanks(3, 5_000, transport);
    const got = comms.map(() => zeros([5]));
    await Promise.all(
      comms.map((c, r) =>
        c.group(() => {
          void c.send(fromArray([r, r, r, r, r], [5]), (r + 1) % 3);
          void c.recv(got[r]!, (r + 2) % 3);
        }),
      ),
    );
    expect(got.map((t) => toFloat32Array(t)[0])).toEqual([2, 0, 1]);
    await Promise.all(comms.map((c) => c.destroy()));
  }
});

test("different operations on two ranks fail on both with 'mismatched call', naming both operations", async () => {
  const [a, b] = await localRanks(2);
  const results = await settle([a!.allReduce(zeros([4]), "sum"), b!.allGather(zeros([4]), zeros([8]))]);
  expect(results[0]).toBeInstanceOf(CommError);
  expect((results[0] as Error).message).toMatch(
    /^allReduce: mismatched call from rank 1: it sent allGather data .* where this rank expected allReduce/,
  );
  expect((results[1] as Error).message).toMatch(/^allGather: mismatched call from rank 0: it sent allReduce data/);
  // The communicator is broken from then on: later calls fail fast with the cause.
  await expect(a!.barrier()).rejects.toThrow(/^barrier: the communicator is broken: .*mismatched call/);
  a!.abort();
  b!.abort();
});

test("a send and a recv of different sizes fail with both sizes", async () => {
  const [a, b] = await localRanks(2);
  const results = await settle([a!.send(zeros([10]), 1), b!.recv(zeros([12]), 0)]);
  expect((results[1] as Error).message).toMatch(
    /^recv from rank 0: mismatched call from rank 0: it sent p2p data \(f32, 40 bytes\) where this rank expected p2p \(f32, 48 bytes\)/,
  );
  a!.abort();
  b!.abort();
});

test("a collective one rank never joins times out naming the operation, the missing rank and the time", async () => {
  const comms = await localRanks(3, 300);
  const start = performance.now();
  const results = await settle([comms[0]!.allReduce(zeros([8]), "sum"), comms[1]!.allReduce(zeros([8]), "sum")]);
  expect(performance.now() - start).toBeLessThan(2_000);
  // The first rank to time out tells the other, which may then report that rank's reason ("rank 0
  // gave up: timed out ...") before its own timer fires: both name the operation, rank 2 and the time.
  for (const r of results)
    expect((r as Error).message).toMatch(
      /^allReduce: (rank [01] gave up: )?timed out after 0\.3\d s waiting for rank 2 \(timeout 0\.30 s, LIGHTSEQ_COMM_TIMEOUT_MS\)/,
    );
  const own = results.filter((r) => !(r as Error).message.includes("gave up")) as CommError[];
  expect(own.length).toBeGreaterThan(0);
  for (const e of own) expect(e.peers).toEqual([2]);
  for (const c of comms) c.abort();
});

test("abort on one rank makes a peer waiting on it fail at once, with the reason", async () => {
  const [a, b] = await localRanks(2, 30_000);
  const waiting = b!.recv(zeros([3]), 0);
  await Bun.sleep(10);
  const start = performance.now();
  a!.abort("test");
  await expect(waiting).rejects.toThrow(/^recv from rank 0: rank 0 gave up: rank 0 aborted the communicator: test/);
  expect(performance.now() - start).toBeLessThan(1_000);
  await expect(a!.barrier()).rejects.toThrow(/the communicator is broken: rank 0 aborted the communicator: test/);
  b!.abort();
});

test("destroy is graceful: the others go on among themselves, and only waiting on the departed rank fails", async () => {
  const [a, b, c] = await localRanks(3, 30_000);
  const x = fromArray([1, 2, 3], [3]);
  await Promise.all([a!.send(x, 1), b!.recv(zeros([3]), 0)]);
  await a!.destroy();
  const y = zeros([3]);
  await Promise.all([b!.send(x, 2), c!.recv(y, 1)]);
  expect(Array.from(toFloat32Array(y))).toEqual([1, 2, 3]);
  await expect(b!.recv(zeros([3]), 0)).rejects.toThrow(/rank 0 destroyed its communicator/);
  await expect(a!.barrier()).rejects.toThrow(/^barrier: the communicator was destroyed/);
  b!.abort();
  c!.abort();
});

test("a group callback must be synchronous", async () => {
  const [a] = await localRanks(1);
  await expect(a!.group((async () => {}) as () => void)).rejects.toThrow(/group: the callback must be synchronous/);
  await a!.destroy();
});

test("several sends to one peer in a group arrive in posting order", async () => {
  const [a, b] = await localRanks(2);
  const got = [zeros([2]), zeros([2]), zeros([2])];
  await Promise.all([
    a!.group(() => {
      for (let i = 0; i < 3; i++) void a!.send(fromArray([i, i], [2]), 1);
    }),
    b!.group(() => {
      for (const t of got) void b!.recv(t, 0);
    }),
  ]);
  expect(got.map((t) => toFloat32Array(t)[0])).toEqual([0, 1, 2]);
  await Promise.all([a!.destroy(), b!.destroy()]);
});

test("bf16 sums accumulate in f32 in rank order and round once", async () => {
  // 256 + 1 + 1: bf16 after every addition would give 256 (256 + 1 rounds to 256 twice);
  // one rounding of the exact f32 sum 258 gives 258.
  const comms = await localRanks(3);
  const ts = [256, 1, 1].map((v) => fromArray([v], [1], { dtype: "bf16" }));
  await Promise.all(comms.map((c, r) => c.allReduce(ts[r]!, "sum")));
  expect(ts.map((t) => toFloat32Array(t)[0])).toEqual([258, 258, 258]);
  await Promise.all(comms.map((c) => c.destroy()));
});
