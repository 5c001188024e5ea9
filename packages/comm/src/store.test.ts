// The rendezvous store: its operations, its waits and its errors; and what it does with bad input
// (frames over the limit, bad fields, another job, silent or vanishing clients). The seeded fuzz
// test of the same is in wire-fuzz.test.ts.

import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { jobIdFromEnv } from "./env.ts";
import { RawStoreConn, storeFrame } from "./fixtures/raw-wire.ts";
import { StoreClient } from "./store-client.ts";
import { StoreServer } from "./store-server.ts";
import { FrameReader, MAX_FRAME_BYTES, StoreError } from "./store-wire.ts";
import { FIXTURES, freePort } from "./testing.ts";

const server = StoreServer.listen({ host: "127.0.0.1", port: 0 });
afterAll(() => server.close());

test("set / get / add / delete, with values of any msgpack type", async () => {
  const c = await StoreClient.connect("127.0.0.1", server.port);
  try {
    await c.set("a", { x: 1, s: "two" });
    expect(await c.get("a", 0)).toEqual({ x: 1, s: "two" });
    const id = new Uint8Array(128).map((_, i) => i);
    await c.set("id", id);
    expect(new Uint8Array(await (c.get("id", 0) as Promise<Uint8Array>))).toEqual(id);
    expect(await c.get("missing", 0)).toBeUndefined();
    expect(await c.add("n", 2)).toBe(2);
    expect(await c.add("n", 3)).toBe(5);
    expect(await c.delete("n")).toBe(true);
    expect(await c.delete("n")).toBe(false);
    await expect(c.add("a", 1)).rejects.toThrow(/holds a object, not a number/);
  } finally {
    c.close();
  }
});

test("get and wait block until another client sets the key; waitAny returns the key found", async () => {
  const a = await StoreClient.connect("127.0.0.1", server.port);
  const b = await StoreClient.connect("127.0.0.1", server.port);
  try {
    const got = a.get("later", 2_000);
    const all = a.waitFor(["k1", "k2"], 2_000);
    const any = a.waitAny(["never", "k2"], 2_000);
    await Bun.sleep(20);
    await b.set("later", 42);
    await b.set("k2", 1);
    expect(await any).toBe("k2");
    await b.set("k1", 1);
    expect(await got).toBe(42);
    await all;
    expect(await a.waitAny(["nope"], 50)).toBeNull();
  } finally {
    a.close();
    b.close();
  }
});

test("a wait that times out names the key, the time and the store", async () => {
  const c = await StoreClient.connect("127.0.0.1", server.port);
  try {
    await expect(c.get("nobody-sets-this", 100)).rejects.toThrow(
      new RegExp(`get "nobody-sets-this": not set after 0\\.1 s at the store 127\\.0\\.0\\.1:${server.port}`),
    );
    await expect(c.waitFor(["x", "y"], 100)).rejects.toThrow(/wait: keys "x", "y" not all set after 0\.1 s/);
  } finally {
    c.close();
  }
});

test("clients retry until the server comes up", async () => {
  const port = freePort();
  const connecting = StoreClient.connect("127.0.0.1", port, { connectTimeoutMs: 5_000 });
  await Bun.sleep(150);
  const late = StoreServer.listen({ host: "127.0.0.1", port });
  try {
    const c = await connecting;
    await c.set("k", 1);
    expect(await c.get("k", 0)).toBe(1);
    c.close();
  } finally {
    late.close();
  }
});

test("an unreachable master and a taken port are StoreErrors that say so", async () => {
  const port = freePort();
  await expect(StoreClient.connect("127.0.0.1", port, { connectTimeoutMs: 200 })).rejects.toThrow(
    new RegExp(`^unreachable master 127\\.0\\.0\\.1:${port} after 0\\.2 s \\(last error: ECONNREFUSED\\)`),
  );
  expect(() => StoreServer.listen({ host: "127.0.0.1", port: server.port })).toThrow(StoreError);
  expect(() => StoreServer.listen({ host: "127.0.0.1", port: server.port })).toThrow(`port ${server.port} on 127.0.0.1 is in use`);
});

