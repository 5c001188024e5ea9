// One rank's ZeRO-3 optimizer state on the CPU: for every flat buffer of the model (one per layer, in
// the gradient sink's parameter order, plus the non-layer parameters), the rank's shard of the fp32
// master weights and AdamW moments, and the update of a buffer's shard from its reduce-scattered
// gradient shard, cut at parameter borders so norms and embeddings skip weight decay. The GPU path
// keeps the same layout in device memory and launches adamwCuda per segment.

import type { ShardSource, SnapshotLayout } from "../snapshot.ts";
import { type AdamWHyper, adamwReference, adamwScalars } from "./adamw.ts";
import { sumSquares } from "./clip.ts";
import {
  flatLayout,
  ownedRange,
  type ParamRange,
  SHARD_ALIGN,
  type ShardLayout,
  type ShardSegment,
  shardLayout,
  shardSegments,
} from "./shard.ts";

/** A flat buffer as the model describes it: its parameters in order. */
export interface BufferSpec {
  name: string;
  params: { name: string; numel: number }[];
}

/** A buffer's place in one rank's state: its parameters, shard geometry and decay segments. */
export interface BufferPlan {
  spec: BufferSpec;
  params: ParamRange[];
  layout: ShardLayout;
  segments: ShardSegment[];
}

/** The plan of every buffer for rank `rank` of `ranks` (shared by the CPU and CUDA states). */
export function planBuffers(specs: readonly BufferSpec[], rank: number, ranks: number): BufferPlan[] {
  const seen = new Set<string>();
  return specs.map((spec) => {
    if (seen.has(spec.name)) throw new RangeError(`buffer name "${spec.name}" given twice`);
    seen.add(spec.name);
    const params = flatLayout(spec.params);
    const numel = params.reduce((a, p) => a + p.numel, 0);
    const layout = shardLayout(numel, ranks, SHARD_ALIGN);
    return { spec, params, layout, segments: shardSegments(layout, params, rank) };
  });
}

/** The layout snapshot.ts records for these buffers. */
export function planSnapshotLayout(plans: readonly BufferPlan[]): SnapshotLayout {
  return { buffers: plans.map((b) => ({ name: b.spec.name, numel: b.layout.numel })), align: SHARD_ALIGN };
}

/** The arrays every optimizer state saves, in file order. */
export const STATE_ARRAYS = ["master", "m", "v"] as const;
export type StateArray = (typeof STATE_ARRAYS)[number];

export function stateKey(k: string): StateArray {
  if (!(STATE_ARRAYS as readonly string[]).includes(k)) throw new RangeError(`no state array "${k}" (arrays: ${STATE_ARRAYS.join(", ")})`);
  return k as StateArray;
}

/** Refuses a source that lacks one of master, m, v. */
export function checkStateArrays(src: ShardSource): void {
  for (const k of STATE_ARRAYS)
    if (!src.arrays.includes(k)) throw new RangeError(`restore: the snapshot has no "${k}" (it has ${src.arrays.join(", ")})`);
}

/** Buffer i's shard of `k` from `src`, checked against the plan's shard length. */
export function checkedShard(src: ShardSource, k: StateArray, i: number, b: BufferPlan): Float32Array {
  const a = src.shard(k, i);
  if (a.length !== b.layout.shardLen)
    throw new RangeError(`restore: "${k}" of buffer ${b.spec.name} has ${a.length} elements, expected ${b.layout.shardLen}`);
  return a;
}

interface BufferState extends BufferPlan {
  master: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

export class ShardedAdamW {
  private readonly buffers: BufferState[];
  private readonly byName = new Map<string, number>();

  constructor(
    specs: readonly BufferSpec[],
    readonly rank: number,
    readonly ranks: number,
    readonly hyper: AdamWHyper,
  ) {
    this.buffers = planBuffers(specs, rank, ranks).map((plan, i) => {
      this.byName.set(plan.spec.name, i);
      const n = plan.layout.shardLen;
      return { ...plan, master: new Float32Array(n), m: new Float32Array(n), v: new Float32Array(n) };
    });
  }

