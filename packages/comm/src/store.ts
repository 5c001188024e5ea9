// Rendezvous store: a small TCP key-value server (the idea of torch's TCPStore) where ranks meet at
// start-up: they publish their addresses and the NCCL unique id, check they agree on WORLD_SIZE,
// and wait for each other. Hosted by the launcher on node 0 or, without a launcher, by rank 0.
//
// Wire format, both ways: u32 little-endian length (at most MAX_FRAME_BYTES), then one msgpack value.
//   request  { id, op: "hello", job } | { id, op: "set", key, value } | { id, op: "get", key, timeoutMs? }
//            | { id, op: "add", key, delta } | { id, op: "wait", keys, timeoutMs?, any? } | { id, op: "delete", key }
//   response { id, ok: true, value? } | { id, ok: false, error }
// The first request on a connection is a hello with the job id; the store answers only clients of
// its own job, so a second job pointed at the same MASTER_ADDR:MASTER_PORT is refused by name
// instead of mixing its keys with ours. Waits (get of a missing key, wait for keys) are held by the
// server until the keys exist or their timeout passes; the client keeps its own timer too, in case
// the server goes away silently.
//
// Bad input (README "What the store protects against"): every request is validated and a bad one
// gets an error reply, never a changed value; a frame over the limit gets an error naming it and the
// connection is closed; frames are assembled in time linear in their size; a connection holds no
// buffer while it is silent, and its waits end with it. There is no authentication.

import { Packr } from "msgpackr";
import { splitAddress } from "./mesh.ts";

export class StoreError extends Error {
  override name = "StoreError";
}

/** Largest frame either side accepts: requests and values are small (addresses, ids: a few KiB). */
export const MAX_FRAME_BYTES = 1 << 20;
/** Largest value `set` takes, encoded: a get's reply (value + id + ok) must fit in one frame. */
const MAX_VALUE_BYTES = MAX_FRAME_BYTES - 64;
/** Replies a client leaves unread (its socket full); past this it is disconnected, not buffered for. */
const MAX_UNSENT_BYTES = 16 * MAX_FRAME_BYTES;
/** setTimeout's limit (~24.8 days): a longer wait would fire at once. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
/** The longest job id a store accepts (env.ts jobIdFromEnv refuses longer ones up front). */
export const MAX_JOB_ID_CHARS = 256;

/** The job id of a process that finds none of the variables of jobIdFromEnv (env.ts). */
export const DEFAULT_JOB_ID = "default";

const packr = new Packr({ useRecords: false });

type Value = unknown;

/** What a request asks, by op; `id` pairs it with its response. */
type Body =
  | { op: "hello"; job: string }
  | { op: "set"; key: string; value: Value }
  | { op: "get"; key: string; timeoutMs: number }
  | { op: "add"; key: string; delta: number }
  /** any: resolve when any (instead of all) of the keys exists; the value is the key found. */
  | { op: "wait"; keys: string[]; timeoutMs: number; any: boolean }
  | { op: "delete"; key: string };
type Op = Body["op"];
type Request = Body & { id: number };

interface Response {
  id: number;
  ok: boolean;
  value?: Value;
  error?: string;
}

/** The fields each op may carry besides id and op; optional ones are marked in parseRequest. */
const FIELDS: Record<Op, readonly string[]> = {
  hello: ["job"],
  set: ["key", "value"],
  get: ["key", "timeoutMs"],
  add: ["key", "delta"],
  wait: ["keys", "timeoutMs", "any"],
  delete: ["key"],
};

/** A value as an error message may quote it: short, whatever it is. */
function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v instanceof Uint8Array) return `${v.byteLength} bytes of binary`;
  return `a ${Object.prototype.toString.call(v).slice(8, -1)}`;
}

