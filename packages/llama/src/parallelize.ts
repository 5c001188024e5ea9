// Sequence parallelism for the Llama model, applied from outside (DESIGN.md section 4; the only file
// of packages/llama that knows about ranks and the communicator). In this order:
//   1. attention: DistAttn (attention/src/distattn.ts) with a schedule (zigzag by default) and any
//      communicator, bound as the model's AttentionFn;
//   2. data: each rank's rows of the sequence under the schedule's chunk placement, with their GLOBAL
//      positions and labels (the label of global token g is token g+1, even when g+1 lives in another
//      chunk on another rank; the last token's is -100);
//   3. gradients: every rank's weight gradients are partial sums over its rows, so a layer's gradients
//      are summed over the ranks as soon as its backward is done (an all-reduce on the comm stream; the
//      trainer's ZeRO sink reduce-scatters instead).
// The loss mean is the caller's: the global label count is known from the sequence (placeSequenceBatch),
// and the loss sums are summed over the ranks.

import {
  type AttentionBackend,
  type DistMode,
  distAttnBackward,
  distAttnForward,
  localRanges,
  makeSchedule,
  placeSequence,
  type Schedule,
  type ScheduleName,
  type Traffic,
} from "@lightseq/attention";
import type { CheckpointPolicy } from "@lightseq/checkpointing";
import type { Communicator } from "@lightseq/comm";
import type { Stream } from "@lightseq/cuda";
import { axpy, type Tensor, TensorError, zeros } from "@lightseq/tensor";
import {
  type ActivationStore,
  type AttentionFn,
  type GradientSink,
  LocalActivationStore,
  type LocalGradientSink,
  LocalWeightSource,
  type WeightSource,
} from "./interfaces.ts";
import { type Batch, IGNORE_LABEL, LlamaModel, sequenceBatch } from "./model.ts";
import {
  disposeLayerViews,
  disposeNonLayerViews,
  type LayerWeights,
  layerLayout,
  layerViews,
  type ModelParams,
  type NonLayerWeights,
} from "./weights.ts";

export interface SequenceParallelPlan {
  comm: Communicator;
  /** DistAttn schedule; default "zigzag". */
  schedule?: ScheduleName;
  /** Global sequence length. */
  N: number;
  /** Block attention backend (selectAttentionBackend). */
  backend: AttentionBackend;
  mode?: DistMode;
  stream?: Stream;
}

/** Bytes DistAttn moved, summed over every call (forward and backward separately). */
export interface AttentionTraffic {
  forwardCalls: number;
  forward: Traffic;
  backward: Traffic;
}

/** DistAttn as the model's attention function, with traffic counters. */
export function distAttention(plan: SequenceParallelPlan): AttentionFn & { schedule: Schedule; traffic: AttentionTraffic } {
  const schedule = makeSchedule(plan.schedule ?? "zigzag", plan.comm.size);
  const opts = { schedule, N: plan.N, comm: plan.comm, backend: plan.backend, mode: plan.mode, stream: plan.stream };
  const traffic: AttentionTraffic = {
    forwardCalls: 0,
    forward: { sentBytes: 0, receivedBytes: 0 },
    backward: { sentBytes: 0, receivedBytes: 0 },
  };
  const add = (into: Traffic, t: Traffic) => {
    into.sentBytes += t.sentBytes;
    into.receivedBytes += t.receivedBytes;
  };
  return {
    name: `DistAttn ${schedule.name} over ${plan.comm.size} ranks (${plan.backend.name} blocks)`,
    schedule,
    traffic,
    async forward(q, k, v) {
      const r = await distAttnForward(q, k, v, opts);
      traffic.forwardCalls++;
      add(traffic.forward, r.traffic);
      return { o: r.o, lse: r.lse };
    },
    async backward(s, dO) {
      const r = await distAttnBackward(s.q, s.k, s.v, { o: s.o, lse: s.lse }, dO, opts);
      add(traffic.backward, r.traffic);
      return { dq: r.dq, dk: r.dk, dv: r.dv };
    },
  };
}

/** This rank's batch and the sequence's label count (for gradScale). */
export interface PlacedBatch extends Batch {
  /** Valid labels of the whole sequence (every rank's). */
  globalLabelCount: number;
}

/**
 * Rank `rank`'s rows of a whole sequence under the schedule's placement: tokens, global positions,
 * labels shifted in the GLOBAL order (sequenceBatch), then cut, so a chunk's last label is the next
 * chunk's first token wherever that chunk lives. `labels` replaces the shifted tokens (e.g. masks).
 */
export function placeSequenceBatch(s: Schedule, rank: number, tokens: Int32Array, labels?: Int32Array): PlacedBatch {
  const whole = sequenceBatch(tokens);
  if (labels !== undefined) {
    if (labels.length !== tokens.length)
      throw new TensorError(`placeSequenceBatch: labels: expected ${tokens.length} entries (one per token), got ${labels.length}`);
    whole.labels = labels;
  }
  const ranges = localRanges(s, placeSequence(s, tokens.length), rank);
  const take = (a: Int32Array) => {
    const out = new Int32Array(ranges.reduce((n, [, l]) => n + l, 0));
    let at = 0;
    for (const [st, l] of ranges) {
      out.set(a.subarray(st, st + l), at);
      at += l;
    }
    return out;
  };
  let globalLabelCount = 0;
  for (const l of whole.labels) if (l !== IGNORE_LABEL) globalLabelCount++;
  return { tokens: take(whole.tokens), positions: take(whole.positions), labels: take(whole.labels), globalLabelCount };
}