  private get(name: string): BufferState {
    const i = this.byName.get(name);
    if (i === undefined) throw new RangeError(`no buffer "${name}" (buffers: ${[...this.byName.keys()].join(", ")})`);
    return this.buffers[i] as BufferState;
  }

  /** The buffer's shard geometry (what the reduce-scatter and all-gather use). */
  layoutOf(name: string): ShardLayout {
    return this.get(name).layout;
  }

  /** This rank's fp32 master shard of a buffer (shardLen elements, padding zero). */
  master(name: string): Float32Array {
    return this.get(name).master;
  }

  /** Sets this rank's master shard from the whole buffer's initial values (every rank holds the same init). */
  initFromFull(name: string, full: Float32Array): void {
    const b = this.get(name);
    if (full.length !== b.layout.numel) throw new RangeError(`buffer "${name}": ${full.length} values for ${b.layout.numel} parameters`);
    const { start, len } = ownedRange(b.layout, this.rank);
    b.master.fill(0);
    b.master.set(full.subarray(start, start + len));
  }

  /** This rank's partial sum of squares of a gradient shard (for the global norm). */
  gradSumSquares(name: string, grad: Float32Array): number {
    this.checkGrad(this.get(name), grad);
    return sumSquares(grad);
  }

  /**
   * AdamW step t (1-based) of one buffer's shard with its gradient shard (shardLen elements, as the
   * reduce-scatter delivers it), lr of this step and the clip/averaging factor. Writes the new bf16
   * weights of the shard into `bf16` when given (the next all-gather's input).
   */
  step(name: string, grad: Float32Array, t: number, lr: number, gradScale: number, bf16?: Uint16Array): void {
    const b = this.get(name);
    this.checkGrad(b, grad);
    if (bf16 && bf16.length !== b.layout.shardLen)
      throw new RangeError(`buffer "${name}": bf16 shard of ${bf16.length}, expected ${b.layout.shardLen}`);
    const h = { ...this.hyper, lr };
    const decayed = adamwScalars(h, t, true, gradScale);
    const plain = adamwScalars(h, t, false, gradScale);
    for (const s of b.segments) {
      const r = [s.offset, s.offset + s.len] as const;
      adamwReference(
        b.master.subarray(...r),
        grad.subarray(...r),
        b.m.subarray(...r),
        b.v.subarray(...r),
        s.decay ? decayed : plain,
        bf16?.subarray(...r),
      );
    }
  }

  private checkGrad(b: BufferState, grad: Float32Array): void {
    if (grad.length !== b.layout.shardLen)
      throw new RangeError(
        `buffer "${b.spec.name}": gradient shard of ${grad.length} elements, expected ${b.layout.shardLen} (rank ${this.rank} of ${this.ranks})`,
      );
  }

  /** The layout snapshot.ts records (buffers in order, the shard alignment). */
  snapshotLayout(): SnapshotLayout {
    return planSnapshotLayout(this.buffers);
  }

  /** master, m and v of every buffer, one buffer's shard at a time (what writeRankShards takes). */
  snapshotArrays(): ShardSource {
    return { arrays: STATE_ARRAYS, shard: (k, b) => this.at(b)[stateKey(k)] };
  }

  /** The inverse of snapshotArrays (from readRankShards, which re-cuts them for this mesh), buffer by buffer. */
  restore(src: ShardSource): void {
    checkStateArrays(src);
    this.buffers.forEach((b, i) => {
      for (const k of STATE_ARRAYS) b[k].set(checkedShard(src, k, i, b));
    });
  }

  private at(i: number): BufferState {
    const b = this.buffers[i];
    if (!b) throw new RangeError(`no buffer ${i} (${this.buffers.length} buffers)`);
    return b;
  }
}

/** The parameter order of a Llama layer's flat gradient buffer (the model's GradientSink order). */
export const LAYER_PARAMS = ["attnNorm", "wq", "wk", "wv", "wo", "mlpNorm", "wGate", "wUp", "wDown"] as const;