/** A decoded frame as a request, or why it is not one (reply with `id`: -1 when the frame has none). */
function parseRequest(raw: unknown): Request | { id: number; error: string } {
  if (typeof raw !== "object" || raw === null || Object.getPrototypeOf(raw) !== Object.prototype)
    return { id: -1, error: `bad request: expected a map, got ${describe(raw)}` };
  const r = raw as Record<string, unknown>;
  if (!Number.isSafeInteger(r.id) || (r.id as number) < 0)
    return { id: -1, error: `bad request: id must be a non-negative integer, got ${describe(r.id)}` };
  const id = r.id as number;
  const bad = (what: string) => ({ id, error: `bad request: ${what}` });
  const op = r.op;
  if (typeof op !== "string" || !Object.hasOwn(FIELDS, op))
    return bad(`op must be one of ${Object.keys(FIELDS).join(", ")}, got ${describe(op)}`);
  const fields = FIELDS[op as Op];
  for (const k of Object.keys(r)) if (k !== "id" && k !== "op" && !fields.includes(k)) return bad(`${op}: unexpected field ${describe(k)}`);
  const key = r.key;
  if (fields.includes("key") && typeof key !== "string") return bad(`${op}: key must be a string, got ${describe(key)}`);
  const timeoutMs = r.timeoutMs === undefined ? 0 : r.timeoutMs;
  if (fields.includes("timeoutMs") && (typeof timeoutMs !== "number" || !(timeoutMs >= 0 && timeoutMs <= MAX_TIMEOUT_MS)))
    return bad(`${op}: timeoutMs must be a number of milliseconds in [0, ${MAX_TIMEOUT_MS}], got ${describe(timeoutMs)}`);
  switch (op as Op) {
    case "hello":
      if (typeof r.job !== "string" || r.job === "" || r.job.length > MAX_JOB_ID_CHARS)
        return bad(`hello: job must be a string of 1 to ${MAX_JOB_ID_CHARS} characters, got ${describe(r.job)}`);
      return { id, op: "hello", job: r.job };
    case "set":
      if (r.value === undefined) return bad(`set: value is missing`);
      return { id, op: "set", key: key as string, value: r.value };
    case "get":
      return { id, op: "get", key: key as string, timeoutMs: timeoutMs as number };
    case "add":
      if (typeof r.delta !== "number" || !Number.isFinite(r.delta))
        return bad(`add: delta must be a finite number, got ${describe(r.delta)}`);
      return { id, op: "add", key: key as string, delta: r.delta };
    case "wait": {
      const keys = r.keys;
      if (!Array.isArray(keys) || !keys.every((k) => typeof k === "string"))
        return bad(`wait: keys must be an array of strings, got ${describe(keys)}`);
      if (r.any !== undefined && typeof r.any !== "boolean") return bad(`wait: any must be a boolean, got ${describe(r.any)}`);
      return { id, op: "wait", keys, timeoutMs: timeoutMs as number, any: r.any === true };
    }
    case "delete":
      return { id, op: "delete", key: key as string };
  }
}

/**
 * Splits a byte stream into u32-length-prefixed frames of at most `maxBytes`. Bytes not yet part of
 * a whole frame wait in one buffer that grows by doubling, so assembling a frame costs time linear
 * in its size; a frame is handed out as its own copy. A declared length over the limit stops the
 * reader (nothing of it is allocated) and calls `onOversize`.
 */
export class FrameReader {
  #buf = new Uint8Array(0);
  /** The bytes waiting are #buf[#start, #end). */
  #start = 0;
  #end = 0;
  #stopped = false;

  constructor(
    readonly maxBytes: number,
    readonly onFrame: (bytes: Uint8Array) => void,
    readonly onOversize: (declared: number) => void,
  ) {}

  /** Ignores everything from now on and lets go of the buffer. */
  stop(): void {
    this.#stopped = true;
    this.#buf = new Uint8Array(0);
    this.#start = this.#end = 0;
  }

