// The four interfaces that keep the model free of parallelism and memory placement (DESIGN.md
// section 4), each with its plain local implementation. `parallelize.ts` supplies the distributed
// attention; the trainer supplies sharded weights and gradients; the offloading activation store is
// checkpointing's (offload.ts), which also defines the ActivationStore interface (store.ts).
//
//   AttentionFn      forward(q, k, v) -> { o, lse }; backward({ q, k, v, o, lse }, dO) -> { dq, dk, dv }
//                    over this rank's rows, causal over the whole (global) sequence
//   WeightSource     layer i's weights, asked one layer ahead (prefetch) so they can be gathered
//   GradientSink     f32 buffers the backward accumulates layer i's gradients into, and a call as
//                    soon as layer i's backward is done (reduce-scatter, optimizer step, ...)
//   ActivationStore  put / get / prefetch / release of the tensors a checkpoint policy keeps
//
// Layouts (attention/src/layout.ts): q [T, Hq, D], k and v [T, Hkv, D], o like q; lse is one f32
// [Hq, Tc] tensor per local chunk of rows (DistAttn keeps one per chunk; the local one has one chunk).

import type { AttentionBackend } from "@lightseq/attention";
import type { ActivationStore, SavedName, SavedValue } from "@lightseq/checkpointing";
import { fill, type Tensor, TensorError } from "@lightseq/tensor";
import {
  disposeLayerViews,
  disposeNonLayerViews,
  type LayerWeights,
  type ModelParams,
  type NonLayerWeights,
  nonLayerViews,
  paramLayerViews,
} from "./weights.ts";

// ---- attention -----------------------------------------------------------------------------------

export interface AttentionOut {
  /** [T, Hq, D] in q's dtype: the final output of this rank's rows. */
  o: Tensor;
  /** One f32 [Hq, Tc] per local chunk, natural log. */
  lse: Tensor[];
}

/** What the attention backward needs: the forward's inputs and its final output with lse. */
export interface AttentionSaved extends AttentionOut {
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

export interface AttentionGrads {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

export interface AttentionFn {
  /** Shown in logs: the backend and, for DistAttn, the schedule. */
  readonly name: string;
  /** Causal attention of this rank's rows over the whole sequence. The caller owns the results. */
  forward(q: Tensor, k: Tensor, v: Tensor): Promise<AttentionOut>;
  /** Gradients in the dtype of q, k, v; the caller owns them. `saved` stays the caller's. */
  backward(saved: AttentionSaved, dO: Tensor): Promise<AttentionGrads>;
}

/** One block backend over the whole local sequence (one chunk, causal): the single-rank attention. */
export function localAttention(backend: AttentionBackend): AttentionFn {
  return {
    name: `local ${backend.name}`,
    async forward(q, k, v) {
      const r = backend.forward(q, k, v, { causal: true });
      return { o: r.o, lse: [r.lse] };
    },
    async backward(s, dO) {
      if (s.lse.length !== 1) throw new TensorError(`localAttention.backward: expected one lse tensor (one chunk), got ${s.lse.length}`);
      return backend.backward(s.q, s.k, s.v, s.o, s.lse[0] as Tensor, dO, { causal: true });
    },
  };
}

// ---- weights -------------------------------------------------------------------------------------

export interface WeightSource {
  readonly layers: number;
  /** A hint: layer i will be asked for soon (a sharded source starts gathering it). */
  prefetch(layer: number): void;
  /** Layer i's weights (views), valid until releaseLayer(i). */
  layer(layer: number): Promise<LayerWeights>;
  /** The forward or backward of layer i is done with its weights. */
  releaseLayer(layer: number): void;
  /** Embedding, final norm and LM head (head is the embedding when tied); valid until the source is disposed. */
  nonLayer(): Promise<NonLayerWeights>;
}

/** Weights already on the device, whole. */
export class LocalWeightSource implements WeightSource, Disposable {
  readonly layers: number;
  readonly #views: LayerWeights[];
  readonly #nonLayer: NonLayerWeights;

  constructor(readonly params: ModelParams) {
    this.layers = params.layers.length;
    this.#views = params.layers.map((_, i) => paramLayerViews(params, i));
    this.#nonLayer = nonLayerViews(params);
  }

  prefetch(_layer: number): void {}

  async layer(i: number): Promise<LayerWeights> {
    const w = this.#views[i];
    if (w === undefined) throw new TensorError(`weights: layer ${i} out of range (the model has ${this.layers} layers)`);
    return w;
  }

