// Rendezvous store: a small TCP key-value server (the idea of torch's TCPStore) where ranks meet at
// start-up: they publish their addresses and the NCCL unique id, check they agree on WORLD_SIZE,
// and wait for each other. Hosted by the launcher on node 0 or, without a launcher, by rank 0.
//
// Wire format, both ways: u32 little-endian length, then one msgpack value.
//   request  { id, op: "set" | "get" | "add" | "wait" | "delete", key?, keys?, value?, delta?, timeoutMs?, any? }
//   response { id, ok: true, value? } | { id, ok: false, error }
// Waits (get of a missing key, wait for keys) are held by the server until the keys exist or their
// timeout passes; the client keeps its own timer too, in case the server goes away silently.

import { Packr } from "msgpackr";
import { splitAddress } from "./mesh.ts";

export class StoreError extends Error {
  override name = "StoreError";
}

const packr = new Packr({ useRecords: false });

type Value = unknown;

interface Request {
  id: number;
  op: "set" | "get" | "add" | "wait" | "delete";
  key?: string;
  keys?: string[];
  value?: Value;
  delta?: number;
  timeoutMs?: number;
  /** wait: resolve when any (instead of all) of the keys exists; the value is the key found. */
  any?: boolean;
}

interface Response {
  id: number;
  ok: boolean;
  value?: Value;
  error?: string;
}

