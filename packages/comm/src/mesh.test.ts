// The CPU mesh's frames under bad input: a stranger's connection gets only a small hello, and a
// peer's header that disagrees with the posted receive or is absurd fails the mesh naming the peer,
// before anything of its declared size is allocated. A fake rank 1 (raw bytes on a socket) plays
// the peer; the seeded fuzz test of the same is in wire-fuzz.test.ts.

import { expect, test } from "bun:test";
import { meshHeader, meshHello, meshTarget, RawConn } from "./fixtures/raw-wire.ts";
import { Mesh, MeshFailure, type Transport } from "./mesh.ts";
import { DTYPE_CODE, FrameKind } from "./mesh-wire.ts";

let sessions = 0;
const GiB = 2 ** 30;

/** Rank 0 of 2, connected to a fake rank 1 that has said a proper hello. */
async function withFakePeer(transport: Transport = "unix"): Promise<{ mesh: Mesh; fake: RawConn }> {
  const session = `mesh-test-${process.pid}-${sessions++}`;
  const mesh = new Mesh({ rank: 0, size: 2, session, transport });
  const connected = mesh.connect([], 2_000);
  const fake = await RawConn.open(meshTarget(mesh.listen()));
  if (!fake) throw new Error("rank 0 is not listening");
  fake.send(meshHello(1, 2, session));
  await connected;
  return { mesh, fake };
}

async function failureWithin(mesh: Mesh, ms: number): Promise<MeshFailure | null> {
  for (let t = 0; t < ms && mesh.failure === null; t += 5) await Bun.sleep(5);
  return mesh.failure;
}

test("a stranger's first frame must be a small hello: anything else closes its connection at once, and the mesh still forms", async () => {
  for (const transport of ["unix", "tcp"] as const) {
    const session = `mesh-test-${process.pid}-${sessions++}`;
    const meshes = [0, 1].map((rank) => new Mesh({ rank, size: 2, session, transport }));
    const address = meshes[0]!.listen();
    meshes[1]!.listen();
    const strangers: [string, Uint8Array][] = [
      ["a hello declaring 1 GiB", meshHeader(GiB, 0, FrameKind.hello, 0)],
      ["a p2p frame first", meshHeader(100, 0, FrameKind.p2p, DTYPE_CODE.f32)],
      ["a hello of another session", meshHello(1, 2, "another job")],
    ];
    const conns: [string, RawConn][] = [];
    for (const [what, bytes] of strangers) {
      const c = await RawConn.open(meshTarget(address));
      c!.send(bytes);
      conns.push([what, c!]);
    }
    for (const [what, c] of conns) {
      await c.until(() => c.isClosed, 1_000);
      expect(c.isClosed, `${transport}: ${what}`).toBe(true);
    }
    await Promise.all([meshes[0]!.connect([], 2_000), meshes[1]!.connect([address], 2_000)]);
    const got = meshes[0]!.recv(1, 0, { kind: FrameKind.p2p, dtype: DTYPE_CODE.i32, bytes: 8 });
    await meshes[1]!.send(0, 0, FrameKind.p2p, DTYPE_CODE.i32, new Uint8Array(new Int32Array([7, 8]).buffer));
    expect(Array.from(new Int32Array((await got).payload.slice().buffer))).toEqual([7, 8]);
    for (const m of meshes) {
      m.retain();
      await m.release();
    }
  }
});

test("a header that disagrees with the posted receive fails the mesh at once, naming the peer, before its payload comes", async () => {
  const { mesh, fake } = await withFakePeer();
  const into = new Uint8Array(48);
  const got = mesh.recv(1, 0, { kind: FrameKind.p2p, dtype: DTYPE_CODE.f32, bytes: 48, into });
  // The header alone: the receiver must not wait for (or allocate) the 1 GiB it declares.
  fake.send(meshHeader(GiB, 0, FrameKind.p2p, DTYPE_CODE.f32));
  const result = await Promise.race([got.catch((e: Error) => e), Bun.sleep(1_000).then(() => "no answer")]);
  expect(result).toBeInstanceOf(MeshFailure);
  expect((result as MeshFailure).message).toBe(
    "mismatched call from rank 1: it sent p2p data (f32, 1073741824 bytes) where this rank expected p2p (f32, 48 bytes); every rank must issue the same operations in the same order",
  );
  expect((result as MeshFailure).peers).toEqual([1]);
  mesh.abort("test over");
  fake.close();
});

test("a frame that came before its receive, whole or in part, is checked against it too", async () => {
  for (const before of [40, 16]) {
    const { mesh, fake } = await withFakePeer();
    // The header and `before` of the 40 payload bytes, then the receive, then the rest.
    fake.send(meshHeader(40, 0, FrameKind.p2p, DTYPE_CODE.f32));
    fake.send(new Uint8Array(before));
    await Bun.sleep(50);
    expect(mesh.failure).toBeNull();
    const got = mesh.recv(1, 0, { kind: FrameKind.p2p, dtype: DTYPE_CODE.f32, bytes: 48, into: new Uint8Array(48) });
    fake.send(new Uint8Array(40 - before));
    const result = await Promise.race([got.catch((e: Error) => e), Bun.sleep(1_000).then(() => "no answer")]);
    expect(result, `${before} bytes before`).toBeInstanceOf(MeshFailure);
    expect((result as MeshFailure).message).toStartWith(
      "mismatched call from rank 1: it sent p2p data (f32, 40 bytes) where this rank expected p2p (f32, 48 bytes)",
    );
    mesh.abort("test over");
    fake.close();
  }
});

test("an absurd header from a peer fails the mesh naming the peer, with nothing of its size allocated", async () => {
  const cases: [string, Uint8Array, string][] = [
    [
      "a payload no typed array holds",
      meshHeader(2 ** 40, 0, FrameKind.p2p, DTYPE_CODE.f32),
      "rank 1 sent a frame header of 1099511627776 bytes, more than any tensor holds (4294967296) (the stream is corrupt or not from a lightseq rank)",
    ],
    [
      "an unknown kind",
      meshHeader(8, 0, 77, 0),
      "rank 1 sent a frame of unknown kind 77 (the stream is corrupt or not from a lightseq rank)",
    ],
    ["a second hello", meshHello(1, 2, "again"), "rank 1 sent a second hello (the stream is corrupt or not from a lightseq rank)"],
    [
      "a bye with a payload",
      meshHeader(GiB, 0, FrameKind.bye, 0),
      "rank 1 sent a bye with a 1073741824-byte payload (the stream is corrupt or not from a lightseq rank)",
    ],
    [
      "an abort of 1 GiB",
      meshHeader(GiB, 0, FrameKind.abort, 0),
      "rank 1 sent an abort of 1073741824 bytes, over 65536 (the stream is corrupt or not from a lightseq rank)",
    ],
  ];
  for (const [what, bytes, message] of cases) {
    const { mesh, fake } = await withFakePeer();
    const rss = process.memoryUsage().rss;
    fake.send(bytes);
    const failure = await failureWithin(mesh, 1_000);
    expect(failure?.message, what).toBe(message);
    expect(failure?.peers, what).toEqual([1]);
    // A later receive fails with the same cause; the process did not take the declared size.
    await expect(mesh.recv(1, 0, { kind: FrameKind.p2p, dtype: DTYPE_CODE.f32, bytes: 4 })).rejects.toThrow(message);
    expect(process.memoryUsage().rss - rss, what).toBeLessThan(256 * 2 ** 20);
    mesh.abort("test over");
    fake.close();
  }
});
