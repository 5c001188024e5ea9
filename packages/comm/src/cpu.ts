// The CPU backend: the Communicator of communicator.ts over the loopback mesh of mesh.ts, one
// process per rank, on CPU tensors (f32, bf16, i32). It exists so that everything above it runs
// multi-rank in CI with the same semantics as NCCL.
//
// Algorithms (n elements, P ranks, chunk c = elements [floor(c*n/P), floor((c+1)*n/P))):
//   allReduce      direct reduce-scatter then all-gather: rank c receives chunk c from every rank,
//                  reduces it, and sends the result to every rank. 2(P-1)/P of the buffer per rank.
//   reduceScatter  the first half of allReduce.     allGather   every rank sends its input to all.
//   broadcast      root sends to every rank.         barrier     an empty frame to and from all.
// Every pair exchanges exactly one frame per phase (empty when its chunk is), so frames match by order.
//
// Arithmetic: cpu-reduce.ts (rank order, f32 accumulation, one rounding for bf16), the same on
// every rank whatever order the frames arrive in.

import { CPU, type Device, type Tensor } from "@lightseq/tensor";
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
  splitMembers,
} from "./communicator.ts";
import { type ReduceResult, reduceInRankOrder } from "./cpu-reduce.ts";
import { Mesh, MeshFailure } from "./mesh.ts";
import { DTYPE_CODE, type Frame, FrameKind, tagOf } from "./mesh-wire.ts";

type DT = keyof typeof DTYPE_CODE;

/** One posted send or recv, waiting for its group to be issued. */
interface P2p {
  dir: "send" | "recv";
  t: Tensor;
  peer: number;
}

/** Sends and receives posted inside group(); `depth` counts nested groups. */
interface OpenGroup {
  depth: number;
  ops: P2p[];
  error: Error | null;
  done: Deferred;
}

/** What an operation is doing right now, for the message of a timeout or a failure. */
interface Running {
  name: string;
  start: number;
  /** Per local rank: frames this rank still waits for from it plus writes to it not yet out. */
  outstanding: Map<number, number>;
}

function waitingOn(r: Running): number[] {
  return [...r.outstanding]
    .filter(([, n]) => n > 0)
    .map(([p]) => p)
    .sort((a, b) => a - b);
}