  push(chunk: Uint8Array): void {
    if (this.#stopped) return;
    // Frames that lie whole in the chunk, taken from it directly while nothing waits in the buffer.
    let at = 0;
    while (this.#end === 0) {
      const n = this.#frameAt(chunk, at, chunk.byteLength);
      if (n < 0) break;
      this.onFrame(chunk.slice(at + 4, at + 4 + n));
      if (this.#stopped) return;
      at += 4 + n;
    }
    if (this.#stopped || at === chunk.byteLength) return;
    this.#append(chunk.subarray(at));
    for (;;) {
      const n = this.#frameAt(this.#buf, this.#start, this.#end);
      if (n < 0) break;
      const frame = this.#buf.slice(this.#start + 4, this.#start + 4 + n);
      this.#start += 4 + n;
      this.onFrame(frame);
      if (this.#stopped) return;
    }
    // Drained: a silent connection keeps no buffer.
    if (this.#start === this.#end) {
      this.#buf = new Uint8Array(0);
      this.#start = this.#end = 0;
    }
  }

  /** The length of the whole frame at `at` in bytes[at, end), or -1 when it is not all there (or over the limit: stopped). */
  #frameAt(bytes: Uint8Array, at: number, end: number): number {
    if (this.#stopped || end - at < 4) return -1;
    const n = new DataView(bytes.buffer, bytes.byteOffset + at, 4).getUint32(0, true);
    if (n > this.maxBytes) {
      this.stop();
      this.onOversize(n);
      return -1;
    }
    return end - at - 4 >= n ? n : -1;
  }

  #append(bytes: Uint8Array): void {
    const live = this.#end - this.#start;
    if (this.#end + bytes.byteLength > this.#buf.byteLength) {
      if (live + bytes.byteLength <= this.#buf.byteLength / 2) {
        // Moving the live bytes down frees at least as much room as they take: amortized linear.
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = new Uint8Array(Math.max(256, 2 * (live + bytes.byteLength)));
        grown.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = grown;
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(bytes, this.#end);
    this.#end += bytes.byteLength;
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
  #unsent = 0;
  #ending = false;

  constructor(
    readonly socket: Bun.Socket<unknown>,
    readonly maxUnsentBytes = Number.POSITIVE_INFINITY,
  ) {}

  /** Queues `bytes`; false (nothing queued) when the peer already leaves more than maxUnsentBytes unread. */
  send(bytes: Uint8Array): boolean {
    if (this.#ending) return true;
    if (this.#unsent + bytes.byteLength > this.maxUnsentBytes) return false;
    this.#queue.push(bytes);
    this.#unsent += bytes.byteLength;
    if (this.#queue.length === 1) this.flush();
    return true;
  }

  /** Closes the connection once what is queued is written. */
  end(): void {
    this.#ending = true;
    if (this.#queue.length === 0) this.socket.end();
  }

  flush(): void {
    while (this.#queue.length > 0) {
      const head = this.#queue[0] as Uint8Array;
      const n = this.socket.write(head);
      if (n < 0) {
        this.#queue = [];
        this.#unsent = 0;
        return;
      }
      this.#unsent -= n;
      if (n < head.byteLength) {
        this.#queue[0] = head.subarray(n);
        return;
      }
      this.#queue.shift();
    }
    if (this.#ending) this.socket.end();
  }
}

interface Waiting {
  keys: string[];
  any: boolean;
  respond(): void;
  timer: Timer;
  conn: ServerConn;
}

/** One client connection: its frames, its replies, its job once it said hello, its pending waits. */
interface ServerConn {
  socket: Bun.Socket<ServerConn>;
  reader: FrameReader;
  out: Outbox;
  job: string | null;
  waits: Set<Waiting>;
  closed: boolean;
}

export interface StoreServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** The job it serves (jobIdFromEnv); clients of another job are refused. Default DEFAULT_JOB_ID. */
  job?: string;
}

export class StoreServer {
  readonly host: string;
  readonly port: number;
  readonly job: string;
  #values = new Map<string, Value>();
  #waiting = new Set<Waiting>();
  #conns = new Set<ServerConn>();
  #listener: Bun.TCPSocketListener<ServerConn>;

  private constructor(o: StoreServerOptions) {
    this.host = o.host;
    this.job = o.job ?? DEFAULT_JOB_ID;
    this.#listener = Bun.listen<ServerConn>({
      hostname: o.host,
      port: o.port,
      socket: {
        open: (s) => this.#open(s),
        data: (s, chunk) => s.data.reader.push(chunk),
        drain: (s) => s.data.out.flush(),
        close: (s) => this.#drop(s.data),
        error: (s) => this.#drop(s.data),
      },
    });
    this.port = this.#listener.port;
  }

  /** Binds host:port; a taken port is a StoreError that says so (never a silent other port). */
  static listen(o: StoreServerOptions): StoreServer {
    try {
      return new StoreServer(o);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "EADDRINUSE") {
        throw new StoreError(
          `rendezvous store: port ${o.port} on ${o.host} is in use (EADDRINUSE); choose another MASTER_PORT, or 0 for a free one`,
        );
      }
      throw new StoreError(`rendezvous store: cannot listen on ${o.host}:${o.port}: ${code ?? ""} ${(e as Error).message}`);
    }
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  /** What the store holds now: open connections, pending waits, keys (for tests and diagnostics). */
  get stats(): { connections: number; waits: number; keys: number } {
    return { connections: this.#conns.size, waits: this.#waiting.size, keys: this.#values.size };
  }

  #open(s: Bun.Socket<ServerConn>): void {
    s.setNoDelay(true);
    const c: ServerConn = {
      socket: s,
      out: new Outbox(s as Bun.Socket<unknown>, MAX_UNSENT_BYTES),
      job: null,
      waits: new Set(),
      closed: false,
      reader: new FrameReader(
        MAX_FRAME_BYTES,
        (bytes) => this.#handle(c, bytes),
        (declared) => {
          this.#reply(c, {
            id: -1,
            ok: false,
            error: `frame of ${declared} bytes refused: the store's limit is ${MAX_FRAME_BYTES} bytes (1 MiB)`,
          });
          this.#hangUp(c);
        },
      ),
    };
    s.data = c;
    this.#conns.add(c);
  }

  /** The connection is gone: its waits end with it (their timers too). */
  #drop(c: ServerConn | undefined): void {
    if (!c || c.closed) return;
    c.closed = true;
    c.reader.stop();
    for (const w of c.waits) {
      clearTimeout(w.timer);
      this.#waiting.delete(w);
    }
    c.waits.clear();
    this.#conns.delete(c);
  }

  /** Sends what is queued, then closes; reads nothing more. */
  #hangUp(c: ServerConn): void {
    c.reader.stop();
    c.out.end();
  }

  #reply(c: ServerConn, r: Response): void {
    if (c.closed) return;
    // A client that does not read its replies is cut off rather than buffered for.
    if (!c.out.send(encode(r))) {
      c.socket.terminate();
      this.#drop(c);
    }
  }

  #handle(c: ServerConn, bytes: Uint8Array): void {
    let raw: unknown;
    try {
      raw = packr.unpack(bytes);
    } catch (e) {
      this.#reply(c, { id: -1, ok: false, error: `bad request: not one msgpack value (${(e as Error).message})` });
      return;
    }
    const req = parseRequest(raw);
    if ("error" in req) {
      this.#reply(c, { id: req.id, ok: false, error: req.error });
      return;
    }
    const reply = (r: Omit<Response, "id">) => this.#reply(c, { id: req.id, ...r });
    if (c.job === null) {
      if (req.op !== "hello") {
        reply({ ok: false, error: `${req.op} before hello: the first request on a connection must be a hello with the job id` });
        this.#hangUp(c);
      } else if (req.job !== this.job) {
        reply({ ok: false, error: `job mismatch: this store serves job ${describe(this.job)}, not job ${describe(req.job)}` });
        this.#hangUp(c);
      } else {
        c.job = req.job;
        reply({ ok: true });
      }
      return;
    }
    switch (req.op) {
      case "hello":
        reply({ ok: false, error: "hello: this connection has already said hello" });
        return;
      case "set": {
        let size: number;
        try {
          size = packr.pack(req.value).byteLength;
        } catch (e) {
          reply({ ok: false, error: `set: the value cannot be stored: ${(e as Error).message}` });
          return;
        }
        if (size > MAX_VALUE_BYTES) {
          reply({ ok: false, error: `set: the value takes ${size} bytes encoded, more than the store's limit of ${MAX_VALUE_BYTES}` });
          return;
        }
        this.#values.set(req.key, req.value);
        reply({ ok: true });
        this.#wake();
        return;
      }
      case "add": {
        const old = this.#values.get(req.key) ?? 0;
        if (typeof old !== "number") {
          reply({ ok: false, error: `add: key ${describe(req.key)} holds a ${typeof old}, not a number` });
          return;
        }
        const v = old + req.delta;
        if (!Number.isFinite(v)) {
          reply({ ok: false, error: `add: ${old} + ${req.delta} at key ${describe(req.key)} is not a finite number` });
          return;
        }
        this.#values.set(req.key, v);
        reply({ ok: true, value: v });
        this.#wake();
        return;
      }
      case "delete":
        reply({ ok: true, value: this.#values.delete(req.key) });
        return;
      case "get":
      case "wait": {
        const keys = req.op === "get" ? [req.key] : req.keys;
        const any = req.op === "wait" && req.any;
        const answer = () => (req.op === "get" ? this.#values.get(req.key) : any ? keys.find((k) => this.#values.has(k)) : true);
        if (this.#ready(keys, any)) {
          reply({ ok: true, value: answer() });
          return;
        }
        if (req.timeoutMs <= 0) {
          reply({ ok: false, error: "timeout" });
          return;
        }
        const w: Waiting = {
          keys,
          any,
          conn: c,
          respond: () => reply({ ok: true, value: answer() }),
          timer: setTimeout(() => {
            this.#waiting.delete(w);
            c.waits.delete(w);
            reply({ ok: false, error: "timeout" });
          }, req.timeoutMs),
        };
        this.#waiting.add(w);
        c.waits.add(w);
        return;
      }
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
      w.conn.waits.delete(w);
      w.respond();
    }
  }

  /** Stops accepting; open connections stay until their clients close them (their replies are not cut). */
  close(): void {
    for (const w of this.#waiting) clearTimeout(w.timer);
    this.#waiting.clear();
    for (const c of this.#conns) c.waits.clear();
    this.#listener.stop(false);
  }
}

export interface StoreClientOptions {
  /** How long to keep retrying the connection (default 30 s). */
  connectTimeoutMs?: number;
  /** This process's job (jobIdFromEnv); the store refuses another job's clients. Default DEFAULT_JOB_ID. */
  job?: string;
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
   * then fails with "unreachable master host:port after N s". Then says hello with the job id: a
   * store of another job refuses it, and that is a StoreError naming both jobs.
   */
  static async connect(host: string, port: number, o: StoreClientOptions = {}): Promise<StoreClient> {
    const address = `${host}:${port}`;
    const timeoutMs = o.connectTimeoutMs ?? 30_000;
    const job = o.job ?? DEFAULT_JOB_ID;
    const start = performance.now();
    let delay = 20;
    let lastError = "";
    let client: StoreClient | null = null;
    const reader = new FrameReader(
      MAX_FRAME_BYTES,
      (b) => client?.onFrame(b),
      (declared) => {
        client?.fail(
          `the server at ${address} sent a frame of ${declared} bytes, over the store's limit of ${MAX_FRAME_BYTES}: is it a lightseq store?`,
        );
        client?.close();
      },
    );
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
        break;
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
    const r = await client.#call({ op: "hello", job }, "hello");
    if (!r.ok) {
      client.close();
      throw new StoreError(
        `the store at ${address} refused this process (job ${describe(job)}, from LIGHTSEQ_JOB_ID, TORCHELASTIC_RUN_ID or SLURM_JOB_ID): ${r.error}; two jobs are using one MASTER_ADDR:MASTER_PORT: give each its own MASTER_PORT`,
      );
    }
    return client;
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
    let r: Response;
    try {
      r = packr.unpack(bytes) as Response;
    } catch (e) {
      this.fail(`the store at ${this.address} sent an unreadable reply: ${(e as Error).message}`);
      return;
    }
    const p = this.#pending.get(r?.id);
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

  async #call(req: Body, what: string): Promise<Response> {
    if (this.#closed !== null) throw new StoreError(`${what}: ${this.#closed}`);
    const id = this.#nextId++;
    const frame = encode({ id, ...req });
    if (frame.byteLength - 4 > MAX_FRAME_BYTES)
      throw new StoreError(
        `${what}: the request takes ${frame.byteLength - 4} bytes, over the store's limit of ${MAX_FRAME_BYTES} (1 MiB)`,
      );
    // Server-side waits answer "timeout" themselves; this timer only covers a silent server.
    const wait = "timeoutMs" in req ? req.timeoutMs : 0;
    const backstop = Math.min(MAX_TIMEOUT_MS, wait + (wait > 0 ? 5_000 : 30_000));
    let timer: Timer | undefined;
    try {
      return await new Promise<Response>((resolve, reject) => {
        this.#pending.set(id, { resolve, reject });
        timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new StoreError(`${what}: no answer from the store at ${this.address} after ${(backstop / 1000).toFixed(1)} s`));
        }, backstop);
        this.#out.send(frame);
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
    const r = await this.#call({ op: "wait", keys, timeoutMs, any: false }, `wait`);
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
