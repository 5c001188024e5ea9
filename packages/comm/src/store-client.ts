// Rendezvous store client: what a rank uses to reach the StoreServer of store-server.ts. It connects
// with retries (the server may start after it), says hello with its job id (a store of another job
// refuses it, and that is an error naming both jobs), then pairs each request with its reply by id.
// The server answers a wait's timeout itself; the client keeps its own timer too, in case the server
// goes away silently. Every method rejects with a StoreError naming the store's address.

import { splitAddress } from "./mesh.ts";
import {
  type Body,
  DEFAULT_JOB_ID,
  describe,
  encode,
  FrameReader,
  MAX_FRAME_BYTES,
  MAX_TIMEOUT_MS,
  Outbox,
  packr,
  type Response,
  StoreError,
  type Value,
} from "./store-wire.ts";

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
