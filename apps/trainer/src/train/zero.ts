// ZeRO-3 (DESIGN.md section 4) as the model's weight source and gradient sink, over every rank of the
// job (the sequence-parallel group and the data-parallel replicas together).
//
// Weights: layer i's padded flat buffer is the all-gather of every rank's shard (ShardedState
// .weightShard: bf16 on a GPU, f32 on the CPU); prefetch(i) starts it on the comm stream, layer(i)
// makes the compute stream wait for it. On a GPU the gathered layers live in SLOTS fixed buffers
// reused round-robin (the current layer, the prefetched one, and the one just released, which the
// backward asks for first after the forward), each with an event so a gather never overwrites a slot
// the compute stream still reads. The embedding, final norm and head are gathered once per optimizer
// step (invalidate() marks everything stale after the update).
// Gradients: the backward accumulates a layer's f32 gradient into a zeroed padded scratch buffer;
// layerDone reduce-scatters it (sum) on the comm stream into this rank's accumulated gradient shard
// (the first micro-batch of a step writes it, later ones add to it). On the CPU the collectives are
// the CPU communicator's promises (frames match by issue order, so several may be in flight); the
// gradient scratch is a fresh buffer per layer there.
// Per-layer update on a GPU (`--update per-layer`): no whole-model gradient. The reduce-scatters
// write, in turn, into a ring of shard buffers each as long as the largest buffer's shard; each has an
// event the update records once it has read the buffer, and the comm stream waits for it before the
// next reduce-scatter into that buffer. The device state updates on the comm stream itself (in order:
// one buffer is enough); the host state updates on its own stream, so a ring of HOST_RING lets the
// next layers' reduce-scatters run while the previous updates stream.

import type { Communicator } from "@lightseq/comm";
import { Event, Stream } from "@lightseq/cuda";
import {
  disposeLayerViews,
  disposeNonLayerViews,
  type GradientSink,
  type LayerWeights,
  type LlamaConfig,
  layerLayout,
  layerViews,
  type NonLayerWeights,
  type WeightSource,
} from "@lightseq/llama";
import { axpy, fill, sumOfSquares, type Tensor, zeros } from "@lightseq/tensor";
import { layerBuffer } from "./buffers.ts";
import type { ShardedState, StatePlace } from "./state.ts";

/** Gathered layers kept on a GPU: current, prefetched, and the last released (see the header). */
const SLOTS = 3;

/**
 * Gradient shard buffers with the host state per layer: the one being reduced into, and two whose
 * streamed updates may still be running (a 7B layer's update, ~50 ms, is shorter than its backward).
 */
export const HOST_RING = 3;

/** Gradient shard buffers a per-layer update on a GPU cycles through, by where the state lives. */
export function gradientRing(place: StatePlace): number {
  switch (place) {
    case "device":
      return 1;
    case "host":
      return HOST_RING;
    case "cpu":
      return 0;
    default:
      throw new RangeError(`ZeRO gradients: unknown state place ${JSON.stringify(place satisfies never)}`);
  }
}

/** The GPU side of ZeRO: the compute stream the model runs on and the comm stream the collectives use. */
export interface ZeroStreams {
  compute: Stream;
  comm: Stream;
}

interface Slot {
  layer: number;
  flat: Tensor;
  views: LayerWeights | null;
  /** Recorded on comm after the gather. */
  ready: Event | null;
  /** Recorded on compute when the layer is released. */
  released: Event | null;
  pending: Promise<void> | null;
  inUse: boolean;
  lastUse: number;
}

/** `numel` elements of a padded flat buffer viewed as `shape`. */
function viewAs(flat: Tensor, numel: number, shape: readonly number[]): Tensor {
  const n = flat.narrow(0, numel);
  const v = n.reshape(shape);
  n.dispose();
  return v;
}

export class ZeroWeightSource implements WeightSource, Disposable {
  readonly layers: number;
  readonly #slots: Slot[] = [];
  readonly #numel: number;
  #clock = 0;
  #nonLayer: { flats: Tensor[]; views: NonLayerWeights; ready: Promise<void> } | null = null;
  readonly #nonLayerFlats: Tensor[] = [];
  readonly #nonLayerReleased: Event | null;
  /** Called with the layer index each time the model asks for a layer's weights. */
  onLayer: ((layer: number) => void) | null = null;
  /** Called with the layer index each time the model releases a layer's weights (after its compute is enqueued). */
  onRelease: ((layer: number) => void) | null = null;

