// DistAttn: attention over a sequence split across ranks, executed from a schedule (schedule.ts).
// One executor for every schedule and both directions. Per step t, on each rank:
//   comm stream:    wait for everything enqueued on the compute stream so far (compute(t-1), the
//                   step's receive buffers); post the step's transfers as one group (prefetch for
//                   t+1, results of t-1 back to their owners); record commDone[t].
//   compute stream: wait for commDone[t-1]; fold in the results received at t-1 (merge partial
//                   outputs, add gradient pieces, all in fp32); compute the step's blocks; record
//                   computeDone[t].
// So the transfers of step t run beside the attention kernels of step t; buffers received at t-1
// are read at t and released after, and nothing synchronises the host (the CPU backend has no
// streams: its groups complete when awaited and compute runs in between).
// Modes: "overlap" (above) and "sync" (compute(t) also waits for commDone[t]: no overlap; correct
// results, one stream wait per step; kept here because it is what isolates a suspected race between
// the streams, and what the overlap is measured against). Receive buffers come from the pool, or from
// the communicator when it offers them (ReceiveBuffers): the benchmarks' no-communication stand-in
// (bench/nocomm.ts) hands back rows of this rank's own inputs that way, moving nothing.
// Only K/V heads travel (GQA/MQA send Hkv heads); partial outputs and gradient pieces are f32.

import type { Communicator } from "@lightseq/comm";
import { Event, Stream } from "@lightseq/cuda";
import { axpy, cast, currentStream, empty, fill, type Tensor, TensorError } from "@lightseq/tensor";
import type { AttentionBackend, AttentionPartial } from "./block.ts";
import { emptyPartial, mergeInto } from "./merge.ts";
import { type Placement, placeSequence } from "./placement.ts";
import type { Schedule, Step, Transfer } from "./schedule.ts";

export type DistMode = "overlap" | "sync";

/**
 * What a communicator may add for DistAttn: the memory a receive lands in. DistAttn asks before it
 * allocates a receive buffer for an input payload (K/V, Q and the backward's Q-side rows) and takes the
 * pool's memory when the answer is undefined. No real backend offers it; bench/nocomm.ts does.
 */
export interface ReceiveBuffers {
  /** A [shape] buffer for rows of the kind of `own` (this rank's local tensors of that payload), or undefined. */
  receiveBuffer(shape: readonly number[], own: readonly Tensor[]): Tensor | undefined;
}

export interface DistAttnOptions {
  schedule: Schedule;
  /** Global sequence length (the placement follows from the schedule). */
  N: number;
  comm: Communicator & Partial<ReceiveBuffers>;
  backend: AttentionBackend;
  causal?: true;
  scale?: number;
  mode?: DistMode;
  /** CUDA: the compute stream (default: the device's current stream). */
  stream?: Stream;
  /**
   * CUDA: priority of the comm stream. Default "high" (as PyTorch gives its NCCL streams): the
   * transfers' kernels are scheduled ahead of pending attention blocks: the overlap time fell by 1.4-1.6%
   * of the compute (64K on H100, 128K on H200, MHA, cuDNN blocks; BENCHMARKS.md, DistAttn). "default"
   * is the device's normal priority.
   */
  commPriority?: "default" | "high";
}

export interface DistForwardResult {
  /** [Tlocal, Hq, D] in q's dtype: the final output of this rank's rows. */
  o: Tensor;
  /** One [Hq, Tc] f32 tensor per local chunk (schedule.chunksOf[rank] order). */
  lse: Tensor[];
}

