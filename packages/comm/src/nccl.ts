// The NCCL backend: the Communicator of communicator.ts on CUDA tensors, through bun:ffi.
//
// Library: nccl-ffi.ts (declarations, loading, errors).
//
// Init: ncclCommInitRankScalable(&comm, nranks, rank, 1, &id, NULL) with the 128-byte id made by
// rank 0 (ncclGetUniqueId) and shared through the rendezvous store. bun:ffi cannot pass a struct by
// value, so ncclCommInitRank(comm, n, id, r) is not callable; the scalable form takes the id by
// pointer (NCCL >= 2.23; with nId = 1 it is ncclCommInitRankConfig). Init and split block the
// thread until every rank has joined (they are collective).
//
// Watchdog: each issued operation (or group) records an event on each stream it used. A poller on
// the event loop checks the events and ncclCommGetAsyncError; an operation not finished within the
// timeout aborts the communicator (ncclCommAbort makes the stuck kernels return) and fails with a
// CommError naming it, its peers and the time waited. It runs only while the JS thread is free: a
// blocking host sync on a hung stream (stream.synchronize(), to("cpu")) stalls it, so wait for
// communication with `await comm.wait()` / `barrier()`, which poll. By default a watchdog failure is
// fatal (the message goes to stderr and the process exits 1, so the launcher stops the other
// ranks, as torch does); `watchdog: "throw"` leaves it to the next call on the communicator.
//
// Copy-engine send/recv: after `enableCopyEngine()` (initCommunicator does it for
// LIGHTSEQ_P2P=copy-engine), sends and receives between ranks of one host go through
// experimental/copy-engine.ts (no SMs used) instead of ncclSend/ncclRecv; collectives stay on NCCL.

import { Event, type Stream, setDevice } from "@lightseq/cuda";
import { currentStream, type Device, empty, type Tensor } from "@lightseq/tensor";
import {
  type AllReduceOptions,
  assertRank,
  assertReduceOp,
  type BackendName,
  CommError,
  type Communicator,
  checkPair,
  checkTensor,
  fmtRanks,
  fmtSeconds,
  type ReduceOp,
  rejectHandled,
  type StreamOption,
} from "./communicator.ts";
import type { CopyEngineConfig, P2PTransport } from "./env.ts";
import { CopyEngineP2P } from "./experimental/copy-engine.ts";
import { cstr, IN_PROGRESS, NCCL_DTYPE, NCCL_OP, NcclError, nccl, ncclCheck, SPLIT_NOCOLOR } from "./nccl-ffi.ts";

// ---------------------------------------------------------------------------------------------

export interface NcclCommunicatorOptions {
  rank: number;
  size: number;
  /** CUDA device index this rank drives (set before init; the communicator is bound to it). */
  device: number;
  /** The 128-byte unique id from rank 0. */
  id: Uint8Array;
  timeoutMs: number;
  /** What a watchdog failure does: "exit" (default) prints it and exits 1; "throw" waits for the next call. */
  watchdog?: "exit" | "throw";
}

interface Issued {
  name: string;
  peers: readonly number[];
  events: Event[];
  start: number;
}

interface OpenGroup {
  depth: number;
  names: string[];
  peers: Set<number>;
  streams: Set<Stream>;
  error: Error | null;
}

const POLL_MS = 50;

export class NcclCommunicator implements Communicator {
  readonly backend: BackendName = "nccl";
  readonly rank: number;
  readonly size: number;
  readonly device: Device;
  /** The CUDA device index (device.index). */
  readonly deviceIndex: number;
  #comm: number;
  readonly #timeoutMs: number;
  readonly #watchdog: "exit" | "throw";
  #issued: Issued[] = [];
  #eventPool: Event[] = [];
  #poller: Timer | null = null;
  #failure: CommError | null = null;
  #group: OpenGroup | null = null;
  #barrierScratch: Tensor | null = null;
  #ce: CopyEngineP2P | null = null;
  #destroyed = false;
  readonly #out = new BigUint64Array(new ArrayBuffer(8));
  readonly #outI32 = new Int32Array(new ArrayBuffer(4));

  private constructor(comm: number, rank: number, size: number, device: number, timeoutMs: number, watchdog: "exit" | "throw") {
    this.#comm = comm;
    this.rank = rank;
    this.size = size;
    this.deviceIndex = device;
    this.device = { kind: "cuda", index: device };
    this.#timeoutMs = timeoutMs;
    this.#watchdog = watchdog;
  }

