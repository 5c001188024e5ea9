// The Communicator interface: one set of semantics for the CPU backend (processes over loopback
// sockets) and the NCCL backend (GPUs). Everything that differs between them is said here, once.
//
// Call order. Like NCCL, every rank of a communicator issues its collectives in the same order, and
// the sends from rank a to rank b are matched with the receives b posts from a in posting order.
// Both backends check what they can: the CPU backend tags every message with its operation, dtype
// and size and fails on a mismatch; NCCL cannot tell and would hang (the watchdog then fires).
//
// Completion. Every operation returns a Promise<void>.
//   - CPU backend: the promise resolves when the operation is complete on this rank: received data
//     is in place and the send buffers may be reused. Operations run one after another in issue
//     order (a communicator behaves like one stream), so several may be started before awaiting.
//     `stream` options are ignored.
//   - NCCL backend: the promise resolves as soon as the work is enqueued on the stream (the
//     tensor's current stream unless `stream` is given). Completion is on the stream: order later
//     work after it with events, or `await comm.wait()`. Never block the host on a hung
//     collective: the watchdog polls from the event loop (see nccl.ts).
//
// Groups. `group(() => { ... })` issues every send/recv posted inside the callback together, so a
// ring exchange (send to rank+1, receive from rank-1) cannot deadlock; outside a group each
// send/recv is its own group. The callback must be synchronous; the promises of the operations
// inside it settle with the group's promise (they never reject unhandled). Only send and recv may
// be posted inside a group. Sends and receives to and from oneself are allowed inside a group only.
// A refused post (bad argument) rejects the group; the CPU backend then issues nothing of it, NCCL
// issues what was posted before (the peers' side is the caller's problem either way: exit).
//
// Failures. Every wait has a timeout (default 60 s, env LIGHTSEQ_COMM_TIMEOUT_MS). When a peer dies
// or an operation times out, the communicator is broken: pending and later operations fail with a
// CommError naming the operation, the peer rank(s) and the time waited; the CPU backend also tells
// the peers why, so their errors name the first cause. There is no recovery: abort the
// communicator and exit non-zero (the launcher then stops the other ranks).
//
// Reductions. sum, avg (= sum / size) and max, on f32, bf16 and i32. See cpu.ts for the exact
// arithmetic of the CPU backend (fixed rank order, f32 accumulation, one rounding for bf16).

import type { Stream } from "@lightseq/cuda";
import type { Device, Tensor } from "@lightseq/tensor";

export type ReduceOp = "sum" | "avg" | "max";
export const REDUCE_OPS: readonly ReduceOp[] = ["sum", "avg", "max"];

export type BackendName = "cpu" | "nccl";

export interface StreamOption {
  /** NCCL backend: the stream to enqueue on (default: the tensor's current stream). Ignored on the CPU. */
  stream?: Stream;
}

export interface AllReduceOptions extends StreamOption {
  /** Write the result here and leave the input untouched (default: in place). */
  out?: Tensor;
}

export interface Communicator {
  readonly backend: BackendName;
  /** Where this communicator's tensors live: cpu, or the CUDA device the NCCL communicator drives. */
  readonly device: Device;
  /** This process's rank in [0, size). */
  readonly rank: number;
  readonly size: number;

  /** Sends all of `t` to `peer`; matched with the peer's recv of the same size and dtype. */
  send(t: Tensor, peer: number, o?: StreamOption): Promise<void>;
  /** Receives into all of `t` from `peer`. */
  recv(t: Tensor, peer: number, o?: StreamOption): Promise<void>;
  /** Issues every send/recv posted by `post` together; resolves when all of them complete (NCCL: are enqueued). */
  group(post: () => void): Promise<void>;

  /** Reduces `t` over ranks, in place unless `out` is given. */
  allReduce(t: Tensor, op: ReduceOp, o?: AllReduceOptions): Promise<void>;
  /** output = concat over ranks of input, rank-major: output.numel = size * input.numel. */
  allGather(input: Tensor, output: Tensor, o?: StreamOption): Promise<void>;
  /** output on rank r = reduction over ranks of input[r*n, (r+1)*n), n = output.numel. */
  reduceScatter(input: Tensor, output: Tensor, op: ReduceOp, o?: StreamOption): Promise<void>;
  /** Copies root's `t` into `t` on every rank. */
  broadcast(t: Tensor, root: number, o?: StreamOption): Promise<void>;
  /** Resolves on each rank once every rank has entered the barrier (the host waits on both backends). */
  barrier(): Promise<void>;
  /** Resolves once every operation issued so far has completed (NCCL: on the device). */
  wait(timeoutMs?: number): Promise<void>;