/** Splits a byte stream into u32-length-prefixed frames. */
class FrameReader {
  #buf = new Uint8Array(0);
  constructor(readonly onFrame: (bytes: Uint8Array) => void) {}
  push(chunk: Uint8Array): void {
    const merged = new Uint8Array(this.#buf.byteLength + chunk.byteLength);
    merged.set(this.#buf);
    merged.set(chunk, this.#buf.byteLength);
    let at = 0;
    while (merged.byteLength - at >= 4) {
      const n = new DataView(merged.buffer, at, 4).getUint32(0, true);
      if (merged.byteLength - at - 4 < n) break;
      this.onFrame(merged.subarray(at + 4, at + 4 + n));
      at += 4 + n;
    }
    this.#buf = merged.slice(at);
  }
}

function encode(v: unknown): Uint8Array {
  const body = packr.pack(v);
  const out = new Uint8Array(4 + body.byteLength);
  new DataView(out.buffer).setUint32(0, body.byteLength, true);
  out.set(body, 4);
  return out;
}

/** Writes with backpressure: what the socket does not take now goes out on `drain`. */
class Outbox {
  #queue: Uint8Array[] = [];
  constructor(readonly socket: Bun.Socket<unknown>) {}
  send(bytes: Uint8Array): void {
    this.#queue.push(bytes);
    if (this.#queue.length === 1) this.flush();
  }
  flush(): void {
    while (this.#queue.length > 0) {
      const head = this.#queue[0] as Uint8Array;
      const n = this.socket.write(head);
      if (n < 0) {
        this.#queue = [];
        return;
      }
      if (n < head.byteLength) {
        this.#queue[0] = head.subarray(n);
        return;
      }
      this.#queue.shift();
    }
  }
}

interface ServerConn {
  reader: FrameReader;
  out: Outbox;
}

interface Waiting {
  keys: string[];
  any: boolean;
  respond(value: Value): void;
  timer: Timer;
}

export interface StoreServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
}

export class StoreServer {
  readonly host: string;
  readonly port: number;
  #values = new Map<string, Value>();
  #waiting = new Set<Waiting>();
  #listener: Bun.TCPSocketListener<ServerConn | undefined>;

  private constructor(host: string, listener: Bun.TCPSocketListener<ServerConn | undefined>) {
    this.host = host;
    this.#listener = listener;
    this.port = listener.port;
  }

  /** Binds host:port; a taken port is a StoreError that says so (never a silent other port). */
  static listen(o: StoreServerOptions): StoreServer {
    let server: StoreServer | null = null;
    let listener: Bun.TCPSocketListener<ServerConn | undefined>;
    try {
      listener = Bun.listen<ServerConn | undefined>({
        hostname: o.host,
        port: o.port,
        socket: {
          open(s) {
            s.setNoDelay(true);
            const out = new Outbox(s as Bun.Socket<unknown>);
            s.data = { out, reader: new FrameReader((b) => server?.handle(out, b)) };
          },
          data(s, chunk) {
            s.data?.reader.push(chunk);
          },
          drain(s) {
            s.data?.out.flush();
          },
        },
      });
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "EADDRINUSE") {
        throw new StoreError(
          `rendezvous store: port ${o.port} on ${o.host} is in use (EADDRINUSE); choose another MASTER_PORT, or 0 for a free one`,
        );
      }
      throw new StoreError(`rendezvous store: cannot listen on ${o.host}:${o.port}: ${code ?? ""} ${(e as Error).message}`);
    }
    server = new StoreServer(o.host, listener);
    return server;
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  handle(out: Outbox, bytes: Uint8Array): void {
    let req: Request;
    try {
      req = packr.unpack(bytes) as Request;
    } catch (e) {
      out.send(encode({ id: -1, ok: false, error: `bad request: ${(e as Error).message}` } satisfies Response));
      return;
    }
    const reply = (r: Omit<Response, "id">) => out.send(encode({ id: req.id, ...r }));
    switch (req.op) {
      case "set":
        this.#values.set(req.key as string, req.value);
        reply({ ok: true });
        this.#wake();
        return;
      case "add": {
        const key = req.key as string;
        const old = this.#values.get(key) ?? 0;
        if (typeof old !== "number") {
          reply({ ok: false, error: `add: key ${JSON.stringify(key)} holds a ${typeof old}, not a number` });
          return;
        }
        const v = old + (req.delta ?? 0);
        this.#values.set(key, v);
        reply({ ok: true, value: v });
        this.#wake();
        return;
      }
      case "delete":
        reply({ ok: true, value: this.#values.delete(req.key as string) });
        return;
      case "get":
      case "wait": {
        const keys = req.op === "get" ? [req.key as string] : (req.keys ?? []);
        const any = req.op === "wait" && req.any === true;
        const answer = () => (req.op === "get" ? this.#values.get(keys[0] as string) : any ? keys.find((k) => this.#values.has(k)) : true);
        if (this.#ready(keys, any)) {
          reply({ ok: true, value: answer() });
          return;
        }
        const timeoutMs = req.timeoutMs ?? 0;
        if (timeoutMs <= 0) {
          reply({ ok: false, error: "timeout" });
          return;
        }
        const w: Waiting = {
          keys,
          any,
          respond: () => reply({ ok: true, value: answer() }),
          timer: setTimeout(() => {
            this.#waiting.delete(w);
            reply({ ok: false, error: "timeout" });
          }, timeoutMs),
        };
        this.#waiting.add(w);
        return;
      }
      default:
        reply({ ok: false, error: `unknown op ${JSON.stringify((req as { op: unknown }).op)}` });
    }
  }

  #ready(keys: string[], any: boolean): boolean {
    return any ? keys.some((k) => this.#values.has(k)) : keys.every((k) => this.#values.has(k));
  }

  #wake(): void {
    for (const w of this.#waiting) {
      if (!this.#ready(w.keys, w.any)) continue;
      clearTimeout(w.timer);
      this.#waiting.delete(w);
      w.respond(undefined);
    }
  }

  /** Stops accepting; open connections stay until their clients close them (their replies are not cut). */
  close(): void {
    for (const w of this.#waiting) clearTimeout(w.timer);
    this.#waiting.clear();
    this.#listener.stop(false);
  }
}

export interface StoreClientOptions {
  /** How long to keep retrying the connection (default 30 s). */
  connectTimeoutMs?: number;
}

/** A client of StoreServer. Every method rejects with a StoreError naming the store's address. */
export class StoreClient {
  readonly address: string;
  #socket: Bun.Socket<undefined>;
  #out: Outbox;
  #nextId = 1;
  #pending = new Map<number, { resolve(r: Response): void; reject(e: Error): void }>();
  #closed: string | null = null;

  private constructor(address: string, socket: Bun.Socket<undefined>, out: Outbox) {
    this.address = address;
    this.#socket = socket;
    this.#out = out;
  }

  /**
   * Connects to host:port, retrying (the server may start after us) until `connectTimeoutMs`;
   * then fails with "unreachable master host:port after N s".
   */
  static async connect(host: string, port: number, o: StoreClientOptions = {}): Promise<StoreClient> {
    const address = `${host}:${port}`;
    const timeoutMs = o.connectTimeoutMs ?? 30_000;
    const start = performance.now();
    let delay = 20;
    let lastError = "";
    let client: StoreClient | null = null;
    const reader = new FrameReader((b) => client?.onFrame(b));
    for (;;) {
      try {
        const socket = await Bun.connect({
          hostname: host,
          port,
          socket: {
            data: (_s, chunk) => reader.push(chunk),
            drain: () => client?.flush(),
            close: () => client?.fail(`the store at ${address} closed the connection`),
            error: (_s, e) => client?.fail(`connection to the store at ${address} failed: ${e.message}`),
          },
        });
        socket.setNoDelay(true);
        client = new StoreClient(address, socket, new Outbox(socket as Bun.Socket<unknown>));
        return client;
      } catch (e) {
        lastError = (e as { code?: string }).code ?? (e as Error).message;
      }
      const elapsed = performance.now() - start;
      if (elapsed >= timeoutMs) {
        throw new StoreError(
          `unreachable master ${address} after ${(elapsed / 1000).toFixed(elapsed < 10_000 ? 1 : 0)} s (last error: ${lastError}); is MASTER_ADDR/MASTER_PORT right and is rank 0 (or the launcher) up?`,
        );
      }
      await Bun.sleep(Math.min(delay, timeoutMs - elapsed));
      delay = Math.min(delay * 2, 500);
    }
  }

  /** connect() for an address written "host:port". */
  static connectAddress(address: string, o: StoreClientOptions = {}): Promise<StoreClient> {
    const [host, port] = splitAddress(address);
    return StoreClient.connect(host, port, o);
  }

  /** Socket callbacks (internal). */
  flush(): void {
    this.#out.flush();
  }

  onFrame(bytes: Uint8Array): void {
    const r = packr.unpack(bytes) as Response;
    const p = this.#pending.get(r.id);
    if (!p) return;
    this.#pending.delete(r.id);
    p.resolve(r);
  }

  fail(reason: string): void {
    if (this.#closed !== null) return;
    this.#closed = reason;
    for (const p of this.#pending.values()) p.reject(new StoreError(reason));
    this.#pending.clear();
  }

  async #call(req: Omit<Request, "id">, what: string): Promise<Response> {
    if (this.#closed !== null) throw new StoreError(`${what}: ${this.#closed}`);
    const id = this.#nextId++;
    // Server-side waits answer "timeout" themselves; this timer only covers a silent server.
    const backstop = req.timeoutMs !== undefined ? req.timeoutMs + 5_000 : 30_000;
    let timer: Timer | undefined;
    try {
      return await new Promise<Response>((resolve, reject) => {
        this.#pending.set(id, { resolve, reject });
        timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new StoreError(`${what}: no answer from the store at ${this.address} after ${(backstop / 1000).toFixed(1)} s`));
        }, backstop);
        this.#out.send(encode({ id, ...req }));
      });
    } finally {
      clearTimeout(timer);
    }
  }

  async set(key: string, value: Value): Promise<void> {
    const r = await this.#call({ op: "set", key, value }, `set ${key}`);
    if (!r.ok) throw new StoreError(`set ${key}: ${r.error}`);
  }

  /** The value of `key`, waiting up to `timeoutMs` for it to be set (0: do not wait; undefined if missing). */
  async get(key: string, timeoutMs: number): Promise<Value> {
    const r = await this.#call({ op: "get", key, timeoutMs }, `get ${key}`);
    if (r.ok) return r.value;
    if (r.error === "timeout") {
      if (timeoutMs <= 0) return undefined;
      throw new StoreError(`get ${JSON.stringify(key)}: not set after ${(timeoutMs / 1000).toFixed(1)} s at the store ${this.address}`);
    }
    throw new StoreError(`get ${key}: ${r.error}`);
  }

  /** Adds `delta` to the number at `key` (missing = 0) and returns the new value. */
  async add(key: string, delta: number): Promise<number> {
    const r = await this.#call({ op: "add", key, delta }, `add ${key}`);
    if (!r.ok) throw new StoreError(`add ${key}: ${r.error}`);
    return r.value as number;
  }

  /** Waits until every key exists. */
  async waitFor(keys: string[], timeoutMs: number): Promise<void> {
    const r = await this.#call({ op: "wait", keys, timeoutMs }, `wait`);
    if (r.ok) return;
    if (r.error === "timeout")
      throw new StoreError(
        `wait: keys ${keys.map((k) => JSON.stringify(k)).join(", ")} not all set after ${(timeoutMs / 1000).toFixed(1)} s at the store ${this.address}`,
      );
    throw new StoreError(`wait: ${r.error}`);
  }

  /** Waits until any of the keys exists; returns the first one found (in the order given). Null on timeout. */
  async waitAny(keys: string[], timeoutMs: number): Promise<string | null> {
    const r = await this.#call({ op: "wait", keys, timeoutMs, any: true }, `wait`);
    if (r.ok) return r.value as string;
    if (r.error === "timeout") return null;
    throw new StoreError(`wait: ${r.error}`);
  }

  async delete(key: string): Promise<boolean> {
    const r = await this.#call({ op: "delete", key }, `delete ${key}`);
    if (!r.ok) throw new StoreError(`delete ${key}: ${r.error}`);
    return r.value as boolean;
  }

  close(): void {
    this.fail("the client was closed");
    this.#socket.end();
  }
}
