// Seeded fuzzing of the two listeners a job exposes, over loopback: the rendezvous store and the CPU
// mesh get random and mutated frames (noise, over-limit and cut-off frames, bad fields, bit flips,
// silence, strangers' hellos, peers' bad headers) while well-formed clients do their rendezvous in
// the same run. Checked: no crash (a throw in a socket handler fails the test), no hang (every case
// and the whole run are timed; a well-formed connection answers a last ping), memory bounded (RSS and
// the store's own counts), and every well-formed client completes. Bounded: a fixed number of cases,
// a few seconds. The seed is printed; FUZZ_SEED=<n> replays a run.

import { expect, test } from "bun:test";
import { Packr } from "msgpackr";
import { meshHeader, meshHello, meshTarget, RawConn, RawStoreConn, storeFrame } from "./fixtures/raw-wire.ts";
import { Mesh, MeshFailure, type Transport } from "./mesh.ts";
import { DTYPE_CODE, type Expected, FrameKind } from "./mesh-wire.ts";
import { StoreClient } from "./store-client.ts";
import { StoreServer } from "./store-server.ts";
import { MAX_FRAME_BYTES } from "./store-wire.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 20261201) >>> 0;
const STORE_CASES = 600;
const STORE_RANKS = 8;
const MESH_STRANGERS = 48;
const MESH_PEER_CASES = 160;
const PARALLEL = 16;
const MiB = 2 ** 20;

/** xorshift32: small, seeded, the same sequence on every machine. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return this.#s;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** Flips `n` random bits of bytes[from..]. */
function flipBits(rng: Rng, bytes: Uint8Array, from: number, n: number): void {
  for (let f = 0; f < n; f++) {
    const at = from + rng.int(bytes.byteLength - from);
    bytes[at] = (bytes[at] as number) ^ (1 << rng.int(8));
  }
}

const packr = new Packr({ useRecords: false });

function rssMiB(): number {
  Bun.gc(true);
  return process.memoryUsage().rss / MiB;
}

/** Runs `count` cases, `PARALLEL` at a time. */
async function inBatches(count: number, run: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < count) await run(next++);
    }),
  );
}

/** A msgpack-able value of any shape, the odd ones often. */
function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 9 : 12)) {
    case 0:
      return rng.pick([0, -1, 1, -0, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), 1e308, Number.MAX_VALUE, 0.5]);
    case 1:
      return rng.pick([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]);
    case 2:
      return rng.int(2 ** 31) - 2 ** 30;
    case 3:
      return String.fromCharCode(...Array.from({ length: rng.int(24) }, () => rng.pick([rng.int(128), rng.int(0xd7ff)])));
    case 4:
      return rng.pick(["set", "get", "add", "wait", "delete", "hello", "fuzz", "fuzz/a", "", "__proto__", "constructor"]);
    case 5:
      return rng.chance(0.5);
    case 6:
      return rng.pick([null, undefined]);
    case 7:
      return rng.bytes(rng.int(64));
    case 8:
      return rng.chance(0.05) ? "x".repeat(rng.int(200_000)) : rng.int(1000);
    case 9:
      return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
    case 10:
      return Object.fromEntries(Array.from({ length: rng.int(4) }, () => [String(randomValue(rng, 3)), randomValue(rng, depth + 1)]));
    default:
      return new Date(rng.int(2 ** 31) * 1000);
  }
}

const POOL = ["fuzz/a", "fuzz/b", "fuzz/c"];