  /**
   * Collective over this communicator: ranks with the same color form a new communicator, ordered
   * by (key, rank). A negative color takes no part and gets null.
   */
  split(color: number, key: number): Promise<Communicator | null>;

  /** Breaks the communicator at once: pending and later operations fail. Safe to call twice. */
  abort(reason?: string): void;
  /** Waits for issued operations, then releases the communicator. Not collective. */
  destroy(): Promise<void>;
}

/** An operation that failed: names the operation, the peers involved and the time waited. */
export class CommError extends Error {
  override name = "CommError";
  constructor(
    readonly op: string,
    message: string,
    readonly peers: readonly number[] = [],
    readonly waitedMs?: number,
  ) {
    super(`${op}: ${message}`);
  }
}

/**
 * A rejected promise already marked as handled: what an operation posted inside a group returns
 * when it is refused, since the caller awaits the group's promise and may never await this one.
 */
export function rejectHandled(e: unknown): Promise<never> {
  const p = Promise.reject(e);
  p.catch(() => {});
  return p;
}

/** Ranks listed for messages: "rank 3", "ranks 0, 1 and 2". */
export function fmtRanks(ranks: readonly number[]): string {
  if (ranks.length === 1) return `rank ${ranks[0]}`;
  if (ranks.length === 0) return "no rank";
  return `ranks ${ranks.slice(0, -1).join(", ")} and ${ranks[ranks.length - 1]}`;
}

export function fmtSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** Checks a peer/root index and says which operation got it wrong. */
export function assertRank(what: string, argName: string, r: number, size: number): void {
  if (!Number.isInteger(r) || r < 0 || r >= size) {
    throw new CommError(what, `${argName} must be an integer in [0, ${size}), got ${r}`);
  }
}

export function assertReduceOp(what: string, op: unknown): asserts op is ReduceOp {
  if (!REDUCE_OPS.includes(op as ReduceOp))
    throw new CommError(what, `op must be one of ${REDUCE_OPS.join(", ")}, got ${JSON.stringify(op)}`);
}

/** Argument checks shared by both backends; `devKind` is the device kind the backend accepts. */
export function checkTensor(what: string, argName: string, t: Tensor, devKind: "cpu" | "cuda"): void {
  if (t === null || typeof t !== "object" || !("dtype" in t)) throw new CommError(what, `${argName}: expected a Tensor, got ${String(t)}`);
  if (t.isDisposed) throw new CommError(what, `${argName}: tensor used after dispose`);
  if (t.device.kind !== devKind) throw new CommError(what, `${argName}: this communicator takes ${devKind} tensors, got ${t.describe()}`);
}

export function checkPair(what: string, a: Tensor, aName: string, b: Tensor, bName: string, bNumel: number): void {
  if (a.dtype !== b.dtype) throw new CommError(what, `${bName}: expected dtype ${a.dtype} (as ${aName}), got ${b.dtype}`);
  if (b.numel !== bNumel)
    throw new CommError(what, `${bName}: expected ${bNumel} elements, got ${b.numel} (${b.describe()}; ${aName} ${a.describe()})`);
  if (a.device.kind === "cuda" && b.device.kind === "cuda" && a.device.index !== b.device.index) {
    throw new CommError(what, `${bName}: expected device cuda:${a.device.index} (as ${aName}), got cuda:${b.device.index}`);
  }
}

/** Ranks of a split: members with `color`, ordered by (key, parent rank). */
export function splitMembers(entries: readonly { color: number; key: number }[], color: number): number[] {
  return entries
    .map((e, rank) => ({ ...e, rank }))
    .filter((e) => e.color === color)
    .sort((a, b) => a.key - b.key || a.rank - b.rank)
    .map((e) => e.rank);
}
