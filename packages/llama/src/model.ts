// The Llama model over this rank's tokens of one sequence (DESIGN.md section 4):
//   tokens -> embedding -> layers -> final RMSNorm -> fused LM head + cross-entropy (chunks of tokens)
// then the backward in reverse, each layer's gradients handed to the gradient sink as soon as that
// layer is done. Tokens carry their GLOBAL positions (RoPE) and already-shifted labels (-100 ignored);
// the loss is returned as a sum with its label count, because the mean runs over the whole sequence
// (every rank's labels): the caller forms it and passes `gradScale` = d(loss)/d(one label's loss),
// e.g. 1 / (global label count).
// The model sees only the four interfaces; which ranks, schedule or memory placement lie behind
// them is parallelize's business (parallelize.ts) and the trainer's.
// A `skip` layer i (checkpointing policy.ts) keeps nothing: before its backward the model re-runs the
// forward of layers j..i-1 from layer j's kept x (j the nearest earlier layer that is not skip),
// keeping nothing, and hands the result to layer i's backward. Weights are asked in that order
// (j, ..., i-1, then i) and each ask is prefetched one ask ahead, so a ZeRO source gathers each layer
// once per pair in a (full, skip) pattern: layer i-1 stays gathered for its own backward, next.

import type { AttentionBackend } from "@lightseq/attention";
import { type CheckpointPolicy, inputSource, type LayerKind, type LayerPolicy, layerPolicy } from "@lightseq/checkpointing";
import type { Stream } from "@lightseq/cuda";
import { fromArray, type Tensor, TensorError, toFloat32Array } from "@lightseq/tensor";
import type { LlamaConfig } from "./config.ts";
import {
  type ActivationStore,
  type AttentionFn,
  type GradientSink,
  LocalActivationStore,
  LocalWeightSource,
  localAttention,
  type WeightSource,
} from "./interfaces.ts";
import { type LayerContext, type LayerCounters, layerBackward, layerForward, newCounters } from "./layer.ts";
import { embeddingBackward, embeddingForward } from "./ops/embedding.ts";
import { lmHeadLogits, lmHeadLoss } from "./ops/lm-head-loss.ts";
import { rmsnormBackward, rmsnormForward } from "./ops/rmsnorm.ts";
import { type RopeTable, ropeHostTable, ropeInvFreq, uploadRopeTable } from "./ops/rope.ts";
import type { ModelParams } from "./weights.ts";

/** This rank's share of one sequence. */
export interface Batch {
  /** Token ids of the local rows [T]. */
  tokens: Int32Array;
  /** Global position of each local row (RoPE). */
  positions: Int32Array;
  /** Target of each local row: the next token in the global order; -100 where there is none. */
  labels: Int32Array;
}

export const IGNORE_LABEL = -100;

/** One whole sequence on one rank: positions 0..N-1; the label of token g is token g+1, of the last -100. */
export function sequenceBatch(tokens: Int32Array): Batch {
  const N = tokens.length;
  const labels = new Int32Array(N);
  for (let g = 0; g < N; g++) labels[g] = g + 1 < N ? (tokens[g + 1] as number) : IGNORE_LABEL;
  return { tokens, positions: Int32Array.from({ length: N }, (_, g) => g), labels };
}

export interface ModelParts {
  config: LlamaConfig;
  weights: WeightSource;
  attention: AttentionFn;
  store: ActivationStore;
  /** Uniform, or mixed: one kind per layer (its length must be config.layers). */
  policy: CheckpointPolicy;
  /** CUDA: the compute stream (default: the device's current stream). */
  stream?: Stream;
  /** Tokens per chunk of the fused LM head + loss (default: the op's choice). */
  lossChunkTokens?: number;
  /** Tiled MLP: tokens per chunk (layer.ts); default: the whole local sequence at once. */
  mlpChunkTokens?: number;
}

