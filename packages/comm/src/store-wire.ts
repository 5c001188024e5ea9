// The rendezvous store's wire format, shared by its server (store-server.ts) and client
// (store-client.ts): frames, limits and request validation. Both ways a frame is a u32 little-endian
// length (at most MAX_FRAME_BYTES), then one msgpack value; requests are
// { id, op: "hello", job } | { id, op: "set", key, value } | { id, op: "get", key, timeoutMs? } |
// { id, op: "add", key, delta } | { id, op: "wait", keys, timeoutMs?, any? } | { id, op: "delete", key },
// responses { id, ok: true, value? } | { id, ok: false, error }. FrameReader assembles frames in time
// linear in their size, keeps no buffer while a connection is silent and allocates nothing for a
// frame over the limit; parseRequest checks every field of a request (README "What the store and the
// mesh protect against"), so a bad one becomes an error reply, never a changed value.

import { Packr } from "msgpackr";

export class StoreError extends Error {
  override name = "StoreError";
}

/** Largest frame either side accepts: requests and values are small (addresses, ids: a few KiB). */
export const MAX_FRAME_BYTES = 1 << 20;
/** Largest value `set` takes, encoded: a get's reply (value + id + ok) must fit in one frame. */
export const MAX_VALUE_BYTES = MAX_FRAME_BYTES - 64;
/** Replies a client leaves unread (its socket full); past this it is disconnected, not buffered for. */
export const MAX_UNSENT_BYTES = 16 * MAX_FRAME_BYTES;
/** setTimeout's limit (~24.8 days): a longer wait would fire at once. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;
/** The longest job id a store accepts (env.ts jobIdFromEnv refuses longer ones up front). */
export const MAX_JOB_ID_CHARS = 256;

/** The job id of a process that finds none of the variables of jobIdFromEnv (env.ts). */
export const DEFAULT_JOB_ID = "default";

export const packr = new Packr({ useRecords: false });

export type Value = unknown;

/** What a request asks, by op; `id` pairs it with its response. */
export type Body =
  | { op: "hello"; job: string }
  | { op: "set"; key: string; value: Value }
  | { op: "get"; key: string; timeoutMs: number }
  | { op: "add"; key: string; delta: number }
  /** any: resolve when any (instead of all) of the keys exists; the value is the key found. */
  | { op: "wait"; keys: string[]; timeoutMs: number; any: boolean }
  | { op: "delete"; key: string };
type Op = Body["op"];
type Request = Body & { id: number };

export interface Response {
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
export function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v instanceof Uint8Array) return `${v.byteLength} bytes of binary`;
  return `a ${Object.prototype.toString.call(v).slice(8, -1)}`;
}

/** A decoded frame as a request, or why it is not one (reply with `id`: -1 when the frame has none). */
export function parseRequest(raw: unknown): Request | { id: number; error: string } {
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

export function encode(v: unknown): Uint8Array {
  const body = packr.pack(v);
  const out = new Uint8Array(4 + body.byteLength);
  new DataView(out.buffer).setUint32(0, body.byteLength, true);
  out.set(body, 4);
  return out;
}

/** Writes with backpressure: what the socket does not take now goes out on `drain`. */
export class Outbox {
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