/** A well-formed request (short waits), then changed: a field replaced, dropped or added. */
function mutatedRequest(rng: Rng, id: number): Record<string, unknown> {
  const t = rng.int(6);
  const req: Record<string, unknown> =
    t === 0
      ? { id, op: "set", key: rng.pick(POOL), value: randomValue(rng) }
      : t === 1
        ? { id, op: "get", key: rng.pick(POOL), timeoutMs: rng.int(30) }
        : t === 2
          ? { id, op: "add", key: "fuzz/counter", delta: rng.int(10) - 5 }
          : t === 3
            ? { id, op: "wait", keys: [rng.pick(POOL), rng.pick(POOL)], timeoutMs: rng.int(30), any: rng.chance(0.5) }
            : t === 4
              ? { id, op: "delete", key: rng.pick(POOL) }
              : { id, op: "hello", job: "fuzz" };
  const mutations = rng.int(3);
  for (let m = 0; m < mutations; m++) {
    const fields = Object.keys(req);
    const what = rng.int(3);
    // An own property even for "__proto__" (an assignment would set the prototype).
    const put = (k: string, v: unknown) =>
      Object.defineProperty(req, k, { value: v, enumerable: true, writable: true, configurable: true });
    if (what === 0) put(rng.pick(fields), randomValue(rng));
    else if (what === 1) delete req[rng.pick(fields)];
    else put(String(randomValue(rng, 3)), randomValue(rng));
  }
  return req;
}

/** Every reply must be { id, ok } with an error string when not ok. */
function checkReplies(replies: unknown[], what: string): void {
  for (const r of replies) {
    const x = r as { id?: unknown; ok?: unknown; error?: unknown };
    expect(typeof x === "object" && x !== null, what).toBe(true);
    expect(Number.isInteger(x.id) && (x.id as number) >= -1, `${what}: reply id ${String(x.id)}`).toBe(true);
    expect(typeof x.ok, what).toBe("boolean");
    if (x.ok === false) expect(typeof x.error, what).toBe("string");
  }
}

const PING_ID = 2 ** 40;

/** One fuzz connection to the store. Returns it if it is to stay open until the end (silent ones). */
async function storeCase(rng: Rng, port: number, i: number): Promise<RawStoreConn | null> {
  const what = `store case ${i} (seed ${SEED})`;
  const raw = await RawStoreConn.open(port);
  const scenario = rng.int(7);
  if (scenario === 0) return raw; // says nothing
  if (scenario === 1) {
    // Noise.
    raw.send(rng.bytes(1 + rng.int(4096)));
    await raw.conn.until(() => raw.conn.isClosed, 20);
    checkReplies(safeReplies(raw), what);
    raw.close();
    return null;
  }
  if (scenario === 2) {
    // Over the limit: refused at the header, whatever follows.
    const declared = MAX_FRAME_BYTES + 1 + rng.int(2 ** 32 - MAX_FRAME_BYTES - 1);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, declared, true);
    raw.send(header);
    raw.send(rng.bytes(rng.int(256 * 1024)));
    const r = (await raw.next(2_000)) as { error?: string };
    expect(r.error, what).toBe(`frame of ${declared} bytes refused: the store's limit is ${MAX_FRAME_BYTES} bytes (1 MiB)`);
    await raw.conn.until(() => raw.conn.isClosed, 2_000);
    expect(raw.conn.isClosed, `${what}: closed after the refusal`).toBe(true);
    return null;
  }
  if (scenario === 3) {
    // Cut off in the middle of a frame (or of a header).
    raw.send(storeFrame({ id: 1, op: "hello", job: "fuzz" }));
    const frame = storeFrame({ id: 2, op: "set", key: "fuzz/a", value: rng.bytes(rng.int(64 * 1024)) });
    raw.send(frame.subarray(0, rng.int(frame.byteLength)));
    await Bun.sleep(rng.int(10));
    raw.close();
    return null;
  }
  if (scenario === 4) {
    // Deeply nested, or not msgpack at all, inside a proper frame.
    raw.send(storeFrame({ id: 1, op: "hello", job: "fuzz" }));
    raw.send(storeFrame(rng.chance(0.5) ? new Uint8Array(1000 + rng.int(200_000)).fill(0x91) : rng.bytes(1 + rng.int(512))));
    raw.send(storeFrame({ id: PING_ID, op: "get", key: "fuzz/ping", timeoutMs: 0 }));
    await raw.conn.until(() => safeReplies(raw).some((r) => (r as { id: number }).id === PING_ID), 2_000);
    checkReplies(safeReplies(raw), what);
    expect(
      safeReplies(raw).some((r) => (r as { id: number }).id === PING_ID),
      `${what}: answers after a bad body`,
    ).toBe(true);
    raw.close();
    return null;
  }
  // Mutated requests, some with flipped bytes, after a hello that may itself be wrong.
  const properHello = rng.chance(0.85);
  const hello = properHello
    ? { id: 1, op: "hello", job: "fuzz" }
    : rng.chance(0.5)
      ? { id: 1, op: "hello", job: "another job" }
      : mutatedRequest(rng, 1);
  raw.send(storeFrame(hello));
  const n = 1 + rng.int(8);
  for (let k = 0; k < n; k++) {
    const body = Uint8Array.from(packr.pack(mutatedRequest(rng, 2 + k)));
    if (rng.chance(0.3)) flipBits(rng, body, 0, 1 + rng.int(3));
    raw.send(storeFrame(body));
  }
  raw.send(storeFrame({ id: PING_ID, op: "get", key: "fuzz/ping", timeoutMs: 0 }));
  const pinged = () => safeReplies(raw).some((r) => (r as { id: number }).id === PING_ID);
  await raw.conn.until(pinged, 2_000);
  checkReplies(safeReplies(raw), what);
  if (properHello) expect(pinged(), `${what}: a connection that said a proper hello answers the last ping`).toBe(true);
  else expect(pinged() || raw.conn.isClosed, `${what}: answered or closed`).toBe(true);
  // Waits still pending (a mutated timeout may be long) end with the connection.
  raw.close();
  return null;
}