export interface LossResult {
  /** Sum of -log p(label) over this rank's valid labels (f64). */
  lossSum: number;
  /** This rank's valid labels. */
  count: number;
}

export class LlamaModel {
  readonly config: LlamaConfig;
  /** Attention forward/backward calls and recomputed stages, over every step so far. */
  readonly counters: LayerCounters = newCounters();
  readonly #parts: ModelParts;
  readonly #invFreq: Float64Array;
  /** Each layer's kind under parts.policy. */
  readonly #policies: readonly LayerPolicy[];
  /** For each layer, the first layer whose weights and kept tensors its backward asks for: inputSource. */
  readonly #sources: readonly number[];
  /**
   * The last RoPE table's host arrays and the positions they are for: a training run's positions are
   * the same every step (each rank's chunks of the sequence), and computing the table in JavaScript
   * costs ~100 ms a step at 32K positions; uploading it again costs a few.
   */
  #rope: { positions: Int32Array; cos: Float32Array; sin: Float32Array } | null = null;

  constructor(parts: ModelParts) {
    this.config = parts.config;
    this.#parts = parts;
    if (parts.weights.layers !== parts.config.layers) {
      throw new TensorError(`model: the weight source has ${parts.weights.layers} layers, the config ${parts.config.layers}`);
    }
    this.#invFreq = ropeInvFreq(parts.config);
    const L = parts.config.layers;
    this.#policies = Array.from({ length: L }, (_, i) => layerPolicy(parts.policy, i, L));
    const kinds: LayerKind[] = this.#policies.map((p) => p.kind);
    this.#sources = kinds.map((_, i) => inputSource(kinds, i));
  }

  get attention(): AttentionFn {
    return this.#parts.attention;
  }