  /** Collective and blocking: returns once every rank has called it with the same id. */
  static init(o: NcclCommunicatorOptions): NcclCommunicator {
    if (o.id.byteLength !== 128) throw new CommError("ncclInit", `the unique id must be 128 bytes, got ${o.id.byteLength}`);
    setDevice(o.device);
    const f = nccl();
    const out = new BigUint64Array(new ArrayBuffer(8));
    // A private copy over its own ArrayBuffer: the id may arrive as a view into a larger pooled buffer.
    const id = new Uint8Array(new ArrayBuffer(128));
    id.set(o.id);
    ncclCheck(
      f.ncclCommInitRankScalable(out, o.size, o.rank, 1, id, null),
      "ncclCommInitRankScalable",
      null,
      `rank ${o.rank} of ${o.size}, cuda:${o.device}`,
    );
    return new NcclCommunicator(Number(out[0]), o.rank, o.size, o.device, o.timeoutMs, o.watchdog ?? "exit");
  }

  get handle(): number {
    return this.#comm;
  }

  /** How sends and receives between local ranks travel: "copy-engine" once enableCopyEngine() ran. */
  get p2pTransport(): P2PTransport {
    return this.#ce ? "copy-engine" : "nccl";
  }

  /** The peers reached through the copy engines (empty with the NCCL transport). */
  get copyEnginePeers(): number[] {
    return this.#ce?.peers ?? [];
  }

  /**
   * Collective: sets up the copy-engine transport (experimental/copy-engine.ts) for sends and receives between
   * ranks of this host. Every rank must call it, with the same config, before its next operation.
   */
  async enableCopyEngine(config?: CopyEngineConfig): Promise<void> {
    this.#throwIfBroken("enableCopyEngine");
    if (this.#group) throw new CommError("group", "enableCopyEngine cannot be called inside a group");
    if (this.#ce) return;
    this.#ce = await CopyEngineP2P.setup(
      {
        rank: this.rank,
        size: this.size,
        device: this.deviceIndex,
        allGather: async (input, output) => {
          await this.allGather(input, output);
          await this.wait();
        },
      },
      config,
    );
  }

  // -------------------------------------------------------------------------------------------

  send(t: Tensor, peer: number, o: StreamOption = {}): Promise<void> {
    return this.#p2p("send", t, peer, o);
  }

  recv(t: Tensor, peer: number, o: StreamOption = {}): Promise<void> {
    return this.#p2p("recv", t, peer, o);
  }

  #p2p(dir: "send" | "recv", t: Tensor, peer: number, o: StreamOption): Promise<void> {
    const name = `${dir} ${dir === "send" ? "to" : "from"} rank ${peer}`;
    return this.#issue(name, [peer], () => {
      checkTensor(dir, "t", t, "cuda");
      this.#checkDevice(dir, t);
      assertRank(dir, "peer", peer, this.size);
      const s = o.stream ?? currentStream(this.deviceIndex);
      const ce = this.#ce;
      if (ce?.handles(peer)) {
        ce.post(dir, t, peer, s);
        // Inside a group the messages are issued at the group's end, together; alone, now.
        if (this.#group === null) ce.flush();
        return [s];
      }
      const fn = dir === "send" ? nccl().ncclSend : nccl().ncclRecv;
      ncclCheck(
        fn(t.ptr(), t.numel, NCCL_DTYPE[t.dtype], peer, this.#comm, s.handle),
        dir === "send" ? "ncclSend" : "ncclRecv",
        this.#comm,
        `${t.describe()}, peer ${peer}`,
      );
      return [s];
    });
  }