/** The decoded replies; a reply that cannot be decoded fails the case. */
function safeReplies(raw: RawStoreConn): unknown[] {
  return raw.replies();
}

/** One well-formed rank of a job of `size`: claim, publish, wait for everyone, read everyone, then a barrier. */
async function rendezvous(rng: Rng, port: number, rank: number, size: number): Promise<string[]> {
  await Bun.sleep(rng.int(300));
  const c = await StoreClient.connect("127.0.0.1", port, { job: "fuzz", connectTimeoutMs: 5_000 });
  try {
    expect(await c.add(`job/claim/${rank}`, 1)).toBe(1);
    await c.set(`job/info/${rank}`, `rank ${rank} at ${process.pid}`);
    const infos = Array.from({ length: size }, (_, p) => `job/info/${p}`);
    await c.waitFor(infos, 5_000);
    const seen: string[] = [];
    for (const k of infos) seen.push((await c.get(k, 0)) as string);
    await c.set(`job/ready/${rank}`, 1);
    await c.waitFor(
      Array.from({ length: size }, (_, p) => `job/ready/${p}`),
      5_000,
    );
    return seen;
  } finally {
    c.close();
  }
}

test(`the store under ${STORE_CASES} seeded random and mutated connections; ${STORE_RANKS} well-formed ranks still meet`, async () => {
  console.log(`wire fuzz seed ${SEED} (FUZZ_SEED to replay)`);
  const rng = new Rng(SEED);
  const server = StoreServer.listen({ host: "127.0.0.1", port: 0, job: "fuzz" });
  const rss0 = rssMiB();
  const start = performance.now();
  try {
    const ranks = Array.from({ length: STORE_RANKS }, (_, r) => rendezvous(new Rng(SEED + 1 + r), server.port, r, STORE_RANKS));
    const silent: RawStoreConn[] = [];
    await inBatches(STORE_CASES, async (i) => {
      const c = await storeCase(new Rng(rng.u32()), server.port, i);
      if (c) silent.push(c);
    });
    const seen = await Promise.all(ranks);
    const expected = Array.from({ length: STORE_RANKS }, (_, p) => `rank ${p} at ${process.pid}`);
    for (const s of seen) expect(s).toEqual(expected);

    // Nothing the fuzz sent turned the counter into something else than a number.
    const c = await StoreClient.connect("127.0.0.1", server.port, { job: "fuzz" });
    const counter = await c.get("fuzz/counter", 0);
    expect(counter === undefined || (typeof counter === "number" && Number.isFinite(counter)), `counter is ${String(counter)}`).toBe(true);
    c.close();
    for (const s of silent) s.close();
    for (let t = 0; t < 400 && server.stats.connections > 0; t++) await Bun.sleep(5);
    // Every connection is gone, and with it every wait (some had timeouts of days).
    expect(server.stats).toMatchObject({ connections: 0, waits: 0 });
    const grew = rssMiB() - rss0;
    console.log(
      `store fuzz: ${STORE_CASES} cases + ${STORE_RANKS} ranks in ${((performance.now() - start) / 1000).toFixed(2)} s, RSS +${grew.toFixed(0)} MiB`,
    );
    expect(grew).toBeLessThan(256);
    expect(performance.now() - start).toBeLessThan(15_000);
  } finally {
    server.close();
  }
}, 30_000);

