// Rendezvous store server: a small TCP key-value server (the idea of torch's TCPStore) where ranks
// meet at start-up: they publish their addresses and the NCCL unique id, check they agree on
// WORLD_SIZE, and wait for each other. Hosted by the launcher on node 0 or, without a launcher, by
// rank 0. The first request on a connection is a hello with the job id; the store answers only
// clients of its own job, so a second job pointed at the same MASTER_ADDR:MASTER_PORT is refused by
// name instead of mixing its keys with ours. Waits (get of a missing key, wait for keys) are held
// until the keys exist or their timeout passes. Against bad input (README "What the store and the
// mesh protect against"): requests are validated by store-wire.ts and a bad one gets an error reply;
// a frame over the limit gets an error naming it and the connection is closed; a client that leaves
// its replies unread is cut off; a connection's waits end with it. There is no authentication.

import {
  DEFAULT_JOB_ID,
  describe,
  encode,
  FrameReader,
  MAX_FRAME_BYTES,
  MAX_UNSENT_BYTES,
  MAX_VALUE_BYTES,
  Outbox,
  packr,
  parseRequest,
  type Response,
  StoreError,
  type Value,
} from "./store-wire.ts";

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