test("pending requests fail at once when the store's process dies", async () => {
  const proc = Bun.spawn([process.execPath, join(FIXTURES, "store-server.ts")], { stdout: "pipe" });
  const reader = proc.stdout.getReader();
  const port = Number(new TextDecoder().decode((await reader.read()).value));
  const c = await StoreClient.connect("127.0.0.1", port);
  const waiting = c.get("never", 10_000);
  const start = performance.now();
  proc.kill("SIGKILL");
  await expect(waiting).rejects.toThrow(`the store at 127.0.0.1:${port} closed the connection`);
  expect(performance.now() - start).toBeLessThan(2_000);
  await expect(c.set("k", 1)).rejects.toThrow(/closed the connection/);
});

test("a frame over 1 MiB is refused at its header: an error reply naming the limit, then the connection closes", async () => {
  const raw = await RawStoreConn.open(server.port);
  // Declares 4 GiB, then streams 4 MiB (the old store buffered all of it, copying it per chunk).
  raw.send(new Uint8Array([0xff, 0xff, 0xff, 0xff]));
  for (let i = 0; i < 64; i++) raw.send(new Uint8Array(64 * 1024));
  expect(await raw.next()).toEqual({
    id: -1,
    ok: false,
    error: "frame of 4294967295 bytes refused: the store's limit is 1048576 bytes (1 MiB)",
  });
  await raw.conn.until(() => raw.conn.isClosed, 2_000);
  expect(raw.conn.isClosed).toBe(true);
  // The client side refuses to send one, before any round trip.
  const c = await StoreClient.connect("127.0.0.1", server.port);
  try {
    await expect(c.set("big", new Uint8Array(MAX_FRAME_BYTES))).rejects.toThrow(
      /^set big: the request takes \d+ bytes, over the store's limit of 1048576/,
    );
    await c.set("after", 1);
    expect(await c.get("after", 0)).toBe(1);
  } finally {
    c.close();
  }
});

test("frames are assembled in time linear in their size (a 4 MiB frame in 256-byte chunks)", () => {
  const frame = storeFrame(new Uint8Array(4 << 20));
  const got: number[] = [];
  const reader = new FrameReader(
    8 << 20,
    (b) => got.push(b.byteLength),
    () => {},
  );
  const start = performance.now();
  for (let at = 0; at < frame.byteLength; at += 256) reader.push(frame.subarray(at, at + 256));
  const ms = performance.now() - start;
  expect(got).toEqual([frame.byteLength - 4]);
  // Linear: 16k pushes, tens of ms. Copying the pending bytes on every chunk (the old reader) moves
  // 16k x 2 MiB on average = 32 GiB: many seconds.
  expect(ms).toBeLessThan(1_000);
});

