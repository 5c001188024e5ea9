// The CPU backend's transport: one stream socket between every pair of ranks (a full mesh), carrying
// the frames of mesh-wire.ts. Unix domain sockets in Linux's abstract namespace by default: on the
// development VM they move 0.6-0.8 GiB/s against ~0.2 GiB/s for loopback TCP, and abstract names
// leave no files behind; loopback TCP stays available (`transport: "tcp"`, host 127.0.0.1). A full
// mesh and not a star through rank 0, because point-to-point traffic (the ring exchanges of DistAttn)
// goes straight to its peer, and the direct collectives of cpu.ts move 2(P-1)/P of the buffer per
// rank, as a ring does, where a star would push P times the buffer through rank 0 (at P <= 8, at most
// 28 connections). The first frame on a connection is a `hello` from the connecting (higher) rank,
// the last one a `bye` sent by destroy(); a connection that closes without `bye` means the peer died:
// the whole mesh fails and every pending and later receive rejects. Each header is checked
// (mesh-wire.ts) before anything is allocated for its payload; a frame that comes before its receive
// is posted is read into a fresh buffer (zero pages, committed as the bytes arrive) and checked when
// the receive is posted.

import { Packr } from "msgpackr";
import {
  type Expected,
  type Frame,
  FrameKind,
  frameBytes,
  HEADER_BYTES,
  type Header,
  headerProblem,
  MAX_ABORT_BYTES,
  MAX_HELLO_BYTES,
  mismatch,
  readHeader,
  tagOf,
} from "./mesh-wire.ts";

/** Payloads below this are copied behind their header and written with one call. */
const COALESCE_BYTES = 64 * 1024;

/** Why the mesh stopped working; the communicator wraps it into a CommError naming the operation. */
export class MeshFailure extends Error {
  override name = "MeshFailure";
  constructor(
    message: string,
    /** World ranks to blame, if any. */
    readonly peers: readonly number[] = [],
  ) {
    super(message);
  }
}

interface Waiter {
  resolve(f: Frame): void;
  reject(e: Error): void;
  want: Expected;
}

/** Frames of one (tag, peer) pair, and the receives waiting for them, both first in first out. */
class Inbox {
  readonly frames: Frame[] = [];
  readonly waiters: Waiter[] = [];
}

interface PendingWrite {
  buf: Uint8Array;
  off: number;
  /** This buffer ends a frame (false for the header of a frame whose payload follows separately). */
  endsFrame: boolean;
  resolve(): void;
  reject(e: Error): void;
}

interface SocketData {
  conn: Conn | null;
}

type Sock = Bun.Socket<SocketData>;

/** One TCP connection to one peer: a frame parser on the way in, a backpressured queue on the way out. */
class Conn {
  peer = -1;
  #queue: PendingWrite[] = [];
  #header = new Uint8Array(HEADER_BYTES);
  #headerFill = 0;
  #current: { tag: number; kind: number; dtype: number; payload: Uint8Array; fill: number } | null = null;
  /** A refused header stopped the parsing: the rest of the stream is dropped. */
  #discarding = false;
  byeReceived = false;
  closed = false;
  /** The bytes written so far end on a frame boundary (an abort frame may be slipped in). */
  #atBoundary = true;

  constructor(
    readonly mesh: Mesh,
    readonly socket: Sock,
  ) {}

