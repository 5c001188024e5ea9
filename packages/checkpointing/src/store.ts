// The activation store: where the tensors a checkpoint policy keeps (policy.ts) live between a
// layer's forward and its backward (DESIGN.md section 4). The model puts them at the end of layer i's
// forward, announces layer i's backward one layer ahead (prefetch), gets them in that backward and
// releases them when it is done. Implementations: the model's local store (kept where they are) and
// the offloading store (offload.ts: pinned host memory, or the GPU up to a budget and the host beyond).

import type { Tensor } from "@lightseq/tensor";
import type { SavedName } from "./policy.ts";

/** lse is a list (one per local chunk of rows); every other saved tensor is one tensor. */
export type SavedValue<K extends SavedName> = K extends "lse" ? Tensor[] : Tensor;

export interface ActivationStore {
  /** Keeps `value` for the backward of `layer`; the store takes ownership. */
  put<K extends SavedName>(layer: number, name: K, value: SavedValue<K>): void;
  /** What was put, or undefined; still owned by the store (valid until release). */
  get<K extends SavedName>(layer: number, name: K): SavedValue<K> | undefined;
  /** A hint: the backward of `layer` comes next (an offloading store starts copying it back). */
  prefetch(layer: number): void;
  /** Disposes everything kept for `layer`. */
  release(layer: number): void;
  /** Bytes held now. */
  bytes(): number;
}