test("every request field is checked: a bad one is an error reply naming it, and changes nothing", async () => {
  const raw = await RawStoreConn.open(server.port);
  const c = await StoreClient.connect("127.0.0.1", server.port);
  try {
    expect(await raw.request({ id: 1, op: "hello", job: "default" })).toEqual({ id: 1, ok: true });
    await c.add("checked/n", 5);
    const cases: [unknown, RegExp][] = [
      [{ id: 2, op: "add", key: "checked/n", delta: "1" }, /^bad request: add: delta must be a finite number, got "1"$/],
      [{ id: 3, op: "add", key: "checked/n", delta: Number.NaN }, /delta must be a finite number, got NaN/],
      [{ id: 4, op: "add", key: "checked/n", delta: Number.POSITIVE_INFINITY }, /delta must be a finite number, got Infinity/],
      [{ id: 5, op: "add", key: "checked/n" }, /delta must be a finite number, got undefined/],
      [{ id: 7, op: "set", key: 5, value: 1 }, /^bad request: set: key must be a string, got 5$/],
      [{ id: 8, op: "set", key: "checked/n" }, /set: value is missing/],
      [{ id: 9, op: "get", key: ["checked/n"], timeoutMs: 0 }, /get: key must be a string, got an array of 1/],
      [{ id: 10, op: "get", key: "x", timeoutMs: -1 }, /get: timeoutMs must be a number of milliseconds in \[0, 2147483647\], got -1/],
      [{ id: 11, op: "get", key: "x", timeoutMs: "100" }, /timeoutMs must be a number .*, got "100"/],
      [{ id: 12, op: "wait", keys: "checked/n", timeoutMs: 10 }, /wait: keys must be an array of strings, got "checked\/n"/],
      [{ id: 13, op: "wait", keys: ["a", 1], timeoutMs: 10 }, /wait: keys must be an array of strings/],
      [{ id: 14, op: "wait", keys: ["a"], timeoutMs: 1e12 }, /timeoutMs must be .*, got 1000000000000/],
      [{ id: 15, op: "wait", keys: ["a"], timeoutMs: 10, any: 1 }, /wait: any must be a boolean, got 1/],
      [{ id: 16, op: "delete", key: null }, /delete: key must be a string, got null/],
      [{ id: 17, op: "add", key: "checked/n", delta: 1, value: 3 }, /add: unexpected field "value"/],
      [{ id: 18, op: "drop", key: "checked/n" }, /op must be one of hello, set, get, add, wait, delete, got "drop"/],
      [{ id: 19, op: 7 }, /op must be one of .*, got 7/],
      [{ id: "1", op: "get", key: "x" }, /^bad request: id must be a non-negative integer, got "1"$/],
      [[1, "set", "checked/n", 1], /^bad request: expected a map, got an array of 4$/],
      [42, /expected a map, got 42/],
      [{ id: 20, op: "hello", job: "default" }, /hello: this connection has already said hello/],
    ];
    for (const [req, error] of cases) {
      const r = (await raw.request(req)) as { id: number; ok: boolean; error: string };
      expect(r.ok, JSON.stringify(req)).toBe(false);
      expect(r.error, JSON.stringify(req)).toMatch(error);
      expect(r.id).toBe(typeof (req as { id?: unknown }).id === "number" ? (req as { id: number }).id : -1);
    }
    // Bytes that are not one msgpack value: an error reply, and the connection goes on.
    raw.send(storeFrame(new Uint8Array([0x92, 0x01])));
    expect(await raw.next()).toMatchObject({ id: -1, ok: false, error: expect.stringMatching(/^bad request: not one msgpack value/) });
    expect(await c.get("checked/n", 0)).toBe(5);
    expect(await raw.request({ id: 21, op: "add", key: "checked/n", delta: 2 })).toEqual({ id: 21, ok: true, value: 7 });
    expect(await raw.request({ id: 22, op: "add", key: "checked/n", delta: Number.MAX_VALUE })).toEqual({
      id: 22,
      ok: true,
      value: Number.MAX_VALUE,
    });
    expect(await raw.request({ id: 23, op: "add", key: "checked/n", delta: Number.MAX_VALUE })).toMatchObject({
      ok: false,
      error: expect.stringMatching(/is not a finite number/),
    });
    expect(await c.get("checked/n", 0)).toBe(Number.MAX_VALUE);
  } finally {
    raw.close();
    c.close();
  }
});

test("a request before hello is refused and the connection closed; a client of another job is refused by name", async () => {
  const raw = await RawStoreConn.open(server.port);
  expect(await raw.request({ id: 1, op: "get", key: "x", timeoutMs: 0 })).toEqual({
    id: 1,
    ok: false,
    error: "get before hello: the first request on a connection must be a hello with the job id",
  });
  await raw.conn.until(() => raw.conn.isClosed, 2_000);
  expect(raw.conn.isClosed).toBe(true);

  const theirs = StoreServer.listen({ host: "127.0.0.1", port: 0, job: "train-a" });
  try {
    await expect(StoreClient.connect("127.0.0.1", theirs.port, { job: "train-b" })).rejects.toThrow(
      new RegExp(
        `^the store at 127\\.0\\.0\\.1:${theirs.port} refused this process \\(job "train-b", from LIGHTSEQ_JOB_ID, TORCHELASTIC_RUN_ID or SLURM_JOB_ID\\): job mismatch: this store serves job "train-a", not job "train-b"; two jobs are using one MASTER_ADDR:MASTER_PORT`,
      ),
    );
    const ours = await StoreClient.connect("127.0.0.1", theirs.port, { job: "train-a" });
    await ours.set("k", 1);
    ours.close();
    expect(theirs.stats.keys).toBe(1);
  } finally {
    theirs.close();
  }
});