// ---------------------------------------------------------------------------------------------------
// The mesh

let sessions = 0;

/** A stranger's bytes: noise, or a hello that is wrong in one way or another. */
function strangerBytes(rng: Rng): Uint8Array {
  switch (rng.int(6)) {
    case 0:
      return rng.bytes(1 + rng.int(2048));
    case 1:
      return meshHello(rng.int(8) - 2, rng.int(8), String(randomValue(rng, 3)));
    case 2:
      return meshHeader(rng.pick([2 ** 32, 2 ** 40, 4097, 1 + rng.int(2 ** 31)]), rng.u32(), FrameKind.hello, 0);
    case 3:
      return meshHeader(rng.int(2 ** 20), rng.u32(), rng.int(256), rng.int(256));
    case 4: {
      const hello = meshHello(1, 3, "not this session");
      flipBits(rng, hello, 16, 3);
      return hello;
    }
    default:
      return rng.bytes(rng.int(16)); // part of a header, then silence
  }
}

test(`the mesh: ${MESH_STRANGERS} seeded strangers per transport while 3 ranks connect; the ranks still exchange data`, async () => {
  const rng = new Rng(SEED ^ 0x5a5a5a5a);
  const rss0 = rssMiB();
  for (const transport of ["unix", "tcp"] as const) {
    const session = `fuzz-${process.pid}-${sessions++}`;
    const meshes = [0, 1, 2].map((rank) => new Mesh({ rank, size: 3, session, transport }));
    const addresses = meshes.map((m) => m.listen());
    const strangers: RawConn[] = [];
    const wave = async (count: number) => {
      await inBatches(count, async () => {
        const c = await RawConn.open(meshTarget(rng.pick(addresses.slice(0, 2))));
        if (!c) return; // the listener already stopped: connected
        c.send(strangerBytes(rng));
        strangers.push(c);
      });
    };
    await wave(MESH_STRANGERS / 2);
    await Promise.all([...meshes.map((m, r) => m.connect(addresses.slice(0, r), 3_000)), wave(MESH_STRANGERS / 2)]);
    // A ring: each rank sends its rank to the next.
    const want: Expected = { kind: FrameKind.p2p, dtype: DTYPE_CODE.i32, bytes: 4 };
    const got = meshes.map((m, r) => m.recv((r + 2) % 3, 0, want));
    await Promise.all(
      meshes.map((m, r) => m.send((r + 1) % 3, 0, FrameKind.p2p, DTYPE_CODE.i32, new Uint8Array(new Int32Array([r]).buffer))),
    );
    const values = await Promise.all(got.map(async (f) => new Int32Array((await f).payload.slice().buffer)[0]));
    expect(values, transport).toEqual([2, 0, 1]);
    for (const m of meshes) expect(m.failure, transport).toBeNull();
    for (const m of meshes) {
      m.retain();
      await m.release();
    }
    for (const c of strangers) c.close();
  }
  expect(rssMiB() - rss0).toBeLessThan(256);
}, 30_000);