  write(buf: Uint8Array, endsFrame = true): Promise<void> {
    if (this.closed) return Promise.reject(new MeshFailure(`connection to rank ${this.peer} is closed`, [this.peer]));
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ buf, off: 0, endsFrame, resolve, reject });
      if (this.#queue.length === 1) this.flush();
    });
  }

  /** Best effort, after failWrites: tells the peer why we give up, unless a frame was cut short. */
  sendAbort(frame: Uint8Array): void {
    if (!this.closed && this.#atBoundary && this.peer >= 0) this.socket.write(frame);
  }

  /** Writes as much of the queue as the socket takes; the rest goes on `drain`. */
  flush(): void {
    while (this.#queue.length > 0) {
      const w = this.#queue[0] as PendingWrite;
      const n = w.buf.byteLength - w.off > 0 ? this.socket.write(w.off === 0 ? w.buf : w.buf.subarray(w.off)) : 0;
      if (n < 0) {
        // The peer's end is closed. Bun may say so to a write before the close event, which comes
        // once the bytes already received (perhaps the peer's goodbye) are read: leave the verdict
        // to that event (gone without goodbye: the mesh fails, naming the peer; after goodbye: it
        // destroyed its communicator), so the error does not depend on which one this rank saw
        // first. Only if no close event comes are the writes failed here.
        const e = new MeshFailure(`write to rank ${this.peer} failed: the connection is closed`, [this.peer]);
        setTimeout(() => this.failWrites(e), 1_000).unref();
        return;
      }
      if (n > 0) this.#atBoundary = false;
      w.off += n;
      if (w.off < w.buf.byteLength) return;
      this.#queue.shift();
      if (w.endsFrame) this.#atBoundary = true;
      w.resolve();
    }
  }

  get idle(): boolean {
    return this.#queue.length === 0;
  }

  failWrites(e: Error): void {
    const q = this.#queue;
    this.#queue = [];
    for (const w of q) w.reject(e);
  }

  /** Parses frames out of one chunk of bytes; a chunk may hold many frames or a piece of one. */
  onData(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.byteLength && !this.#discarding) {
      const cur = this.#current;
      if (cur === null) {
        const take = Math.min(HEADER_BYTES - this.#headerFill, chunk.byteLength - at);
        this.#header.set(chunk.subarray(at, at + take), this.#headerFill);
        this.#headerFill += take;
        at += take;
        if (this.#headerFill < HEADER_BYTES) return;
        this.#headerFill = 0;
        const header = readHeader(this.#header);
        const payload = this.mesh.payloadFor(this, header);
        if (payload === null) {
          this.#discarding = true;
          return;
        }
        const next = { tag: header.tag, kind: header.kind, dtype: header.dtype, payload, fill: 0 };
        if (header.bytes === 0) this.#deliver(next);
        else this.#current = next;
        continue;
      }
      const take = Math.min(cur.payload.byteLength - cur.fill, chunk.byteLength - at);
      cur.payload.set(chunk.subarray(at, at + take), cur.fill);
      cur.fill += take;
      at += take;
      if (cur.fill === cur.payload.byteLength) {
        this.#current = null;
        this.#deliver(cur);
      }
    }
  }

  #deliver(f: Frame): void {
    if (f.kind === FrameKind.hello) this.mesh.onHello(this, f);
    else if (f.kind === FrameKind.bye) {
      this.byeReceived = true;
      this.mesh.onBye(this.peer);
    } else if (f.kind === FrameKind.abort) {
      this.mesh.fail(new MeshFailure(`rank ${this.peer} gave up: ${new TextDecoder().decode(f.payload)}`, [this.peer]));
    } else this.mesh.deliver(this.peer, f);
  }
}

export type Transport = "unix" | "tcp";

export interface MeshOptions {
  /** World rank and size. */
  rank: number;
  size: number;
  /** "unix" (default): abstract Unix sockets, one host only; "tcp": TCP on `host`. */
  transport?: Transport;
  /** TCP only: address to listen on; loopback by default (the machines' network rules). */
  host?: string;
  /** Connections carry this id in their hello; a connection from another job is refused. */
  session: string;
}

const packr = new Packr();

/**
 * The connections of one process to every other rank. Communicators (the world one and its splits)
 * share it and hold a reference each; the last release says goodbye and closes the sockets.
 */
export class Mesh {
  readonly rank: number;
  readonly size: number;
  readonly session: string;
  readonly host: string;
  readonly transport: Transport;
  #conns: (Conn | null)[];
  #listener: { stop(closeActiveConnections?: boolean): void } | null = null;
  #inboxes = new Map<number, Inbox[]>();
  #failure: MeshFailure | null = null;
  #gone = new Set<number>();
  #connected: { resolve(): void; reject(e: Error): void } | null = null;
  #refs = 0;
  #tags = new Set<number>();
  #closed = false;

  constructor(o: MeshOptions) {
    this.rank = o.rank;
    this.size = o.size;
    this.session = o.session;
    this.host = o.host ?? "127.0.0.1";
    this.transport = o.transport ?? "unix";
    this.#conns = new Array(o.size).fill(null);
  }

  get failure(): MeshFailure | null {
    return this.#failure;
  }

  /** Starts listening; returns the address for the peers: "unix:<abstract name>" or "tcp:<host>:<port>". */
  listen(): string {
    const socket = { ...this.#handlers(), open: (s: Sock) => void (s.data = { conn: new Conn(this, s) }) };
    if (this.transport === "unix") {
      // A leading NUL puts the name in Linux's abstract namespace: no file, gone with the process.
      const name = `\0lightseq-${tagOf(this.session).toString(16)}-${this.rank}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
      this.#listener = Bun.listen<SocketData>({ unix: name, socket });
      return `unix:${name}`;
    }
    const listener = Bun.listen<SocketData>({ hostname: this.host, port: 0, socket });
    this.#listener = listener;
    return `tcp:${this.host}:${listener.port}`;
  }

  /**
   * Connects to every lower rank at `addresses[p]` and waits until every higher rank has connected
   * to us. Rejects with the ranks still missing after `timeoutMs`.
   */
  async connect(addresses: readonly string[], timeoutMs: number): Promise<void> {
    const start = performance.now();
    const all = new Promise<void>((resolve, reject) => {
      this.#connected = { resolve, reject };
    });
    this.#checkConnected();
    const handlers = this.#handlers();
    for (let p = 0; p < this.rank; p++) {
      const address = addresses[p] as string;
      let socket: Sock;
      try {
        if (address.startsWith("unix:")) {
          socket = await Bun.connect<SocketData>({ unix: address.slice(5), data: { conn: null }, socket: handlers });
        } else {
          const [host, port] = splitAddress(address.replace(/^tcp:/, ""));
          socket = await Bun.connect<SocketData>({ hostname: host, port, data: { conn: null }, socket: handlers });
        }
      } catch (e) {
        throw new MeshFailure(`could not connect to rank ${p} at ${JSON.stringify(address)}: ${(e as Error).message}`, [p]);
      }
      if (this.transport === "tcp") socket.setNoDelay(true);
      const conn = new Conn(this, socket);
      conn.peer = p;
      socket.data.conn = conn;
      this.#conns[p] = conn;
      await conn.write(frameBytes(0, FrameKind.hello, 0, packr.pack({ rank: this.rank, size: this.size, session: this.session })));
    }
    this.#checkConnected();
    let timer: Timer | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const missing = this.#conns.map((c, p) => (c === null && p !== this.rank ? p : -1)).filter((p) => p >= 0);
        reject(
          new MeshFailure(
            `ranks ${missing.join(", ")} did not connect within ${((performance.now() - start) / 1000).toFixed(1)} s`,
            missing,
          ),
        );
      }, timeoutMs);
    });
    try {
      await Promise.race([all, timeout]);
    } finally {
      clearTimeout(timer);
    }
    // Every peer is connected: nobody else may connect (accepted sockets stay open).
    this.#listener?.stop(false);
    this.#listener = null;
  }

  #checkConnected(): void {
    if (this.#connected && this.#conns.every((c, p) => c !== null || p === this.rank)) {
      this.#connected.resolve();
      this.#connected = null;
    }
  }

  #handlers() {
    return {
      data: (s: Sock, chunk: Uint8Array) => {
        const conn = s.data.conn;
        if (conn !== null) conn.onData(chunk);
      },
      drain: (s: Sock) => s.data.conn?.flush(),
      close: (s: Sock) => this.#onClose(s.data.conn),
      error: (s: Sock, e: Error) => this.#onClose(s.data.conn, e),
    };
  }

  onHello(conn: Conn, f: Frame): void {
    let hello: { rank?: unknown; size?: unknown; session?: unknown };
    try {
      hello = packr.unpack(f.payload) as typeof hello;
    } catch {
      conn.socket.terminate();
      return;
    }
    const r = hello.rank;
    if (
      hello.session !== this.session ||
      hello.size !== this.size ||
      typeof r !== "number" ||
      r <= this.rank ||
      r >= this.size ||
      this.#conns[r] !== null
    ) {
      // Not one of ours (another job on this port, or a duplicate rank): refuse it.
      conn.socket.terminate();
      return;
    }
    conn.peer = r;
    if (this.transport === "tcp") conn.socket.setNoDelay(true);
    this.#conns[r] = conn;
    this.#checkConnected();
  }

  onBye(peer: number): void {
    this.#gone.add(peer);
    // A receive already waiting on this peer can never be served.
    for (const boxes of this.#inboxes.values()) {
      const box = boxes[peer];
      if (box && box.waiters.length > 0 && box.frames.length === 0) {
        this.fail(new MeshFailure(`rank ${peer} destroyed its communicator while this rank still expected data from it`, [peer]));
        return;
      }
    }
  }

  #onClose(conn: Conn | null, e?: Error): void {
    if (conn === null || conn.closed) return;
    conn.closed = true;
    if (conn.peer < 0 || this.#closed) return;
    if (conn.byeReceived) {
      conn.failWrites(new MeshFailure(`rank ${conn.peer} has destroyed its communicator`, [conn.peer]));
      return;
    }
    this.fail(
      new MeshFailure(
        `rank ${conn.peer} closed its connection without saying goodbye (it exited, crashed or aborted)${e ? `: ${e.message}` : ""}`,
        [conn.peer],
      ),
    );
  }

  /**
   * Breaks the mesh: every pending and later receive and write rejects with `failure`, and every
   * peer is told why (an abort frame), so that their errors name the first cause, not just "rank r
   * closed its connection" when this process exits next.
   */
  fail(failure: MeshFailure): void {
    if (this.#failure !== null) return;
    this.#failure = failure;
    for (const boxes of this.#inboxes.values()) {
      for (const box of boxes) {
        if (!box) continue;
        const ws = box.waiters.splice(0);
        for (const w of ws) w.reject(failure);
      }
    }
    for (const c of this.#conns) c?.failWrites(failure);
    this.#connected?.reject(failure);
    this.#connected = null;
    if (!this.#closed) {
      const why = frameBytes(0, FrameKind.abort, 0, new TextEncoder().encode(failure.message.slice(0, MAX_ABORT_BYTES / 4)));
      for (const c of this.#conns) c?.sendAbort(why);
    }
  }

  #inbox(tag: number, peer: number): Inbox {
    let boxes = this.#inboxes.get(tag);
    if (!boxes) {
      boxes = new Array(this.size);
      this.#inboxes.set(tag, boxes);
    }
    let box = boxes[peer];
    if (!box) box = boxes[peer] = new Inbox();
    return box;
  }

  /**
   * Where the payload of a frame whose header just came on `conn` is read into, or null to read
   * nothing more from it (the checks of mesh-wire.ts): the posted receive's own buffer when the next receive in
   * line gave one, else a fresh one. Nothing is allocated for a header that is refused.
   */
  payloadFor(conn: Conn, h: Header): Uint8Array | null {
    const peer = conn.peer;
    if (peer < 0) {
      if (h.kind === FrameKind.hello && h.bytes <= MAX_HELLO_BYTES) return new Uint8Array(h.bytes);
      // Not a rank of this job (a rank's first frame is a small hello): refused, as a bad hello is.
      conn.socket.terminate();
      return null;
    }
    if (this.#failure !== null) return null;
    const problem = headerProblem(peer, h, this.#inboxes.get(h.tag)?.[peer]?.waiters[0]?.want);
    if (problem !== null) {
      this.fail(new MeshFailure(problem, [peer]));
      return null;
    }
    const into = this.#inboxes.get(h.tag)?.[peer]?.waiters[0]?.want.into;
    if (into && into.byteLength === h.bytes) return into;
    try {
      return new Uint8Array(h.bytes);
    } catch (e) {
      this.fail(
        new MeshFailure(`rank ${peer} sent a frame of ${h.bytes} bytes that this process cannot allocate: ${(e as Error).message}`, [peer]),
      );
      return null;
    }
  }

  /** A whole data frame from `peer`: to the receive waiting for it, if it is the one expected, or queued. */
  deliver(peer: number, f: Frame): void {
    const box = this.#inbox(f.tag, peer);
    const w = box.waiters[0];
    if (!w) {
      box.frames.push(f);
      return;
    }
    // Checked here too: the receive may have been posted after the header came.
    const problem = mismatch(peer, { ...f, bytes: f.payload.byteLength }, w.want);
    if (problem !== null) {
      this.fail(new MeshFailure(problem, [peer]));
      return;
    }
    box.waiters.shift();
    w.resolve(f);
  }

  /**
   * The next frame from `peer` on communicator `tag` (its place in line is taken now, at the call),
   * which must be what `want` says (else the mesh fails, naming the peer). With `want.into`, the
   * payload is written there when the receive is posted before the frame comes (then
   * frame.payload === into).
   */
  recv(peer: number, tag: number, want: Expected): Promise<Frame> {
    const box = this.#inbox(tag, peer);
    const f = box.frames.shift();
    if (f) {
      const problem = mismatch(peer, { ...f, bytes: f.payload.byteLength }, want);
      if (problem === null) return Promise.resolve(f);
      this.fail(new MeshFailure(problem, [peer]));
      return Promise.reject(this.#failure);
    }
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#gone.has(peer))
      return Promise.reject(new MeshFailure(`rank ${peer} destroyed its communicator; nothing more will come from it`, [peer]));
    return new Promise<Frame>((resolve, reject) => box.waiters.push({ resolve, reject, want }));
  }

  /** Sends one frame; resolves when all of it is handed to the kernel (the buffer may then be reused). */
  send(peer: number, tag: number, kind: FrameKind, dtype: number, payload: Uint8Array): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    const conn = this.#conns[peer];
    if (!conn) return Promise.reject(new MeshFailure(`no connection to rank ${peer}`, [peer]));
    if (payload.byteLength < COALESCE_BYTES) return conn.write(frameBytes(tag, kind, dtype, payload));
    const header = frameBytes(tag, kind, dtype, payload, false);
    void conn.write(header, false).catch(() => {});
    return conn.write(payload);
  }

  /** Registers a communicator tag; two communicators of one process must never share one. */
  claimTag(tag: number): void {
    if (this.#tags.has(tag)) throw new Error(`communicator tag ${tag} is already in use in this process`);
    this.#tags.add(tag);
  }

  releaseTag(tag: number): void {
    this.#tags.delete(tag);
    this.#inboxes.delete(tag);
  }

  retain(): void {
    this.#refs++;
  }

  /** Drops a reference; the last one says goodbye to every peer and closes. */
  async release(): Promise<void> {
    if (--this.#refs > 0 || this.#closed) return;
    if (this.#failure === null) {
      const bye = frameBytes(0, FrameKind.bye, 0, new Uint8Array(0));
      await Promise.allSettled(this.#conns.map((c) => (c && !c.closed ? c.write(bye) : undefined)));
    }
    this.#close();
  }

  /** Fails the mesh (peers get the reason) and closes every connection; peers fail fast. */
  abort(reason: string): void {
    this.fail(new MeshFailure(reason));
    this.#close();
  }

  #close(): void {
    this.#closed = true;
    for (const c of this.#conns) {
      if (!c || c.closed) continue;
      c.closed = true;
      c.socket.end();
    }
    this.#listener?.stop(false);
    this.#listener = null;
  }
}

export function splitAddress(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  const port = Number(addr.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port)) throw new Error(`bad address ${JSON.stringify(addr)}: expected host:port`);
  return [addr.slice(0, i), port];
}