export interface DistGrads {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

/** Bytes this rank sent and received, counted by the executor (for the traffic model). */
export interface Traffic {
  sentBytes: number;
  receivedBytes: number;
}

interface Ctx {
  o: DistAttnOptions;
  s: Schedule;
  p: Placement;
  rank: number;
  gpu: boolean;
  compute?: Stream;
  commStream?: Stream;
  traffic: Traffic;
  scale: number | undefined;
}

/** One comm stream per device and priority, created on first use and kept for the process. */
const commStreams = new Map<string, Stream>();

function context(o: DistAttnOptions, q: Tensor): Ctx {
  const { schedule: s, comm } = o;
  const priority = o.commPriority ?? "high";
  if (priority !== "default" && priority !== "high")
    throw new TensorError(`distAttn: commPriority must be "default" or "high", got ${JSON.stringify(priority)}`);
  if (comm.size !== s.P) throw new TensorError(`distAttn: the schedule is for P = ${s.P} ranks, the communicator has ${comm.size}`);
  const p = placeSequence(s, o.N);
  const rank = comm.rank;
  if (q.shape[0] !== p.localLen[rank]) {
    throw new TensorError(`distAttn: q: rank ${rank} holds ${p.localLen[rank]} of ${o.N} tokens under "${s.name}", got ${q.shape[0]} rows`);
  }
  const mode = o.mode ?? "overlap";
  if (mode !== "overlap" && mode !== "sync")
    throw new TensorError(
      `distAttn: mode must be "overlap" or "sync", got ${JSON.stringify(mode)} (no-communication runs: bench/nocomm.ts)`,
    );
  const gpu = q.device.kind === "cuda";
  const ctx: Ctx = { o, s, p, rank, gpu, traffic: { sentBytes: 0, receivedBytes: 0 }, scale: o.scale };
  if (gpu) {
    const dev = (q.device as { index: number }).index;
    ctx.compute = o.stream ?? currentStream(dev);
    const key = `${dev}|${priority}`;
    let cs = commStreams.get(key);
    if (!cs) {
      cs = Stream.create(dev, { priority });
      commStreams.set(key, cs);
    }
    ctx.commStream = cs;
  }
  return ctx;
}

/** Rows of chunk c in a rank-local tensor. */
function rows(ctx: Ctx, t: Tensor, chunk: number): Tensor {
  const { s, p } = ctx;
  const owner = s.owner[chunk] as number;
  const idx = (s.chunksOf[owner] as number[]).indexOf(chunk);
  return t.narrow(p.localStart[owner]?.[idx] as number, p.len[chunk] as number);
}

function localIndex(ctx: Ctx, chunk: number): number {
  return (ctx.s.chunksOf[ctx.rank] as number[]).indexOf(chunk);
}

/**
 * Runs the steps: `post(t, tr, isSender)` returns the tensors of one transfer (the sender's data or
 * the receiver's fresh buffers), `fold(t)` consumes what arrived at step t, `compute(t, step)` runs
 * the blocks. Handles streams, events, modes and buffer lifetimes.
 */
async function run(
  ctx: Ctx,
  steps: Step[],
  post: (t: number, tr: Transfer, sender: boolean) => Tensor[],
  fold: (t: number, received: Map<Transfer, Tensor[]>) => void,
  compute: (t: number, step: Step) => void,
): Promise<void> {
  const { o, rank, gpu } = ctx;
  const mode = o.mode ?? "overlap";
  const dev = gpu ? ctx.compute?.device : -1;
  const commDone: Event[] = [];
  /** Events recorded on the compute stream (kept until the end, then destroyed). */
  const computeDone: Event[] = [];
  const received: Map<Transfer, Tensor[]>[] = [];
  const release: Tensor[][] = [];
  const start = gpu ? Event.create(dev as number) : null;
  if (start && ctx.commStream && ctx.compute) {
    start.record(ctx.compute);
    ctx.commStream.wait(start); // inputs produced on the compute stream
  }
  try {
    for (let t = 0; t < steps.length; t++) {
      const step = steps[t] as Step;
      const mine = step.transfers.filter((x) => x.from === rank || x.to === rank);
      const got = new Map<Transfer, Tensor[]>();
      received.push(got);
      release.push([]);
      if (mine.length > 0) {
        const sends: [Transfer, Tensor[]][] = [];
        for (const x of mine) {
          if (x.to === rank) got.set(x, post(t, x, false));
          else sends.push([x, post(t, x, true)]);
        }
        if (gpu) {
          // Receive buffers were just allocated on the compute stream, and results to send were
          // computed there at t-1: the comm stream starts after both (and after compute(t-1),
          // which read the memory the pool may hand out again).
          const ready = Event.create(dev as number);
          ready.record(ctx.compute as Stream);
          ctx.commStream?.wait(ready);
          computeDone.push(ready);
        }
        const so = gpu ? { stream: ctx.commStream } : {};
        await o.comm.group(() => {
          for (const x of mine) {
            if (x.to === rank) {
              for (const b of got.get(x) as Tensor[]) {
                void o.comm.recv(b, x.from, so);
                ctx.traffic.receivedBytes += b.bytes;
              }
            } else {
              for (const b of (sends.find(([y]) => y === x) as [Transfer, Tensor[]])[1]) {
                void o.comm.send(b, x.to, so);
                ctx.traffic.sentBytes += b.bytes;
              }
            }
          }
        });
        for (const [, ts] of sends) (release[t] as Tensor[]).push(...ts);
      }
      if (gpu) {
        const e = Event.create(dev as number);
        e.record(ctx.commStream as Stream);
        commDone.push(e);
        if (t > 0) ctx.compute?.wait(commDone[t - 1] as Event);
        if (mode === "sync") ctx.compute?.wait(e);
      }
      if (t > 0) fold(t - 1, received[t - 1] as Map<Transfer, Tensor[]>);
      compute(t, step);
      // What arrived at t-1 has been read by compute(t); what was sent at t-1 was produced at t-2.
      if (t > 0) {
        for (const ts of (received[t - 1] as Map<Transfer, Tensor[]>).values()) for (const b of ts) b.dispose();
        for (const b of release[t - 1] as Tensor[]) b.dispose();
      }
    }
    const last = steps.length - 1;
    if (last >= 0) {
      if (gpu) ctx.compute?.wait(commDone[last] as Event);
      fold(last, received[last] as Map<Transfer, Tensor[]>);
      for (const ts of (received[last] as Map<Transfer, Tensor[]>).values()) for (const b of ts) b.dispose();
      for (const b of release[last] as Tensor[]) b.dispose();
    }
  } finally {
    for (const e of [...commDone, ...computeDone]) e.dispose();
    start?.dispose();
  }
}

function alloc(ctx: Ctx, shape: number[], dtype: "f32" | "bf16"): Tensor {
  return empty(shape, { dtype, device: ctx.gpu ? `cuda:${ctx.compute?.device}` : "cpu", stream: ctx.compute });
}

/** A buffer of `shape` receiving rows of the kind of `own` (ReceiveBuffers): the communicator's, else the pool's. */
function recvBuffer(ctx: Ctx, shape: number[], own: readonly Tensor[]): Tensor {
  return ctx.o.comm.receiveBuffer?.(shape, own) ?? alloc(ctx, shape, (own[0] as Tensor).dtype as "f32" | "bf16");
}

/** The "kv" payload of `chunk`: this rank's K/V rows to send, or buffers to receive them in. */
function kvPayload(ctx: Ctx, k: Tensor, v: Tensor, chunk: number, sender: boolean): Tensor[] {
  if (sender) return [rows(ctx, k, chunk), rows(ctx, v, chunk)];
  const shape = [ctx.p.len[chunk] as number, ...k.shape.slice(1)];
  return [recvBuffer(ctx, shape, [k]), recvBuffer(ctx, shape, [v])];
}

/** Forward: this rank's rows of causal attention over the whole sequence. */
export async function distAttnForward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: DistAttnOptions,
): Promise<DistForwardResult & { traffic: Traffic }> {
  const ctx = context(o, q);
  const { s, p, rank } = ctx;
  const backend = o.backend;
  const [, Hq, D] = q.shape as [number, number, number];
  const qd = q.dtype as "f32" | "bf16";
  const stream = ctx.compute;
  const dev = ctx.gpu ? `cuda:${stream?.device}` : "cpu";
  const acc: AttentionPartial[] = (s.chunksOf[rank] as number[]).map((c) =>
    emptyPartial(p.len[c] as number, Hq, D, { device: dev, stream }),
  );
  // Partials a helper computed at step t, sent back at t+1.
  const helped = new Map<string, AttentionPartial>();
  const post = (t: number, x: Transfer, sender: boolean): Tensor[] => {
    const n = p.len[x.chunk] as number;
    switch (x.payload) {
      case "kv":
        return kvPayload(ctx, k, v, x.chunk, sender);
      case "q":
        return sender ? [rows(ctx, q, x.chunk)] : [recvBuffer(ctx, [n, Hq, D], [q])];
      case "out": {
        if (!sender) return [alloc(ctx, [n, Hq, D], "f32"), alloc(ctx, [Hq, n], "f32")];
        const part = helped.get(`${t - 1}|${x.chunk}`) as AttentionPartial;
        helped.delete(`${t - 1}|${x.chunk}`);
        return [part.o, part.lse];
      }
      default:
        throw new TensorError(`distAttnForward: unexpected payload ${x.payload}`);
    }
  };
  const arrived = new Map<string, Tensor[]>();
  const fold = (_t: number, got: Map<Transfer, Tensor[]>) => {
    arrived.clear();
    for (const [x, ts] of got) {
      if (x.payload === "out")
        mergeInto(acc[localIndex(ctx, x.chunk)] as AttentionPartial, { o: ts[0] as Tensor, lse: ts[1] as Tensor }, { stream });
      else arrived.set(`${x.payload}|${x.chunk}`, ts);
    }
  };
  const compute = (t: number, step: Step) => {
    for (const b of step.blocks) {
      if (b.rank !== rank) continue;
      const ownQ = s.owner[b.q] === rank;
      const ownKv = s.owner[b.kv] === rank;
      using qb = ownQ ? rows(ctx, q, b.q) : ((arrived.get(`q|${b.q}`) as Tensor[])[0] as Tensor).view();
      const kvb = ownKv ? [rows(ctx, k, b.kv), rows(ctx, v, b.kv)] : (arrived.get(`kv|${b.kv}`) as Tensor[]).map((x) => x.view());
      const part = backend.forward(qb, kvb[0] as Tensor, kvb[1] as Tensor, { causal: b.causal, scale: ctx.scale, outDtype: "f32", stream });
      for (const x of kvb) x.dispose();
      if (ownQ) {
        mergeInto(acc[localIndex(ctx, b.q)] as AttentionPartial, part, { stream });
        part.o.dispose();
        part.lse.dispose();
      } else {
        const key = `${t}|${b.q}`;
        const prev = helped.get(key);
        if (prev) {
          mergeInto(prev, part, { stream });
          part.o.dispose();
          part.lse.dispose();
        } else helped.set(key, part);
      }
    }
  };
  await run(ctx, s.forward, post, fold, compute);
  for (const part of helped.values()) {
    part.o.dispose();
    part.lse.dispose();
  }
  const out = empty(q.shape, { dtype: qd, device: dev, stream });
  acc.forEach((a, i) => {
    const c = (s.chunksOf[rank] as number[])[i] as number;
    using dst = rows(ctx, out, c);
    cast(a.o, qd, { out: dst, stream }).dispose();
    a.o.dispose();
  });
  return { o: out, lse: acc.map((a) => a.lse), traffic: ctx.traffic };
}