test(`the mesh: ${MESH_PEER_CASES} seeded bad and good headers from a peer fail the mesh naming it, or are delivered as posted`, async () => {
  const rng = new Rng(SEED ^ 0xa5a5a5a5);
  const rss0 = rssMiB();
  const start = performance.now();
  const outcomes = { delivered: 0, failed: 0, pending: 0 };
  await inBatches(MESH_PEER_CASES, async (i) => {
    const r = new Rng(rng.u32());
    const what = `mesh case ${i} (seed ${SEED})`;
    const transport: Transport = r.chance(0.5) ? "unix" : "tcp";
    const session = `fuzz-peer-${process.pid}-${sessions++}`;
    const mesh = new Mesh({ rank: 0, size: 2, session, transport });
    const connected = mesh.connect([], 2_000);
    const fake = await RawConn.open(meshTarget(mesh.listen()));
    fake!.send(meshHello(1, 2, session));
    await connected;
    const dataKinds = [FrameKind.p2p, FrameKind.allReduce, FrameKind.allGather, FrameKind.broadcast, FrameKind.barrier];
    const want: Expected = { kind: r.pick(dataKinds), dtype: r.int(4), bytes: r.pick([0, 4, 48, 1000, 65536]) };
    if (r.chance(0.5)) want.into = new Uint8Array(want.bytes);
    // The receive is posted before the frame, or after part of it came, or never.
    const when = r.pick(["before", "before", "midway", "never"] as const);
    const post = () =>
      mesh.recv(1, 0, want).then(
        (f) => f,
        (e: Error) => e,
      );
    let posted = when === "before" ? post() : null;
    // The header: as posted, or off in its kind, dtype, size or tag, or absurd.
    const kind = r.chance(0.8) ? want.kind : r.int(256);
    const dtype = r.chance(0.85) ? want.dtype : r.int(256);
    const bytes = r.chance(0.7)
      ? want.bytes
      : r.pick([want.bytes + 1, Math.max(0, want.bytes - 1), 2 ** 32 + 1, 2 ** 40, 2 ** 53 - 1, r.int(64 * MiB)]);
    const tag = r.chance(0.9) ? 0 : r.u32();
    fake!.send(meshHeader(bytes, tag, kind, dtype));
    const sent = Math.min(r.pick([bytes, 0, r.int(Math.min(bytes, MiB) + 1)]), MiB);
    const first = when === "midway" ? r.int(sent + 1) : sent;
    if (first > 0) fake!.send(r.bytes(first));
    if (when === "midway") {
      await Bun.sleep(5);
      posted = post();
      if (sent > first) fake!.send(r.bytes(sent - first));
    }
    if (r.chance(0.2)) fake!.send(r.bytes(r.int(256)));
    const settled = await Promise.race([posted ?? new Promise<null>(() => {}), Bun.sleep(posted ? 150 : 50).then(() => null)]);
    const failure = mesh.failure;
    if (failure !== null) {
      expect(failure.peers, `${what}: ${failure.message}`).toEqual([1]);
      expect(failure.message, what).toContain("rank 1");
    }
    if (settled instanceof Error) {
      expect(settled, what).toBeInstanceOf(MeshFailure);
      expect((settled as MeshFailure).peers, what).toEqual([1]);
      outcomes.failed++;
    } else if (settled !== null) {
      // Delivered: exactly what was posted.
      expect([settled.kind, settled.dtype, settled.payload.byteLength], what).toEqual([want.kind, want.dtype, want.bytes]);
      outcomes.delivered++;
    } else if (failure !== null) outcomes.failed++;
    else outcomes.pending++;
    mesh.abort("case over");
    fake!.close();
  });
  const grew = rssMiB() - rss0;
  console.log(
    `mesh fuzz: ${MESH_PEER_CASES} peer cases in ${((performance.now() - start) / 1000).toFixed(2)} s (${outcomes.delivered} delivered, ${outcomes.failed} failed naming the peer, ${outcomes.pending} still waiting for bytes), RSS +${grew.toFixed(0)} MiB`,
  );
  expect(outcomes.delivered).toBeGreaterThan(0);
  expect(outcomes.failed).toBeGreaterThan(0);
  expect(grew).toBeLessThan(256);
}, 30_000);