/**
 * Sums each layer's gradients over the ranks as soon as its backward is done, then adds them into
 * `into` (so micro-batches accumulate there). The backward writes into per-layer f32 scratch buffers.
 */
export class AllReduceGradientSink implements GradientSink {
  readonly #scratch = new Map<number, { flat: Tensor; views: LayerWeights }>();
  #nonLayer: { tensors: Tensor[]; views: NonLayerWeights } | null = null;

  constructor(
    readonly comm: Communicator,
    readonly into: LocalGradientSink,
    readonly stream?: Stream,
  ) {}

  #device() {
    return this.into.grads.embed.device;
  }

  layer(i: number): LayerWeights {
    let s = this.#scratch.get(i);
    if (!s) {
      const cfg = this.into.grads.config;
      const flat = zeros([layerLayout(cfg).numel], { device: this.#device(), stream: this.stream });
      s = { flat, views: layerViews(flat, cfg) };
      this.#scratch.set(i, s);
    }
    return s.views;
  }

  async layerDone(i: number): Promise<void> {
    const s = this.#scratch.get(i);
    if (!s) throw new TensorError(`gradient sink: layerDone(${i}) without layer(${i})`);
    this.#scratch.delete(i);
    disposeLayerViews(s.views);
    try {
      await this.comm.allReduce(s.flat, "sum", { stream: this.stream });
      axpy(1, s.flat, this.into.grads.layers[i] as Tensor, { stream: this.stream });
    } finally {
      s.flat.dispose();
    }
  }

  nonLayer(): NonLayerWeights {
    if (!this.#nonLayer) {
      const g = this.into.grads;
      const p = { device: this.#device(), stream: this.stream };
      const embed = zeros(g.embed.shape, p);
      const finalNorm = zeros(g.finalNorm.shape, p);
      const head = g.head ? zeros(g.head.shape, p) : null;
      const tensors = [embed, finalNorm, ...(head ? [head] : [])];
      this.#nonLayer = { tensors, views: { embed: embed.view(), finalNorm: finalNorm.view(), head: (head ?? embed).view() } };
    }
    return this.#nonLayer.views;
  }

  async nonLayerDone(): Promise<void> {
    const s = this.#nonLayer;
    if (!s) throw new TensorError("gradient sink: nonLayerDone() without nonLayer()");
    this.#nonLayer = null;
    disposeNonLayerViews(s.views);
    const g = this.into.grads;
    const into = [g.embed, g.finalNorm, ...(g.head ? [g.head] : [])];
    try {
      for (const [j, t] of s.tensors.entries()) {
        await this.comm.allReduce(t, "sum", { stream: this.stream });
        axpy(1, t, into[j] as Tensor, { stream: this.stream });
      }
    } finally {
      for (const t of s.tensors) t.dispose();
    }
  }
}

export interface ParallelModel {
  model: LlamaModel;
  attention: ReturnType<typeof distAttention>;
  /** This rank's rows of a whole sequence of plan.N tokens. */
  place(tokens: Int32Array, labels?: Int32Array): PlacedBatch;
  /** Sums this rank's gradients over the ranks into `into`. */
  gradientSink(into: LocalGradientSink): GradientSink;
}

/**
 * The model over this rank's rows of an N-token sequence: DistAttn as its attention, whole weights
 * from `weights` (a ModelParams, or a sharded source from the trainer), saved tensors kept in place
 * unless another store is given (checkpointing's offloading store).
 */
export function parallelize(
  params: ModelParams | { config: ModelParams["config"]; source: WeightSource },
  plan: SequenceParallelPlan,
  o: { policy: CheckpointPolicy; store?: ActivationStore; lossChunkTokens?: number; mlpChunkTokens?: number },
): ParallelModel {
  // On one rank too: its zigzag blocks (a full 16K x 16K block and two causal halves at 32K) made a
  // 7B step 3.7% faster than one causal cuDNN call over the 32K rows (measured, BENCHMARKS.md).
  const attention = distAttention(plan);
  const [config, weights] = "source" in params ? [params.config, params.source] : [params.config, new LocalWeightSource(params)];
  const model = new LlamaModel({
    config,
    weights,
    attention,
    store: o.store ?? new LocalActivationStore(),
    policy: o.policy,
    stream: plan.stream,
    lossChunkTokens: o.lossChunkTokens,
    mlpChunkTokens: o.mlpChunkTokens,
  });
  return {
    model,
    attention,
    place: (tokens, labels) => {
      if (tokens.length !== plan.N)
        throw new TensorError(`parallelize: place: expected a sequence of N = ${plan.N} tokens (the plan's), got ${tokens.length}`);
      return placeSequenceBatch(attention.schedule, plan.comm.rank, tokens, labels);
    },
    gradientSink: (into) => new AllReduceGradientSink(plan.comm, into, plan.stream),
  };
}