  constructor(
    readonly cfg: LlamaConfig,
    readonly comm: Communicator,
    readonly state: ShardedState,
    readonly streams: ZeroStreams | null,
  ) {
    this.layers = cfg.layers;
    this.#numel = layerLayout(cfg).numel;
    this.#nonLayerReleased = streams ? Event.create(0) : null;
  }

  get #dtype() {
    return this.streams ? "bf16" : "f32";
  }

  get #device() {
    return this.streams ? "cuda:0" : "cpu";
  }

  #gather(buffer: string, into: Tensor): Promise<void> {
    return this.comm.allGather(this.state.weightShard(buffer), into, this.streams ? { stream: this.streams.comm } : {});
  }

  #slotFor(layer: number): Slot {
    const held = this.#slots.find((s) => s.layer === layer);
    if (held) return held;
    const padded = this.state.layoutOf(layerBuffer(layer)).padded;
    let slot: Slot | undefined;
    if (this.#slots.length < SLOTS) {
      const flat = zeros([padded], { dtype: this.#dtype, device: this.#device });
      slot = { layer: -1, flat, views: null, ready: null, released: null, pending: null, inUse: false, lastUse: 0 };
      if (this.streams) {
        slot.ready = Event.create(0);
        slot.released = Event.create(0).record(this.streams.compute);
      }
      this.#slots.push(slot);
    } else {
      const free = this.#slots.filter((s) => !s.inUse && s.pending === null);
      slot = free.sort((a, b) => a.lastUse - b.lastUse)[0];
      if (!slot) throw new RangeError(`ZeRO weights: more than ${SLOTS} layers asked at once`);
      if (slot.views) disposeLayerViews(slot.views);
      slot.views = null;
    }
    slot.layer = layer;
    slot.lastUse = ++this.#clock;
    if (this.streams) this.streams.comm.wait(slot.released as Event);
    slot.pending = this.#gather(layerBuffer(layer), slot.flat).then(() => {
      if (this.streams) slot.ready?.record(this.streams.comm);
    });
    return slot;
  }

  prefetch(layer: number): void {
    this.#slotFor(layer);
  }

  async layer(layer: number): Promise<LayerWeights> {
    if (layer < 0 || layer >= this.layers) throw new RangeError(`ZeRO weights: layer ${layer} outside [0, ${this.layers})`);
    const slot = this.#slotFor(layer);
    if (slot.pending) {
      await slot.pending;
      slot.pending = null;
    }
    if (this.streams) this.streams.compute.wait(slot.ready as Event);
    slot.inUse = true;
    slot.lastUse = ++this.#clock;
    if (!slot.views) {
      const n = slot.flat.narrow(0, this.#numel);
      slot.views = layerViews(n, this.cfg);
      n.dispose();
    }
    this.onLayer?.(layer);
    return slot.views;
  }

  releaseLayer(layer: number): void {
    const slot = this.#slots.find((s) => s.layer === layer);
    if (!slot) throw new RangeError(`ZeRO weights: releaseLayer(${layer}) of a layer not gathered`);
    slot.inUse = false;
    if (this.streams) slot.released?.record(this.streams.compute);
    this.onRelease?.(layer);
  }

  async nonLayer(): Promise<NonLayerWeights> {
    if (!this.#nonLayer) {
      const names = ["embed", "finalNorm", ...(this.cfg.tiedEmbeddings ? [] : ["head"])];
      if (this.#nonLayerFlats.length === 0) {
        for (const n of names)
          this.#nonLayerFlats.push(zeros([this.state.layoutOf(n).padded], { dtype: this.#dtype, device: this.#device }));
        // The zero fills ran on the compute stream; the gathers must not race them.
        if (this.streams) this.#nonLayerReleased?.record(this.streams.compute);
      }
      if (this.streams) this.streams.comm.wait(this.#nonLayerReleased as Event);
      const flats = this.#nonLayerFlats;
      const ready = Promise.all(names.map((n, i) => this.#gather(n, flats[i] as Tensor))).then(() => {});
      const VC = this.cfg.vocab * this.cfg.dim;
      const embed = viewAs(flats[0] as Tensor, VC, [this.cfg.vocab, this.cfg.dim]);
      const finalNorm = viewAs(flats[1] as Tensor, this.cfg.dim, [this.cfg.dim]);
      const head = this.cfg.tiedEmbeddings ? embed.view() : viewAs(flats[2] as Tensor, VC, [this.cfg.vocab, this.cfg.dim]);
      this.#nonLayer = { flats, views: { embed, finalNorm, head }, ready };
    }
    await this.#nonLayer.ready;
    if (this.streams) {
      const e = Event.create(0).record(this.streams.comm);
      this.streams.compute.wait(e);
      e.dispose();
    }
    return this.#nonLayer.views;
  }

  /** The weights changed (an optimizer step): every gathered copy is stale. */
  invalidate(): void {
    if (this.streams) {
      // The next gathers read the shards the update (on the compute stream) is writing.
      const e = Event.create(0).record(this.streams.compute);
      this.streams.comm.wait(e);
      e.dispose();
    }
    for (const s of this.#slots) {
      if (s.inUse) throw new RangeError(`ZeRO weights: layer ${s.layer} still in use at the optimizer step`);
      s.layer = -1;
    }
    if (this.#nonLayer) {
      disposeNonLayerViews(this.#nonLayer.views);
      this.#nonLayer = null;
      if (this.streams) this.#nonLayerReleased?.record(this.streams.compute);
    }
  }

  [Symbol.dispose](): void {
    this.invalidate();
    for (const s of this.#slots) {
      if (s.views) disposeLayerViews(s.views);
      s.flat.dispose();
      s.ready?.dispose();
      s.released?.dispose();
    }
    for (const t of this.#nonLayerFlats) t.dispose();
    this.#nonLayerReleased?.dispose();
  }
}

/** A gradient shard buffer of the per-layer ring. */
interface RingBuffer {
  flat: Tensor;
  /** Recorded by the update once it has read the buffer (StepOptions.consumed). */
  consumed: Event;
}

interface Scratch {
  flat: Tensor;
  views: LayerWeights;
  /** GPU: recorded on comm once the reduce-scatter has read the buffer. */
  consumed: Event | null;
}

/** A per-layer update of one buffer's gradient shard; on a GPU it records `consumed` once it has read it. */
export type PerLayerUpdate = (name: string, shard: Tensor, consumed: Event | null) => void;

/**
 * Gradients of one optimizer step: the f32 shards this rank owns of every buffer (accumulated over the
 * step's micro-batches), filled by reduce-scatters as each layer's backward finishes.
 */
export class ZeroGradientSink implements GradientSink, Disposable {
  /** This rank's accumulated gradient shard of every buffer (f32, shardLen). */
  readonly shards = new Map<string, Tensor>();
  readonly #written = new Set<string>();
  readonly #pool: Scratch[] = [];
  readonly #active = new Map<number, Scratch>();
  #nonLayer: { flats: Tensor[]; views: NonLayerWeights } | null = null;
  #nonLayerFlats: Tensor[] = [];
  #nonLayerConsumed: Event | null = null;
  /** headDone() ran in this micro-batch: nonLayerDone reduces the embedding only. */
  #headReduced = false;
  readonly #tmp = new Map<string, Tensor>();
  readonly #filled: Event | null;
  readonly #numel: number;
  /** Called with the layer index as each layer's gradients are handed over. */
  onLayerDone: ((layer: number) => void) | null = null;
  /** Called as the model asks for the non-layer gradients: its trunk is done, the loss begins. */
  onNonLayer: (() => void) | null = null;

  /**
   * Per-layer update (`--update per-layer`): called with each buffer's final gradient shard as soon as
   * it is reduced, in the comm stream's order (one micro-batch per step), and on a GPU the event of
   * the ring buffer holding it, which the callee records once its update has read the shard (see the
   * header); null on the CPU.
   */
  readonly #perLayer: PerLayerUpdate | null;
  readonly #ring: RingBuffer[] = [];
  #ringNext = 0;
  /** Per-layer mode: each buffer's sum of squares, one f32 on the shard's device (summed once per step). */
  readonly sumSquares: Tensor[] = [];

  constructor(
    readonly cfg: LlamaConfig,
    readonly comm: Communicator,
    readonly state: ShardedState,
    readonly names: readonly string[],
    readonly streams: ZeroStreams | null,
    perLayer: PerLayerUpdate | null = null,
  ) {
    this.#numel = layerLayout(cfg).numel;
    const device = streams ? "cuda:0" : "cpu";
    this.#perLayer = perLayer;
    if (perLayer !== null && streams !== null) {
      // Sized for the largest buffer (a layer, or the embedding / head: vocab x dim).
      const len = Math.max(...names.map((n) => state.layoutOf(n).shardLen));
      for (let j = 0; j < gradientRing(state.place); j++)
        this.#ring.push({ flat: zeros([len], { device }), consumed: Event.create(0).record(streams.comm) });
    } else {
      for (const n of names) this.shards.set(n, zeros([state.layoutOf(n).shardLen], { device }));
    }
    this.#filled = streams ? Event.create(0) : null;
  }

  get #device() {
    return this.streams ? "cuda:0" : "cpu";
  }

  /** A new optimizer step: the next reduce-scatter of each buffer overwrites its shard. */
  beginStep(): void {
    this.#written.clear();
    for (const t of this.sumSquares) t.dispose();
    this.sumSquares.length = 0;
  }

  #scratch(layer: number): Scratch {
    const padded = this.state.layoutOf(layerBuffer(layer)).padded;
    let s: Scratch | undefined;
    if (this.streams) {
      s = this.#pool.pop();
      if (s) this.streams.compute.wait(s.consumed as Event);
    }
    if (!s) {
      const flat = zeros([padded], { device: this.#device });
      const n = flat.narrow(0, this.#numel);
      s = { flat, views: layerViews(n, this.cfg), consumed: this.streams ? Event.create(0) : null };
      n.dispose();
    } else {
      fill(s.flat, 0, this.streams?.compute);
    }
    return s;
  }

  layer(layer: number): LayerWeights {
    let s = this.#active.get(layer);
    if (!s) {
      s = this.#scratch(layer);
      this.#active.set(layer, s);
    }
    return s.views;
  }

  /** Reduce-scatters a padded f32 buffer into the buffer's shard (written, or added on later micro-batches). */
  async #reduce(name: string, flat: Tensor): Promise<void> {
    const o = this.streams ? { stream: this.streams.comm } : {};
    if (this.#perLayer) {
      // GPU: the ring buffer is taken, waited for, reduced into, its sum of squares and its update
      // issued, all in this tick: a later, unawaited layerDone/nonLayerDone takes the next buffer, and
      // on the comm stream the sum of squares reads this one before any later reduce-scatter into it
      // (which also waits for its update's `consumed`). CPU: one shard per buffer, the result arrives
      // with the promise.
      const ring = this.#ring.length > 0 ? (this.#ring[this.#ringNext++ % this.#ring.length] as RingBuffer) : null;
      if (ring && this.streams) this.streams.comm.wait(ring.consumed);
      using shard = ring ? ring.flat.narrow(0, this.state.layoutOf(name).shardLen) : (this.shards.get(name) as Tensor).view();
      const done = this.comm.reduceScatter(flat, shard, "sum", o);
      if (!this.streams) await done;
      this.sumSquares.push(sumOfSquares(shard, o));
      this.#perLayer(name, shard, ring?.consumed ?? null);
      await done;
      return;
    }
    using shard = (this.shards.get(name) as Tensor).view();
    if (!this.#written.has(name)) {
      this.#written.add(name);
      await this.comm.reduceScatter(flat, shard, "sum", o);
      return;
    }
    // GPU: one buffer for every later micro-batch's shard (the reduce-scatter and the add are ordered
    // on the comm stream); CPU: one per buffer, as several reduce-scatters may be in flight.
    const key = this.streams ? "" : name;
    let tmp = this.#tmp.get(key);
    if (!tmp || tmp.numel < shard.numel) {
      tmp?.dispose();
      const len = this.streams ? Math.max(...[...this.shards.values()].map((t) => t.numel)) : shard.numel;
      tmp = zeros([len], { device: this.#device, stream: this.streams?.comm });
      this.#tmp.set(key, tmp);
    }
    using part = tmp.narrow(0, shard.numel);
    await this.comm.reduceScatter(flat, part, "sum", o);
    axpy(1, part, shard, o);
  }

  #handOff(): void {
    if (this.streams) {
      this.#filled?.record(this.streams.compute);
      this.streams.comm.wait(this.#filled as Event);
    }
  }

  async layerDone(layer: number): Promise<void> {
    const s = this.#active.get(layer);
    if (!s) throw new RangeError(`ZeRO gradients: layerDone(${layer}) without layer(${layer})`);
    this.#active.delete(layer);
    this.#handOff();
    const p = this.#reduce(layerBuffer(layer), s.flat);
    this.onLayerDone?.(layer);
    await p;
    if (this.streams) {
      s.consumed?.record(this.streams.comm);
      this.#pool.push(s);
    } else {
      disposeLayerViews(s.views);
      s.flat.dispose();
    }
  }

  nonLayer(): NonLayerWeights {
    this.onNonLayer?.();
    if (!this.#nonLayer) {
      const names = ["embed", "finalNorm", ...(this.cfg.tiedEmbeddings ? [] : ["head"])];
      if (this.#nonLayerFlats.length === 0) {
        this.#nonLayerFlats = names.map((n) => zeros([this.state.layoutOf(n).padded], { device: this.#device }));
        if (this.streams) this.#nonLayerConsumed = Event.create(0).record(this.streams.comm);
      } else {
        if (this.streams) this.streams.compute.wait(this.#nonLayerConsumed as Event);
        for (const f of this.#nonLayerFlats) fill(f, 0, this.streams?.compute);
      }
      const flats = this.#nonLayerFlats;
      const VC = this.cfg.vocab * this.cfg.dim;
      const embed = viewAs(flats[0] as Tensor, VC, [this.cfg.vocab, this.cfg.dim]);
      const finalNorm = viewAs(flats[1] as Tensor, this.cfg.dim, [this.cfg.dim]);
      const head = this.cfg.tiedEmbeddings ? embed.view() : viewAs(flats[2] as Tensor, VC, [this.cfg.vocab, this.cfg.dim]);
      this.#nonLayer = { flats, views: { embed, finalNorm, head } };
    }
    return this.#nonLayer.views;
  }

  /**
   * The final norm's and the untied head's gradients are complete (right after the loss's backward):
   * both reduce-scatters (and, per layer, their updates) are issued now, in one tick, so they run
   * during the layers' backward; the head's state then streams there too, not after the backward.
   */
  headDone(): Promise<void> {
    const s = this.#nonLayer;
    if (!s) throw new RangeError("ZeRO gradients: headDone() without nonLayer()");
    if (this.cfg.tiedEmbeddings) throw new RangeError("ZeRO gradients: headDone() with a tied head (its gradient is the embedding's)");
    if (this.#headReduced) throw new RangeError("ZeRO gradients: headDone() twice in one micro-batch");
    this.#headReduced = true;
    this.#handOff();
    // Issued in the same tick (not one after the other's promise): CPU ranks match frames by issue order.
    return Promise.all([this.#reduce("finalNorm", s.flats[1] as Tensor), this.#reduce("head", s.flats[2] as Tensor)]).then(() => {});
  }

  async nonLayerDone(): Promise<void> {
    const s = this.#nonLayer;
    if (!s) throw new RangeError("ZeRO gradients: nonLayerDone() without nonLayer()");
    this.#nonLayer = null;
    disposeNonLayerViews(s.views);
    this.#handOff();
    const names = ["embed", ...(this.#headReduced ? [] : ["finalNorm", ...(this.cfg.tiedEmbeddings ? [] : ["head"])])];
    this.#headReduced = false;
    for (const [i, n] of names.entries()) await this.#reduce(n, s.flats[i] as Tensor);
    if (this.streams) this.#nonLayerConsumed?.record(this.streams.comm);
  }

  /** The compute stream waits for every reduce-scatter issued so far (before the norm and the update). */
  settle(): void {
    if (!this.streams) return;
    const e = Event.create(0).record(this.streams.comm);
    this.streams.compute.wait(e);
    e.dispose();
  }

  [Symbol.dispose](): void {
    for (const s of this.#pool) {
      disposeLayerViews(s.views);
      s.flat.dispose();
      s.consumed?.dispose();
    }
    for (const t of [...this.shards.values(), ...this.#tmp.values(), ...this.#nonLayerFlats, ...this.sumSquares]) t.dispose();
    for (const r of this.#ring) {
      r.flat.dispose();
      r.consumed.dispose();
    }
    this.#filled?.dispose();
    this.#nonLayerConsumed?.dispose();
  }
}

/** The two streams of a GPU rank. */
export function zeroStreams(compute: Stream): ZeroStreams {
  return { compute, comm: Stream.create(0) };
}