  releaseLayer(_layer: number): void {}

  async nonLayer(): Promise<NonLayerWeights> {
    return this.#nonLayer;
  }

  /** Drops the views (the params stay the caller's). */
  [Symbol.dispose](): void {
    for (const w of this.#views) disposeLayerViews(w);
    disposeNonLayerViews(this.#nonLayer);
  }
}

// ---- gradients -----------------------------------------------------------------------------------

export interface GradientSink {
  /** f32 gradient views of layer i (shaped as its weights) that its backward accumulates into (+=). */
  layer(layer: number): LayerWeights;
  /** Layer i's gradients are complete for this micro-batch. */
  layerDone(layer: number): Promise<void>;
  /** f32 gradients of embedding, final norm and head (head is the embedding's when tied: both add into it). */
  nonLayer(): NonLayerWeights;
  /**
   * Optional: the final norm's and the (untied) head's gradients are complete for this micro-batch,
   * right after the loss's backward, so a sink may reduce (and update) them while the layers' backward
   * runs. Not called when the head is tied to the embedding. nonLayerDone then covers the rest.
   */
  headDone?(): Promise<void>;
  /** The embedding's gradients are complete too (and the head's and final norm's, if headDone was not called). */
  nonLayerDone(): Promise<void>;
}

/**
 * Accumulates into one f32 ModelParams in place (micro-batches add up); `zero()` clears it. The
 * params must be f32 and shaped like the model's (zeroParams in weights.ts).
 */
export class LocalGradientSink implements GradientSink, Disposable {
  readonly #views: LayerWeights[];
  readonly #nonLayer: NonLayerWeights;

  constructor(readonly grads: ModelParams) {
    for (const t of grads.all()) {
      if (t.dtype !== "f32") throw new TensorError(`gradient sink: gradients accumulate in f32, got ${t.describe()}`);
    }
    this.#views = grads.layers.map((_, i) => paramLayerViews(grads, i));
    this.#nonLayer = nonLayerViews(grads);
  }

  layer(i: number): LayerWeights {
    const g = this.#views[i];
    if (g === undefined) throw new TensorError(`gradients: layer ${i} out of range (the model has ${this.#views.length} layers)`);
    return g;
  }

  async layerDone(_layer: number): Promise<void> {}

  nonLayer(): NonLayerWeights {
    return this.#nonLayer;
  }

  async nonLayerDone(): Promise<void> {}

  zero(): void {
    for (const t of this.grads.all()) fill(t, 0);
  }

  /** Drops the views (the gradients stay the caller's). */
  [Symbol.dispose](): void {
    for (const w of this.#views) disposeLayerViews(w);
    disposeNonLayerViews(this.#nonLayer);
  }
}

// ---- activations ---------------------------------------------------------------------------------

// ActivationStore and SavedValue are checkpointing's (store.ts): the offloading store lives there too.
export type { ActivationStore, SavedValue };

/** Keeps tensors where they are (device memory on the GPU). */
export class LocalActivationStore implements ActivationStore {
  readonly #layers = new Map<number, Map<SavedName, Tensor | Tensor[]>>();

  put<K extends SavedName>(layer: number, name: K, value: SavedValue<K>): void {
    let m = this.#layers.get(layer);
    if (!m) {
      m = new Map();
      this.#layers.set(layer, m);
    }
    if (m.has(name)) throw new TensorError(`activation store: layer ${layer} already holds "${name}" (release the layer first)`);
    m.set(name, value);
  }

  get<K extends SavedName>(layer: number, name: K): SavedValue<K> | undefined {
    return this.#layers.get(layer)?.get(name) as SavedValue<K> | undefined;
  }

  prefetch(_layer: number): void {}

  release(layer: number): void {
    const m = this.#layers.get(layer);
    if (!m) return;
    for (const v of m.values()) for (const t of Array.isArray(v) ? v : [v]) t.dispose();
    this.#layers.delete(layer);
  }

  bytes(): number {
    let n = 0;
    for (const m of this.#layers.values()) for (const v of m.values()) for (const t of Array.isArray(v) ? v : [v]) n += t.bytes;
    return n;
  }

  /** The names kept for `layer` (tests: what a policy kept). */
  names(layer: number): SavedName[] {
    return [...(this.#layers.get(layer)?.keys() ?? [])];
  }
}
