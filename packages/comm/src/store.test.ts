// The rendezvous store: its operations, its waits and its errors.

import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { StoreClient, StoreError, StoreServer } from "./store.ts";
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