  group(post: () => void): Promise<void> {
    const outer = this.#group === null;
    if (outer) {
      try {
        this.#throwIfBroken("group");
        setDevice(this.deviceIndex);
        ncclCheck(nccl().ncclGroupStart(), "ncclGroupStart", this.#comm);
      } catch (e) {
        return Promise.reject(e);
      }
      this.#group = { depth: 0, names: [], peers: new Set(), streams: new Set(), error: null };
    }
    const g = this.#group as OpenGroup;
    g.depth++;
    try {
      const r = post() as unknown;
      if (r instanceof Promise)
        g.error ??= new CommError(
          "group",
          "the callback must be synchronous (it returned a promise): post sends and receives without awaiting them",
        );
    } catch (e) {
      g.error ??= e as Error;
    } finally {
      g.depth--;
    }
    if (!outer) return Promise.resolve();
    this.#group = null;
    // The copy-engine messages first (they only enqueue stream work, never wait for the peers), then
    // NCCL's. As with NCCL, what was posted before a refused post is issued.
    try {
      this.#ce?.flush();
    } catch (e) {
      g.error ??= e as Error;
    }
    // ncclGroupEnd must balance ncclGroupStart even when a post failed; what was posted before the
    // failure is issued by it, so the watchdog tracks that too.
    const code = nccl().ncclGroupEnd();
    try {
      ncclCheck(code, "ncclGroupEnd", this.#comm, `group(${g.names.join(", ")})`);
      if (g.names.length > 0) this.#track(`group(${g.names.join(", ")})`, [...g.peers], [...g.streams]);
    } catch (e) {
      return Promise.reject(g.error ?? e);
    }
    return g.error ? Promise.reject(g.error) : Promise.resolve();
  }

  allReduce(t: Tensor, op: ReduceOp, o: AllReduceOptions = {}): Promise<void> {
    return this.#collective("allReduce", () => {
      checkTensor("allReduce", "t", t, "cuda");
      this.#checkDevice("allReduce", t);
      assertReduceOp("allReduce", op);
      const out = o.out ?? t;
      if (o.out) {
        checkTensor("allReduce", "out", o.out, "cuda");
        checkPair("allReduce", t, "t", o.out, "out", t.numel);
      }
      const s = o.stream ?? currentStream(this.deviceIndex);
      ncclCheck(
        nccl().ncclAllReduce(t.ptr(), out.ptr(), t.numel, NCCL_DTYPE[t.dtype], NCCL_OP[op], this.#comm, s.handle),
        "ncclAllReduce",
        this.#comm,
        `${t.describe()}, ${op}`,
      );
      return s;
    });
  }

  allGather(input: Tensor, output: Tensor, o: StreamOption = {}): Promise<void> {
    return this.#collective("allGather", () => {
      checkTensor("allGather", "input", input, "cuda");
      checkTensor("allGather", "output", output, "cuda");
      this.#checkDevice("allGather", input);
      checkPair("allGather", input, "input", output, "output", input.numel * this.size);
      const s = o.stream ?? currentStream(this.deviceIndex);
      ncclCheck(
        nccl().ncclAllGather(input.ptr(), output.ptr(), input.numel, NCCL_DTYPE[input.dtype], this.#comm, s.handle),
        "ncclAllGather",
        this.#comm,
        `${input.describe()} -> ${output.describe()}`,
      );
      return s;
    });
  }