/** A promise settled from outside: the one promise every send/recv of a group hands out. */
interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(e: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // The caller may await only the group; the per-operation copies must not count as unhandled.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

export interface CpuCommunicatorOptions {
  /** Per-operation timeout in ms (see communicator.ts). */
  timeoutMs: number;
}

function bytesOf(t: Tensor, start = 0, count = t.numel): Uint8Array {
  const d = t.data();
  return new Uint8Array(d.buffer, d.byteOffset + start * d.BYTES_PER_ELEMENT, count * d.BYTES_PER_ELEMENT);
}

/** Marks `p` as handled (it may be awaited late, after another wait failed) and returns it. */
function handled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

function chunkStart(c: number, n: number, p: number): number {
  return Math.floor((c * n) / p);
}

export class CpuCommunicator implements Communicator {
  readonly backend: BackendName = "cpu";
  readonly device: Device = CPU;
  readonly rank: number;
  readonly size: number;
  readonly #mesh: Mesh;
  readonly #tag: number;
  /** World rank of each local rank. */
  readonly #world: readonly number[];
  readonly #timeoutMs: number;
  #tail: Promise<void> = Promise.resolve();
  #group: OpenGroup | null = null;
  #running: Running | null = null;
  #splits = 0;
  #scratchBuffers: Uint8Array[] = [];
  #reusables = new Map<string, ArrayBuffer>();
  #destroyed = false;
  #abortReason: string | null = null;

  constructor(mesh: Mesh, tag: number, world: readonly number[], rank: number, o: CpuCommunicatorOptions) {
    this.#mesh = mesh;
    this.#tag = tag;
    this.#world = world;
    this.rank = rank;
    this.size = world.length;
    this.#timeoutMs = o.timeoutMs;
    mesh.claimTag(tag);
    mesh.retain();
  }

  /** The communicator of a single process: no sockets, every operation is local. */
  static single(o: CpuCommunicatorOptions): CpuCommunicator {
    return new CpuCommunicator(new Mesh({ rank: 0, size: 1, session: "single" }), 0, [0], 0, o);
  }

  // -------------------------------------------------------------------------------------------
  // Point to point

  send(t: Tensor, peer: number, _o?: StreamOption): Promise<void> {
    return this.#p2p({ dir: "send", t, peer });
  }

  recv(t: Tensor, peer: number, _o?: StreamOption): Promise<void> {
    return this.#p2p({ dir: "recv", t, peer });
  }

  #p2p(op: P2p): Promise<void> {
    try {
      checkTensor(op.dir, "t", op.t, "cpu");
      assertRank(op.dir, "peer", op.peer, this.size);
    } catch (e) {
      if (this.#group) {
        this.#group.error ??= e as Error;
        return rejectHandled(e);
      }
      return Promise.reject(e);
    }
    if (this.#group) {
      this.#group.ops.push(op);
      return this.#group.done.promise;
    }
    if (op.peer === this.rank) {
      return Promise.reject(
        new CommError(
          op.dir,
          `a ${op.dir} to or from oneself must be posted in a group together with its matching ${op.dir === "send" ? "recv" : "send"}`,
          [op.peer],
        ),
      );
    }
    return this.#enqueue(`${op.dir} ${op.dir === "send" ? "to" : "from"} rank ${op.peer}`, () => this.#runGroup([op]));
  }

  group(post: () => void): Promise<void> {
    const outer = this.#group === null;
    if (outer) this.#group = { depth: 0, ops: [], error: null, done: deferred() };
    const g = this.#group as OpenGroup;
    g.depth++;
    let thrown: unknown = null;
    try {
      const r = post() as unknown;
      if (r instanceof Promise)
        thrown = new CommError(
          "group",
          "the callback must be synchronous (it returned a promise): post sends and receives without awaiting them",
        );
    } catch (e) {
      thrown = e;
    } finally {
      g.depth--;
    }
    if (!outer) return thrown ? Promise.reject(thrown) : Promise.resolve();
    this.#group = null;
    const err = thrown ?? g.error ?? this.#checkSelfPairs(g.ops);
    if (err) {
      // Nothing was issued; peers will time out on their side (as with NCCL, a rank-local error is
      // the caller's to handle, usually by exiting).
      const e = err instanceof CommError ? err : new CommError("group", (err as Error).message);
      g.done.reject(e);
      return Promise.reject(e);
    }
    const ops = g.ops;
    const name = `group(${ops.map((o) => `${o.dir} ${o.dir === "send" ? "to" : "from"} ${o.peer}`).join(", ")})`;
    const run = this.#enqueue(name, () => this.#runGroup(ops));
    run.then(g.done.resolve, g.done.reject);
    return run;
  }

  /** Sends to oneself must match receives from oneself, in posting order (checked before anything is issued). */
  #checkSelfPairs(ops: P2p[]): CommError | null {
    const sends = ops.filter((o) => o.dir === "send" && o.peer === this.rank);
    const recvs = ops.filter((o) => o.dir === "recv" && o.peer === this.rank);
    if (sends.length !== recvs.length)
      return new CommError("group", `${sends.length} send(s) to self but ${recvs.length} receive(s) from self`, [this.rank]);
    try {
      for (const [i, r] of recvs.entries())
        checkPair("group: recv from self", (sends[i] as P2p).t, "sent tensor", r.t, "receive tensor", (sends[i] as P2p).t.numel);
    } catch (e) {
      return e as CommError;
    }
    return null;
  }

  async #runGroup(ops: P2p[]): Promise<void> {
    const self: Tensor[] = [];
    const writes: Promise<void>[] = [];
    const reads: Promise<void>[] = [];
    // Receives take their place in line first, in posting order, then the sends go out.
    for (const op of ops) {
      if (op.dir === "recv" && op.peer !== this.rank) reads.push(this.#recvInto(op.peer, FrameKind.p2p, op.t, 0, op.t.numel));
    }
    for (const op of ops) {
      if (op.peer === this.rank) {
        if (op.dir === "send") self.push(op.t);
        continue;
      }
      if (op.dir === "send") writes.push(this.#sendChunk(op.peer, FrameKind.p2p, op.t, 0, op.t.numel));
    }
    // Sends to oneself match receives from oneself in posting order (sizes checked by group()).
    const selfRecvs = ops.filter((o) => o.dir === "recv" && o.peer === this.rank);
    for (const [i, r] of selfRecvs.entries()) r.t.data().set((self[i] as Tensor).data() as never);
    await Promise.all([...writes, ...reads]);
  }

  // -------------------------------------------------------------------------------------------
  // Collectives

  allReduce(t: Tensor, op: ReduceOp, o: AllReduceOptions = {}): Promise<void> {
    return this.#collective("allReduce", () => {
      checkTensor("allReduce", "t", t, "cpu");
      assertReduceOp("allReduce", op);
      const out = o.out ?? t;
      if (o.out) {
        checkTensor("allReduce", "out", o.out, "cpu");
        checkPair("allReduce", t, "t", o.out, "out", t.numel);
      }
      return async () => {
        const n = t.numel;
        const P = this.size;
        const mine = [chunkStart(this.rank, n, P), chunkStart(this.rank + 1, n, P)] as const;
        // Phase 1: chunk c of the input goes to rank c; this rank reduces its own chunk.
        const sends: Promise<void>[] = [];
        const inputs: Promise<Frame>[] = [];
        for (let p = 0; p < P; p++) {
          if (p === this.rank) continue;
          const bytes = (mine[1] - mine[0]) * t.data().BYTES_PER_ELEMENT;
          inputs[p] = this.#recvFrame(p, FrameKind.allReduce, t.dtype, bytes, this.#scratch(p, bytes));
          sends.push(this.#sendChunk(p, FrameKind.allReduce, t, chunkStart(p, n, P), chunkStart(p + 1, n, P) - chunkStart(p, n, P)));
        }
        const reduced = await this.#reduce(t, op, mine[0], mine[1] - mine[0], inputs);
        await Promise.all(sends);
        // Phase 2: every rank's reduced chunk goes to every rank.
        const outputs: Promise<void>[] = [];
        for (let p = 0; p < P; p++) {
          if (p === this.rank) continue;
          outputs.push(this.#recvInto(p, FrameKind.allReduce, out, chunkStart(p, n, P), chunkStart(p + 1, n, P) - chunkStart(p, n, P)));
        }
        out.data().set(reduced as never, mine[0]);
        for (let p = 0; p < P; p++)
          if (p !== this.rank) outputs.push(this.#sendChunk(p, FrameKind.allReduce, out, mine[0], mine[1] - mine[0]));
        await Promise.all(outputs);
      };
    });
  }

  reduceScatter(input: Tensor, output: Tensor, op: ReduceOp, _o?: StreamOption): Promise<void> {
    return this.#collective("reduceScatter", () => {
      checkTensor("reduceScatter", "input", input, "cpu");
      checkTensor("reduceScatter", "output", output, "cpu");
      assertReduceOp("reduceScatter", op);
      checkPair("reduceScatter", output, "output", input, "input", output.numel * this.size);
      return async () => {
        const n = output.numel;
        const sends: Promise<void>[] = [];
        const inputs: Promise<Frame>[] = [];
        for (let p = 0; p < this.size; p++) {
          if (p === this.rank) continue;
          inputs[p] = this.#recvFrame(p, FrameKind.reduceScatter, input.dtype, output.bytes, this.#scratch(p, output.bytes));
          sends.push(this.#sendChunk(p, FrameKind.reduceScatter, input, p * n, n));
        }
        const reduced = await this.#reduce(input, op, this.rank * n, n, inputs);
        output.data().set(reduced as never);
        await Promise.all(sends);
      };
    });
  }

  allGather(input: Tensor, output: Tensor, _o?: StreamOption): Promise<void> {
    return this.#collective("allGather", () => {
      checkTensor("allGather", "input", input, "cpu");
      checkTensor("allGather", "output", output, "cpu");
      checkPair("allGather", input, "input", output, "output", input.numel * this.size);
      return async () => {
        const n = input.numel;
        const pending: Promise<void>[] = [];
        for (let p = 0; p < this.size; p++) if (p !== this.rank) pending.push(this.#recvInto(p, FrameKind.allGather, output, p * n, n));
        for (let p = 0; p < this.size; p++) if (p !== this.rank) pending.push(this.#sendChunk(p, FrameKind.allGather, input, 0, n));
        // This rank's own block, unless the input already is that block (in place).
        const own = output.data().subarray(this.rank * n, (this.rank + 1) * n);
        const src = input.data();
        if (own.byteOffset !== src.byteOffset || own.buffer !== src.buffer) own.set(src as never);
        await Promise.all(pending);
      };
    });
  }

  broadcast(t: Tensor, root: number, _o?: StreamOption): Promise<void> {
    return this.#collective("broadcast", () => {
      checkTensor("broadcast", "t", t, "cpu");
      assertRank("broadcast", "root", root, this.size);
      return async () => {
        if (this.rank === root) {
          const sends: Promise<void>[] = [];
          for (let p = 0; p < this.size; p++) if (p !== root) sends.push(this.#sendChunk(p, FrameKind.broadcast, t, 0, t.numel));
          await Promise.all(sends);
        } else {
          await this.#recvInto(root, FrameKind.broadcast, t, 0, t.numel);
        }
      };
    });
  }

  barrier(): Promise<void> {
    return this.#collective("barrier", () => async () => {
      const pending: Promise<unknown>[] = [];
      const empty = new Uint8Array(0);
      for (let p = 0; p < this.size; p++) {
        if (p === this.rank) continue;
        pending.push(this.#recvFrame(p, FrameKind.barrier, null, 0));
        pending.push(this.#write(p, FrameKind.barrier, 0, empty));
      }
      await Promise.all(pending);
    });
  }

  /** Operations run in issue order, so waiting for the tail waits for all of them. */
  async wait(_timeoutMs?: number): Promise<void> {
    await this.#tail;
    this.#throwIfBroken("wait");
  }

  async split(color: number, key: number): Promise<Communicator | null> {
    if (!Number.isInteger(color) || !Number.isInteger(key))
      throw new CommError("split", `color and key must be integers, got ${color}, ${key}`);
    const index = this.#splits++;
    let entries: { color: number; key: number }[] = [];
    await this.#collective("split", () => async () => {
      // An all-gather of (color, key) over the parent.
      const mine = new Int32Array([color, key]);
      const all = new Int32Array(2 * this.size);
      all.set(mine, 2 * this.rank);
      const pending: Promise<void>[] = [];
      for (let p = 0; p < this.size; p++) {
        if (p === this.rank) continue;
        pending.push(
          this.#recvFrame(p, FrameKind.split, "i32", 8).then((f) => {
            all.set(new Int32Array(f.payload.buffer, f.payload.byteOffset, 2), 2 * p);
          }),
        );
        pending.push(this.#write(p, FrameKind.split, DTYPE_CODE.i32, new Uint8Array(mine.buffer)));
      }
      await Promise.all(pending);
      entries = Array.from({ length: this.size }, (_, p) => ({ color: all[2 * p] as number, key: all[2 * p + 1] as number }));
    });
    if (color < 0) return null;
    const members = splitMembers(entries, color);
    const tag = tagOf(`${this.#tag}/${index}/${color}`);
    return new CpuCommunicator(
      this.#mesh,
      tag,
      members.map((r) => this.#world[r] as number),
      members.indexOf(this.rank),
      { timeoutMs: this.#timeoutMs },
    );
  }

  abort(reason = "abort() called"): void {
    if (this.#abortReason !== null) return;
    this.#abortReason = reason;
    this.#mesh.abort(`rank ${this.rank} aborted the communicator: ${reason}`);
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    await this.#tail;
    this.#mesh.releaseTag(this.#tag);
    await this.#mesh.release();
  }

  // -------------------------------------------------------------------------------------------
  // Machinery

  /** Validates now (so errors point at the caller), then runs after every earlier operation. */
  #collective(name: string, prepare: () => () => Promise<void>): Promise<void> {
    if (this.#group) {
      const e = new CommError("group", `only send and recv may be posted inside a group; ${name} was called`);
      this.#group.error ??= e;
      return rejectHandled(e);
    }
    let body: () => Promise<void>;
    try {
      body = prepare();
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue(name, body);
  }

  #enqueue(name: string, body: () => Promise<void>): Promise<void> {
    const run = this.#tail.then(() => this.#execute(name, body));
    this.#tail = run.catch(() => {});
    return run;
  }

  #throwIfBroken(name: string): void {
    if (this.#destroyed) throw new CommError(name, "the communicator was destroyed");
    const f = this.#mesh.failure;
    if (f) throw new CommError(name, `the communicator is broken: ${f.message}`, f.peers);
  }

  async #execute(name: string, body: () => Promise<void>): Promise<void> {
    this.#throwIfBroken(name);
    const running: Running = { name, start: performance.now(), outstanding: new Map() };
    this.#running = running;
    const timer = setTimeout(() => {
      const peers = waitingOn(running);
      const waited = performance.now() - running.start;
      this.#mesh.fail(
        new MeshFailure(
          `timed out after ${fmtSeconds(waited)} waiting for ${peers.length ? fmtRanks(peers.map((p) => this.#world[p] as number)) : "local work"} (timeout ${fmtSeconds(this.#timeoutMs)}, LIGHTSEQ_COMM_TIMEOUT_MS)`,
          peers.map((p) => this.#world[p] as number),
        ),
      );
    }, this.#timeoutMs);
    try {
      await body();
    } catch (e) {
      const waited = performance.now() - running.start;
      if (e instanceof MeshFailure) {
        const still = waitingOn(running);
        const where = this.size === this.#mesh.size ? "" : ` (ranks are world ranks)`;
        throw new CommError(
          name,
          `${e.message}; this rank (${this.#worldName()}) had waited ${fmtSeconds(waited)}${still.length ? `, still expecting ${fmtRanks(still.map((p) => this.#world[p] as number))}` : ""}${where}`,
          e.peers,
          waited,
        );
      }
      throw e;
    } finally {
      clearTimeout(timer);
      this.#running = null;
    }
  }

  #worldName(): string {
    const w = this.#world[this.rank] as number;
    return this.size === this.#mesh.size ? `rank ${w} of ${this.size}` : `rank ${this.rank} of ${this.size}, world rank ${w}`;
  }

  /** Counts `p` as outstanding with `peer` until it settles; marks it handled (it may be awaited late or never). */
  #track<T>(peer: number, p: Promise<T>): Promise<T> {
    const running = this.#running;
    if (running) {
      running.outstanding.set(peer, (running.outstanding.get(peer) ?? 0) + 1);
      p.then(() => running.outstanding.set(peer, (running.outstanding.get(peer) ?? 1) - 1)).catch(() => {});
    }
    p.catch(() => {});
    return p;
  }

  #write(peer: number, kind: FrameKind, dtype: number, bytes: Uint8Array): Promise<void> {
    return this.#track(peer, this.#mesh.send(this.#world[peer] as number, this.#tag, kind, dtype, bytes));
  }

  #sendChunk(peer: number, kind: FrameKind, t: Tensor, start: number, count: number): Promise<void> {
    return this.#write(peer, kind, DTYPE_CODE[t.dtype], bytesOf(t, start, count));
  }

  /**
   * A receive buffer per peer for the reductions, kept between operations: fresh memory costs a page
   * fault per 4 KiB on first touch, which on the development VM is slower than the copy itself.
   */
  #scratch(peer: number, bytes: number): Uint8Array {
    let b = this.#scratchBuffers[peer];
    if (!b || b.byteLength < bytes) b = this.#scratchBuffers[peer] = new Uint8Array(bytes);
    return b.subarray(0, bytes);
  }

  /** The next frame from `peer`; the mesh checks it against what this rank expects (kind, dtype, size). */
  #recvFrame(peer: number, kind: FrameKind, dtype: DT | null, bytes: number, into?: Uint8Array): Promise<Frame> {
    const want = { kind, dtype: dtype === null ? 0 : DTYPE_CODE[dtype], bytes, into };
    return handled(this.#track(peer, this.#mesh.recv(this.#world[peer] as number, this.#tag, want)));
  }

  #recvInto(peer: number, kind: FrameKind, t: Tensor, start: number, count: number): Promise<void> {
    const bpe = t.data().BYTES_PER_ELEMENT;
    const into = bytesOf(t, start, count);
    return handled(
      this.#recvFrame(peer, kind, t.dtype, count * bpe, into).then((f) => {
        if (f.payload !== into) into.set(f.payload);
      }),
    );
  }

  /** Reduces elements [start, start+count) of `t` (this rank) with the frames of the peers, in rank order. */
  async #reduce(t: Tensor, op: ReduceOp, start: number, count: number, frames: Promise<Frame>[]): Promise<ReduceResult> {
    const term = async (p: number) => (p === this.rank ? bytesOf(t, start, count) : (await frames[p]!).payload);
    return reduceInRankOrder(t.dtype, op, count, this.size, term, (slot, bytes) => this.#reusable(slot, bytes));
  }

  #reusable(slot: string, bytes: number): ArrayBuffer {
    let b = this.#reusables.get(slot);
    if (!b || b.byteLength < bytes) this.#reusables.set(slot, (b = new ArrayBuffer(bytes)));
    return b;
  }
}