test("the job id: LIGHTSEQ_JOB_ID, else TORCHELASTIC_RUN_ID, else SLURM_JOB_ID(.SLURM_STEP_ID), else default", () => {
  const all = { LIGHTSEQ_JOB_ID: "ours", TORCHELASTIC_RUN_ID: "rdzv", SLURM_JOB_ID: "123", SLURM_STEP_ID: "4" };
  expect(jobIdFromEnv(all)).toBe("ours");
  expect(jobIdFromEnv({ ...all, LIGHTSEQ_JOB_ID: " " })).toBe("rdzv");
  expect(jobIdFromEnv({ SLURM_JOB_ID: "123", SLURM_STEP_ID: "4" })).toBe("123.4");
  expect(jobIdFromEnv({ SLURM_JOB_ID: "123" })).toBe("123");
  expect(jobIdFromEnv({})).toBe("default");
  expect(() => jobIdFromEnv({ LIGHTSEQ_JOB_ID: "x".repeat(300) })).toThrow("LIGHTSEQ_JOB_ID: a job id is at most 256 characters, got 300");
});

test("silent clients, clients gone mid-frame and clients gone while waiting leave nothing behind", async () => {
  const s = StoreServer.listen({ host: "127.0.0.1", port: 0 });
  try {
    const silent = await Promise.all(Array.from({ length: 20 }, () => RawStoreConn.open(s.port)));
    const cut = await Promise.all(Array.from({ length: 20 }, () => RawStoreConn.open(s.port)));
    for (const [i, r] of cut.entries()) {
      expect(await r.request({ id: 1, op: "hello", job: "default" })).toEqual({ id: 1, ok: true });
      // Half of a 512 KiB frame, or half of a header.
      r.send(i % 2 ? storeFrame(new Uint8Array(512 * 1024)).subarray(0, 256 * 1024) : new Uint8Array([0x10, 0x00]));
    }
    const waiter = await StoreClient.connect("127.0.0.1", s.port);
    const waiting = waiter.get("never-set", 3_600_000).catch((e: Error) => e);
    const until = async (what: () => boolean) => {
      for (let i = 0; i < 200 && !what(); i++) await Bun.sleep(5);
    };
    await until(() => s.stats.connections === 41 && s.stats.waits === 1);
    expect(s.stats).toEqual({ connections: 41, waits: 1, keys: 0 });
    for (const r of cut) r.close();
    waiter.close();
    expect(await waiting).toBeInstanceOf(StoreError);
    await until(() => s.stats.connections === 20 && s.stats.waits === 0);
    // The wait (and its one-hour timer) ended with its connection; the silent ones are only sockets.
    expect(s.stats).toEqual({ connections: 20, waits: 0, keys: 0 });
    for (const r of silent) r.close();
    await until(() => s.stats.connections === 0);
    expect(s.stats.connections).toBe(0);
  } finally {
    s.close();
  }
});

test("a client that does not read its replies is disconnected, not buffered for without end", async () => {
  const c = await StoreClient.connect("127.0.0.1", server.port);
  await c.set("unread/big", new Uint8Array(900 * 1024));
  c.close();
  // 64 gets of a 900 KiB value: 56 MiB of replies, which this client leaves unread.
  const raw = await RawStoreConn.open(server.port);
  expect(await raw.request({ id: 1, op: "hello", job: "default" })).toEqual({ id: 1, ok: true });
  raw.conn.pause();
  for (let id = 2; id < 66; id++) raw.send(storeFrame({ id, op: "get", key: "unread/big", timeoutMs: 0 }));
  await raw.conn.until(() => raw.conn.isClosed, 3_000);
  expect(raw.conn.isClosed).toBe(true);
});