  reduceScatter(input: Tensor, output: Tensor, op: ReduceOp, o: StreamOption = {}): Promise<void> {
    return this.#collective("reduceScatter", () => {
      checkTensor("reduceScatter", "input", input, "cuda");
      checkTensor("reduceScatter", "output", output, "cuda");
      this.#checkDevice("reduceScatter", output);
      assertReduceOp("reduceScatter", op);
      checkPair("reduceScatter", output, "output", input, "input", output.numel * this.size);
      const s = o.stream ?? currentStream(this.deviceIndex);
      ncclCheck(
        nccl().ncclReduceScatter(input.ptr(), output.ptr(), output.numel, NCCL_DTYPE[input.dtype], NCCL_OP[op], this.#comm, s.handle),
        "ncclReduceScatter",
        this.#comm,
        `${input.describe()} -> ${output.describe()}, ${op}`,
      );
      return s;
    });
  }

  broadcast(t: Tensor, root: number, o: StreamOption = {}): Promise<void> {
    return this.#collective("broadcast", () => {
      checkTensor("broadcast", "t", t, "cuda");
      this.#checkDevice("broadcast", t);
      assertRank("broadcast", "root", root, this.size);
      const s = o.stream ?? currentStream(this.deviceIndex);
      ncclCheck(
        nccl().ncclBroadcast(t.ptr(), t.ptr(), t.numel, NCCL_DTYPE[t.dtype], root, this.#comm, s.handle),
        "ncclBroadcast",
        this.#comm,
        `${t.describe()}, root ${root}`,
      );
      return s;
    });
  }

  /** An all-reduce of one element, then a polled wait for it (the host does not block the watchdog). */
  async barrier(): Promise<void> {
    this.#throwIfBroken("barrier");
    if (this.#barrierScratch === null)
      this.#barrierScratch = empty([1], { dtype: "f32", device: { kind: "cuda", index: this.deviceIndex } });
    const scratch = this.#barrierScratch;
    await this.#collective("barrier", () => {
      const s = currentStream(this.deviceIndex);
      ncclCheck(
        nccl().ncclAllReduce(scratch.ptr(), scratch.ptr(), 1, NCCL_DTYPE.f32, NCCL_OP.sum, this.#comm, s.handle),
        "ncclAllReduce",
        this.#comm,
        "barrier",
      );
      return s;
    });
    await this.wait();
  }

  /** Polls until everything issued so far has completed; fails like the watchdog after the timeout. */
  async wait(timeoutMs = this.#timeoutMs): Promise<void> {
    // Yield-only polling for the first 2 ms (a barrier's ranks leave within microseconds of each other,
    // not within a sleep's granularity), then sleeps backing off to 2 ms.
    const start = performance.now();
    let sleep = 0;
    for (;;) {
      this.#poll(timeoutMs);
      this.#throwIfBroken("wait");
      if (this.#issued.length === 0) return;
      await Bun.sleep(sleep);
      if (performance.now() - start > 2) sleep = Math.min(sleep + 0.25, 2);
    }
  }

  /** Polls `s` until it is idle; fails like the watchdog (without aborting) after the timeout. */
  async #waitStream(s: Stream, what: string): Promise<void> {
    const start = performance.now();
    while (!s.query()) {
      const waited = performance.now() - start;
      if (waited > this.#timeoutMs)
        throw new CommError(
          what,
          `did not complete within ${fmtSeconds(waited)} on cuda:${this.deviceIndex} (rank ${this.rank})`,
          [],
          waited,
        );
      await Bun.sleep(1);
    }
  }

  async split(color: number, key: number): Promise<Communicator | null> {
    if (!Number.isInteger(color) || !Number.isInteger(key))
      throw new CommError("split", `color and key must be integers, got ${color}, ${key}`);
    this.#throwIfBroken("split");
    if (this.#group) throw new CommError("group", "only send and recv may be posted inside a group; split was called");
    setDevice(this.deviceIndex);
    const f = nccl();
    this.#out[0] = 0n;
    ncclCheck(
      f.ncclCommSplit(this.#comm, color < 0 ? SPLIT_NOCOLOR : color, key, this.#out, null),
      "ncclCommSplit",
      this.#comm,
      `color ${color}, key ${key}`,
    );
    const child = Number(this.#out[0]);
    if (color < 0 || child === 0) return null;
    ncclCheck(f.ncclCommUserRank(child, this.#outI32), "ncclCommUserRank", child);
    const rank = this.#outI32[0] as number;
    ncclCheck(f.ncclCommCount(child, this.#outI32), "ncclCommCount", child);
    const size = this.#outI32[0] as number;
    const sub = new NcclCommunicator(child, rank, size, this.deviceIndex, this.#timeoutMs, this.#watchdog);
    // The child gets the parent's transport (collective over the child's ranks, who all split here).
    if (this.#ce) await sub.enableCopyEngine(this.#ce.config);
    return sub;
  }

  abort(reason = "abort() called"): void {
    if (this.#comm === 0) return;
    this.#failure ??= new CommError("abort", `rank ${this.rank} aborted the communicator: ${reason}`);
    this.#stopPoller();
    const comm = this.#comm;
    this.#comm = 0;
    try {
      this.#ce?.release();
    } catch {
      // Best effort: the communicator is broken either way.
    }
    nccl().ncclCommAbort(comm);
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    if (this.#comm !== 0 && this.#failure === null) {
      try {
        await this.wait();
      } catch {
        // The watchdog aborted the communicator; there is nothing left to finalize.
      }
    }
    this.#stopPoller();
    if (this.#ce) {
      const broken = this.#failure !== null || this.#comm === 0;
      await this.#ce.close((st) => this.#waitStream(st, "destroy (copy-engine drain)"), !broken);
      this.#ce = null;
    }
    this.#barrierScratch?.dispose();
    this.#barrierScratch = null;
    for (const e of this.#eventPool) e.dispose();
    this.#eventPool = [];
    if (this.#comm === 0) return;
    const comm = this.#comm;
    this.#comm = 0;
    setDevice(this.deviceIndex);
    ncclCheck(nccl().ncclCommFinalize(comm), "ncclCommFinalize", comm);
    ncclCheck(nccl().ncclCommDestroy(comm), "ncclCommDestroy", null);
  }

  // -------------------------------------------------------------------------------------------
  // Machinery

  #checkDevice(what: string, t: Tensor): void {
    const d = t.device;
    if (d.kind === "cuda" && d.index !== this.deviceIndex)
      throw new CommError(what, `tensor is on cuda:${d.index}; this communicator drives cuda:${this.deviceIndex}`);
  }

  #throwIfBroken(name: string): void {
    if (this.#failure)
      throw new CommError(name, `the communicator is broken: ${this.#failure.message}`, this.#failure.peers, this.#failure.waitedMs);
    if (this.#destroyed || this.#comm === 0) throw new CommError(name, "the communicator was destroyed");
  }

  /** Runs `post` (which calls NCCL and returns the streams it used) and tracks it; errors become a rejected promise. */
  #issue(name: string, peers: readonly number[], post: () => Stream[]): Promise<void> {
    try {
      this.#throwIfBroken(name);
      setDevice(this.deviceIndex);
      const g = this.#group;
      if (g) {
        const streams = post();
        g.names.push(name);
        for (const p of peers) g.peers.add(p);
        for (const s of streams) g.streams.add(s);
        return Promise.resolve();
      }
      this.#track(name, peers, post());
      return Promise.resolve();
    } catch (e) {
      if (this.#group) {
        this.#group.error ??= e as Error;
        return rejectHandled(e);
      }
      return Promise.reject(e);
    }
  }

  #collective(name: string, post: () => Stream): Promise<void> {
    if (this.#group) {
      const e = new CommError("group", `only send and recv may be posted inside a group; ${name} was called`);
      this.#group.error ??= e;
      return rejectHandled(e);
    }
    const all = Array.from({ length: this.size }, (_, r) => r).filter((r) => r !== this.rank);
    return this.#issue(name, all, () => [post()]);
  }

  #track(name: string, peers: readonly number[], streams: readonly Stream[]): void {
    const events = streams.map((s) => (this.#eventPool.pop() ?? Event.create(this.deviceIndex)).record(s));
    this.#issued.push({ name, peers, events, start: performance.now() });
    if (this.#poller === null) {
      this.#poller = setInterval(() => this.#poll(this.#timeoutMs), POLL_MS);
      this.#poller.unref();
    }
  }

  #stopPoller(): void {
    if (this.#poller !== null) clearInterval(this.#poller);
    this.#poller = null;
  }

  /** Retires finished operations; fails the communicator on an async error or an overdue operation. */
  #poll(timeoutMs: number): void {
    if (this.#failure || this.#comm === 0) return;
    try {
      const f = nccl();
      ncclCheck(f.ncclCommGetAsyncError(this.#comm, this.#outI32), "ncclCommGetAsyncError", this.#comm);
      const asyncError = this.#outI32[0] as number;
      if (asyncError !== 0 && asyncError !== IN_PROGRESS) {
        const op = this.#issued[0];
        const waited = op ? performance.now() - op.start : 0;
        const e = new NcclError(
          "ncclCommGetAsyncError",
          asyncError,
          cstr(f.ncclGetErrorString(asyncError)),
          cstr(f.ncclGetLastError(this.#comm)),
        );
        this.#fail(
          new CommError(
            op?.name ?? "communicator",
            `NCCL reported an asynchronous error after ${fmtSeconds(waited)}: ${e.message}`,
            op?.peers ?? [],
            waited,
          ),
        );
        return;
      }
      while (this.#issued.length > 0) {
        const op = this.#issued[0] as Issued;
        if (!op.events.every((e) => e.query())) break;
        this.#issued.shift();
        this.#eventPool.push(...op.events);
      }
      const oldest = this.#issued[0];
      if (oldest) {
        const waited = performance.now() - oldest.start;
        if (waited > timeoutMs) {
          this.#fail(
            new CommError(
              oldest.name,
              `did not complete within ${fmtSeconds(waited)} on cuda:${this.deviceIndex} (rank ${this.rank} of ${this.size}; waiting on ${fmtRanks([...oldest.peers])}; timeout ${fmtSeconds(timeoutMs)}, LIGHTSEQ_COMM_TIMEOUT_MS); the communicator was aborted`,
              oldest.peers,
              waited,
            ),
          );
        }
      } else this.#stopPoller();
    } catch (e) {
      this.#fail(e instanceof CommError ? e : new CommError("watchdog", (e as Error).message));
    }
  }

  #fail(e: CommError): void {
    if (this.#failure) return;
    this.#failure = e;
    this.#issued = [];
    this.abort(e.message);
    if (this.#watchdog === "exit") {
      console.error(`[lightseq/comm] watchdog: ${e.message}; exiting`);
      process.exit(1);
    }
  }
}