  #check(b: Batch): number {
    const T = b.tokens.length;
    if (b.positions.length !== T || b.labels.length !== T) {
      throw new TensorError(
        `model: batch: tokens, positions and labels must have one entry per local row; got ${T}, ${b.positions.length}, ${b.labels.length}`,
      );
    }
    if (T === 0) throw new TensorError("model: batch: no tokens on this rank (the sequence is shorter than the number of chunks)");
    return T;
  }

  /** One context per layer: the same but for the layer's own policy. */
  #contexts(rope: RopeTable): LayerContext[] {
    const p = this.#parts;
    return this.#policies.map((policy) => ({
      cfg: this.config,
      attention: p.attention,
      rope,
      policy,
      counters: this.counters,
      stream: p.stream,
      mlpChunkTokens: p.mlpChunkTokens,
    }));
  }

  /** Embedding then every layer; returns the last layer's output [T, C]. Keeps what the policy says when `store` is given. */
  async #trunk(
    tokens: Tensor,
    embed: Tensor,
    ctx: readonly LayerContext[],
    store: ActivationStore | null,
    tap?: (x: Tensor) => void,
  ): Promise<Tensor> {
    const { weights, stream } = this.#parts;
    let x = embeddingForward(tokens, embed, { stream });
    weights.prefetch(0);
    for (let i = 0; i < this.config.layers; i++) {
      const w = await weights.layer(i);
      if (i + 1 < this.config.layers) weights.prefetch(i + 1);
      tap?.(x);
      x = await layerForward(i, x, w, ctx[i] as LayerContext, store);
      weights.releaseLayer(i);
    }
    return x;
  }

  /**
   * A skip layer's input: the forward of layers j..i-1 again from layer j's kept x, keeping nothing
   * (each layer's weights asked, the next one prefetched: the last prefetch is layer i's own).
   */
  async #rerun(j: number, i: number, ctx: readonly LayerContext[]): Promise<Tensor> {
    const { weights, store } = this.#parts;
    const kept = store.get(j, "x");
    if (kept === undefined) throw new TensorError(`model: layer ${i} (skip) re-runs from layer ${j}'s input x, which was not kept`);
    let x = kept.view(); // the forward takes ownership of its input; the kept x stays the store's
    try {
      for (let m = j; m < i; m++) {
        const w = await weights.layer(m);
        weights.prefetch(m + 1);
        this.counters.reforward++;
        x = await layerForward(m, x, w, ctx[m] as LayerContext, null);
        weights.releaseLayer(m);
      }
    } catch (e) {
      x.dispose();
      throw e;
    }
    return x;
  }

  #ropeHost(positions: Int32Array): { cos: Float32Array; sin: Float32Array } {
    const c = this.#rope;
    if (c !== null && c.positions.length === positions.length && c.positions.every((p, i) => p === positions[i])) return c;
    const table = ropeHostTable(this.#invFreq, positions);
    this.#rope = { positions: positions.slice(), ...table };
    return table;
  }

  #inputs(b: Batch, device: Tensor["device"]): { tokens: Tensor; rope: RopeTable } {
    const { stream } = this.#parts;
    return {
      tokens: fromArray(b.tokens, [b.tokens.length], { dtype: "i32", device, stream }),
      rope: uploadRopeTable(this.#ropeHost(b.positions), [b.positions.length, this.#invFreq.length], device, { stream }),
    };
  }

  /**
   * Forward and backward of one sequence's local rows: adds every gradient (times gradScale) into the
   * sink, layer by layer as each backward finishes. Returns the local loss sum and label count.
   */
  async forwardBackward(b: Batch, grads: GradientSink, o: { gradScale: number }): Promise<LossResult> {
    const T = this.#check(b);
    if (!Number.isFinite(o.gradScale)) throw new TensorError(`model: gradScale must be a finite number, got ${o.gradScale}`);
    const { weights, store, stream } = this.#parts;
    const nl = await weights.nonLayer();
    const { tokens, rope } = this.#inputs(b, nl.embed.device);
    const ctx = this.#contexts(rope);
    const pending: Promise<void>[] = [];
    try {
      const xL = await this.#trunk(tokens, nl.embed, ctx, store);
      const ng = grads.nonLayer();
      let dx: Tensor;
      let loss: LossResult;
      {
        const { y: hf, rstd } = rmsnormForward(xL, nl.finalNorm, this.config.normEps, { stream });
        using labels = fromArray(b.labels, [T], { dtype: "i32", device: nl.embed.device, stream });
        const r = lmHeadLoss(hf, nl.head, labels, {
          gradScale: o.gradScale,
          dW: ng.head,
          chunkTokens: this.#parts.lossChunkTokens,
          stream,
        });
        loss = { lossSum: r.lossSum, count: r.count };
        hf.dispose();
        const dh = r.dh as Tensor;
        dx = rmsnormBackward(xL, nl.finalNorm, rstd, dh, ng.finalNorm, { stream });
        for (const t of [dh, rstd, xL]) t.dispose();
      }
      // The head's and final norm's gradients are final here: a sink may reduce them during the layers' backward.
      if (!this.config.tiedEmbeddings && grads.headDone) pending.push(grads.headDone());
      const L = this.config.layers;
      const first = (i: number) => this.#sources[i] as number;
      weights.prefetch(first(L - 1));
      for (let i = L - 1; i >= 0; i--) {
        const input = first(i) < i ? await this.#rerun(first(i), i, ctx) : undefined;
        const w = await weights.layer(i);
        if (i > 0) {
          weights.prefetch(first(i - 1));
          store.prefetch(first(i - 1));
        }
        dx = await layerBackward(i, dx, w, grads.layer(i), ctx[i] as LayerContext, store, input);
        weights.releaseLayer(i);
        pending.push(grads.layerDone(i));
      }
      embeddingBackward(tokens, dx, ng.embed, { stream, hostTokens: b.tokens });
      dx.dispose();
      pending.push(grads.nonLayerDone());
      return loss;
    } finally {
      await Promise.all(pending);
      for (const t of [tokens, rope.cos, rope.sin]) t.dispose();
    }
  }

  /** Forward only (evaluation): the local loss sum and label count; nothing is kept. */
  async loss(b: Batch): Promise<LossResult> {
    const T = this.#check(b);
    const { weights, stream } = this.#parts;
    const nl = await weights.nonLayer();
    const { tokens, rope } = this.#inputs(b, nl.embed.device);
    try {
      const xL = await this.#trunk(tokens, nl.embed, this.#contexts(rope), null);
      const { y: hf, rstd } = rmsnormForward(xL, nl.finalNorm, this.config.normEps, { stream });
      using labels = fromArray(b.labels, [T], { dtype: "i32", device: nl.embed.device, stream });
      const r = lmHeadLoss(hf, nl.head, labels, { gradScale: 0, chunkTokens: this.#parts.lossChunkTokens, stream });
      for (const t of [hf, rstd, xL, ...(r.dh ? [r.dh] : [])]) t.dispose();
      return { lossSum: r.lossSum, count: r.count };
    } finally {
      for (const t of [tokens, rope.cos, rope.sin]) t.dispose();
    }
  }

  /**
   * Hidden states as f32 values [T, C] each: the input of every layer (the embedding first), the
   * last layer's output, and the final RMSNorm's output (what Hugging Face's output_hidden_states
   * lists, depending on its version, ends with one of the last two).
   */
  async hiddenStates(b: Batch): Promise<{ inputs: Float32Array[]; output: Float32Array; normed: Float32Array }> {
    this.#check(b);
    const { weights, stream } = this.#parts;
    const nl = await weights.nonLayer();
    const { tokens, rope } = this.#inputs(b, nl.embed.device);
    const inputs: Float32Array[] = [];
    try {
      const xL = await this.#trunk(tokens, nl.embed, this.#contexts(rope), null, (x) => inputs.push(toFloat32Array(x, { stream })));
      const { y: hf, rstd } = rmsnormForward(xL, nl.finalNorm, this.config.normEps, { stream });
      const result = { inputs, output: toFloat32Array(xL, { stream }), normed: toFloat32Array(hf, { stream }) };
      for (const t of [hf, rstd, xL]) t.dispose();
      return result;
    } finally {
      for (const t of [tokens, rope.cos, rope.sin]) t.dispose();
    }
  }

  /** The f32 logits [T, V] of the local rows (small T only: checks against a reference). */
  async logits(b: Batch): Promise<Tensor> {
    this.#check(b);
    const { weights, stream } = this.#parts;
    const nl = await weights.nonLayer();
    const { tokens, rope } = this.#inputs(b, nl.embed.device);
    try {
      const xL = await this.#trunk(tokens, nl.embed, this.#contexts(rope), null);
      const { y: hf, rstd } = rmsnormForward(xL, nl.finalNorm, this.config.normEps, { stream });
      const logits = lmHeadLogits(hf, nl.head, { stream });
      for (const t of [hf, rstd, xL]) t.dispose();
      return logits;
    } finally {
      for (const t of [tokens, rope.cos, rope.sin]) t.dispose();
    }
  }
}

/**
 * The single-rank model: whole weights on their device, one block backend over the local sequence;
 * saved tensors kept in place unless another store is given (e.g. checkpointing's OffloadActivationStore).
 */
export function localModel(
  params: ModelParams,
  o: {
    policy: CheckpointPolicy;
    backend: AttentionBackend;
    store?: ActivationStore;
    stream?: Stream;
    lossChunkTokens?: number;
    mlpChunkTokens?: number;
  },
): LlamaModel {
  return new LlamaModel({
    config: params.config,
    weights: new LocalWeightSource(params),
    attention: localAttention(o.backend),
    store: o.store ?? new LocalActivationStore(),
    policy: o.policy,
    stream: o.stream,
    lossChunkTokens: o.lossChunkTokens,
    mlpChunkTokens: o.mlpChunkTokens,
  });
}