/**
 * Backward: gradients of this rank's q, k, v given the forward's final o and lse (per local chunk)
 * and dO. Gradient pieces accumulate in f32; the results are in the inputs' dtype.
 */
export async function distAttnBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: DistForwardResult,
  dO: Tensor,
  o: DistAttnOptions,
): Promise<DistGrads & { traffic: Traffic }> {
  const ctx = context(o, q);
  const { s, p, rank } = ctx;
  const backend = o.backend;
  const [, Hq, D] = q.shape as [number, number, number];
  const [, Hkv] = k.shape as [number, number, number];
  const qd = q.dtype as "f32" | "bf16";
  const stream = ctx.compute;
  if (out.lse.length !== (s.chunksOf[rank] as number[]).length) {
    throw new TensorError(
      `distAttnBackward: expected ${(s.chunksOf[rank] as number[]).length} lse tensors (one per local chunk), got ${out.lse.length}`,
    );
  }
  const zeros32 = (shape: number[]) => {
    const t = alloc(ctx, shape, "f32");
    fill(t, 0, stream);
    return t;
  };
  const T = q.shape[0] as number;
  const dq = zeros32([T, Hq, D]);
  const dk = zeros32([k.shape[0] as number, Hkv, D]);
  const dv = zeros32([k.shape[0] as number, Hkv, D]);
  const lseOf = (chunk: number) => out.lse[localIndex(ctx, chunk)] as Tensor;
  // Pieces computed at step t for foreign chunks, sent back at t+1.
  const pieces = new Map<string, Tensor[]>();
  const piece = (t: number, kind: "dq" | "dkv", chunk: number): Tensor[] => {
    const key = `${t}|${kind}|${chunk}`;
    let ts = pieces.get(key);
    if (!ts) {
      const n = p.len[chunk] as number;
      ts = kind === "dq" ? [zeros32([n, Hq, D])] : [zeros32([n, Hkv, D]), zeros32([n, Hkv, D])];
      pieces.set(key, ts);
    }
    return ts;
  };
  const post = (t: number, x: Transfer, sender: boolean): Tensor[] => {
    const n = p.len[x.chunk] as number;
    switch (x.payload) {
      case "kv":
        return kvPayload(ctx, k, v, x.chunk, sender);
      case "qbwd":
        return sender
          ? [rows(ctx, q, x.chunk), rows(ctx, out.o, x.chunk), lseOf(x.chunk).view(), rows(ctx, dO, x.chunk)]
          : [
              recvBuffer(ctx, [n, Hq, D], [q]),
              recvBuffer(ctx, [n, Hq, D], [out.o]),
              recvBuffer(ctx, [Hq, n], out.lse),
              recvBuffer(ctx, [n, Hq, D], [dO]),
            ];
      case "dq":
      case "dkv": {
        if (!sender)
          return x.payload === "dq" ? [alloc(ctx, [n, Hq, D], "f32")] : [alloc(ctx, [n, Hkv, D], "f32"), alloc(ctx, [n, Hkv, D], "f32")];
        const key = `${t - 1}|${x.payload}|${x.chunk}`;
        const ts = pieces.get(key) as Tensor[];
        pieces.delete(key);
        return ts;
      }
      default:
        throw new TensorError(`distAttnBackward: unexpected payload ${x.payload}`);
    }
  };
  const arrived = new Map<string, Tensor[]>();
  const fold = (_t: number, got: Map<Transfer, Tensor[]>) => {
    arrived.clear();
    for (const [x, ts] of got) {
      if (x.payload === "dq") {
        using dst = rows(ctx, dq, x.chunk);
        axpy(1, ts[0] as Tensor, dst, { stream });
      } else if (x.payload === "dkv") {
        using dkc = rows(ctx, dk, x.chunk);
        using dvc = rows(ctx, dv, x.chunk);
        axpy(1, ts[0] as Tensor, dkc, { stream });
        axpy(1, ts[1] as Tensor, dvc, { stream });
      } else arrived.set(`${x.payload}|${x.chunk}`, ts);
    }
  };
  const compute = (t: number, step: Step) => {
    for (const b of step.blocks) {
      if (b.rank !== rank) continue;
      const ownQ = s.owner[b.q] === rank;
      const ownKv = s.owner[b.kv] === rank;
      const qside = ownQ
        ? [rows(ctx, q, b.q), rows(ctx, out.o, b.q), lseOf(b.q).view(), rows(ctx, dO, b.q)]
        : (arrived.get(`qbwd|${b.q}`) as Tensor[]).map((x) => x.view());
      const kvside = ownKv ? [rows(ctx, k, b.kv), rows(ctx, v, b.kv)] : (arrived.get(`kv|${b.kv}`) as Tensor[]).map((x) => x.view());
      const dqT = ownQ ? rows(ctx, dq, b.q) : (piece(t, "dq", b.q)[0] as Tensor).view();
      const [dkT, dvT] = ownKv ? [rows(ctx, dk, b.kv), rows(ctx, dv, b.kv)] : piece(t, "dkv", b.kv).map((x) => x.view());
      const [qb, ob, lb, dob] = qside as [Tensor, Tensor, Tensor, Tensor];
      backend.backward(qb, kvside[0] as Tensor, kvside[1] as Tensor, ob, lb, dob, {
        causal: b.causal,
        scale: ctx.scale,
        stream,
        accumulate: { dq: dqT, dk: dkT as Tensor, dv: dvT as Tensor },
      });
      for (const x of [...qside, ...kvside, dqT, dkT as Tensor, dvT as Tensor]) x.dispose();
    }
  };
  await run(ctx, s.backward, post, fold, compute);
  for (const ts of pieces.values()) for (const x of ts) x.dispose();
  const result = (t: Tensor): Tensor => {
    if (qd === "f32") return t;
    const c = cast(t, qd, { stream });
    t.dispose();
    return c;
  };
  return { dq: result(dq), dk: result(dk), dv: result(dv), traffic: ctx.traffic };
}
