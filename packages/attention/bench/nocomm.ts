// DistAttn with no communication, for measuring the compute alone (the benchmarks' "nocomm" mode, as
// the paper measured it): a Communicator that moves nothing. Its sends and receives complete at once;
// what "arrives" is rows of this rank's own inputs of the same kind, handed to DistAttn as the receive
// buffers (ReceiveBuffers, distattn.ts): the first rows of its own K, V, Q, O or dO (a view, no copy),
// or its own lse of a chunk of the same length. Results (partial outputs, gradient pieces) land in
// fresh buffers and are never filled: the output is wrong by design, the work is the real work.
//
// Why own rows and not fresh memory: pool memory is often all zeros, and a GPU at its power limit runs
// tensor-core work on zeros faster (less switching, higher clocks): blocks computed on it made nocomm
// up to ~4% too fast (BENCHMARKS.md, DistAttn). Collectives (the benchmark's barriers and max over
// ranks) go to the wrapped communicator.

import type { AllReduceOptions, Communicator, ReduceOp, StreamOption } from "@lightseq/comm";
import type { Tensor } from "@lightseq/tensor";
import type { ReceiveBuffers } from "../src/distattn.ts";

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** Where no real communicator exists (one rank of P on one GPU, a test): only the rank's place in the job. */
export interface RankOfJob {
  rank: number;
  size: number;
}

/**
 * `inner` with its point-to-point traffic replaced by nothing (see the top of this file). Given only a
 * rank and a size, collectives (and backend, device) refuse with a message, since no peer exists.
 */
export function noCommCommunicator(inner: Communicator | RankOfJob): Communicator & ReceiveBuffers {
  const real = (what: string): Communicator => {
    if ("allReduce" in inner) return inner;
    throw new Error(`no-communication stand-in for rank ${inner.rank} of ${inner.size}: ${what} needs a real communicator`);
  };
  return {
    get backend() {
      return real("backend").backend;
    },
    get device() {
      return real("device").device;
    },
    rank: inner.rank,
    size: inner.size,
    send: (_t: Tensor, _peer: number, _o?: StreamOption) => Promise.resolve(),
    recv: (_t: Tensor, _peer: number, _o?: StreamOption) => Promise.resolve(),
    group: (post: () => void) => {
      post();
      return Promise.resolve();
    },
    receiveBuffer(shape: readonly number[], own: readonly Tensor[]): Tensor | undefined {
      for (const t of own) if (same(t.shape, shape)) return t.view();
      for (const t of own)
        if (same(t.shape.slice(1), shape.slice(1)) && (t.shape[0] as number) >= (shape[0] as number))
          return t.narrow(0, shape[0] as number);
      return undefined; // no own tensor of this kind is large enough: DistAttn takes fresh memory
    },
    allReduce: (t: Tensor, op: ReduceOp, o?: AllReduceOptions) => real("allReduce").allReduce(t, op, o),
    allGather: (input: Tensor, output: Tensor, o?: StreamOption) => real("allGather").allGather(input, output, o),
    reduceScatter: (input: Tensor, output: Tensor, op: ReduceOp, o?: StreamOption) =>
      real("reduceScatter").reduceScatter(input, output, op, o),
    broadcast: (t: Tensor, root: number, o?: StreamOption) => real("broadcast").broadcast(t, root, o),
    barrier: () => real("barrier").barrier(),
    wait: (timeoutMs?: number) => ("wait" in inner ? inner.wait(timeoutMs) : Promise.resolve()),
    split: (color: number, key: number) => real("split").split(color, key),
    abort: (reason?: string) => ("abort" in inner ? inner.abort(reason) : undefined),
    destroy: () => ("destroy" in inner ? inner.destroy() : Promise.resolve()),
  };
}
