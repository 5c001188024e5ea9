// One rank's sharded optimizer state behind one interface, whatever holds it (DESIGN.md section 4):
//   cpu     ShardedAdamW (optim/sharded.ts): f32 shards in this process; the weights all-gathered in f32
//   device  ShardedAdamWCuda: fp32 master, m, v and a bf16 weight shard in device memory
//   host    StreamedAdamW (issue 14): master, m, v in pinned host memory, streamed through the GPU,
//           but for the buffers updated last (layer 0 and the embedding), whose state stays on the GPU
// `weightShard(name)` is the all-gather input (bf16 on the GPU, f32 on the CPU); `step` updates one
// buffer's shard from its reduce-scattered f32 gradient shard, ordered after the stream that produced
// it, and says (StepOptions.consumed) when it has read the gradient, so the caller may reuse its memory.

import { Event, type Stream } from "@lightseq/cuda";
import { cast, copy, type Tensor, toFloat32Array, zeros } from "@lightseq/tensor";
import type { AdamWHyper } from "../optim/adamw.ts";
import type { ShardLayout } from "../optim/shard.ts";
import { type BufferSpec, planBuffers, planSnapshotLayout, ShardedAdamW, STATE_ARRAYS } from "../optim/sharded.ts";
import { ShardedAdamWCuda } from "../optim/sharded-cuda.ts";
import { StreamedAdamW } from "../optim/streamed.ts";
import type { ShardSource, SnapshotLayout } from "../snapshot.ts";
import { layerBuffer } from "./buffers.ts";

export type StatePlace = "cpu" | "device" | "host";

export interface StepOptions {
  /** Where the gradient shard was produced; the update is ordered after it. Default: the compute stream. */
  stream?: Stream;
  /**
   * GPU states: recorded once the update has read the gradient shard (its memory may then be
   * overwritten): on `stream` for the device state, on the streamed state's opt stream for the host one.
   */
  consumed?: Event;
}

export interface ShardedState extends Disposable {
  readonly place: StatePlace;
  layoutOf(name: string): ShardLayout;
  /** This rank's current weights of a buffer (shardLen elements): bf16 on a GPU, f32 on the CPU. */
  weightShard(name: string): Tensor;
  initFromFull(name: string, full: Float32Array): void;
  /** The same from a whole buffer already in a tensor (on the GPU, the device state takes its slice there). */
  initFromTensor(name: string, full: Tensor): void;
  /** AdamW step t of one buffer; `grad` is its f32 gradient shard on the state's device (see StepOptions). */
  step(name: string, grad: Tensor, t: number, lr: number, gradScale: number, o?: StepOptions): void;
  /** After the last step() of an optimizer step: the compute stream waits for every update. */
  stepsDone(): void;
  snapshotLayout(): SnapshotLayout;
  /** master, m, v one buffer's shard at a time (snapshot.ts ShardSource; never the whole rank in one array). */
  snapshotArrays(): ShardSource;
  restore(src: ShardSource): void;
}

class CpuState implements ShardedState {
  readonly place = "cpu";
  readonly #opt: ShardedAdamW;
  readonly #shards = new Map<string, Tensor>();

  constructor(specs: readonly BufferSpec[], rank: number, ranks: number, hyper: AdamWHyper) {
    this.#opt = new ShardedAdamW(specs, rank, ranks, hyper);
    for (const s of specs) this.#shards.set(s.name, zeros([this.#opt.layoutOf(s.name).shardLen]));
  }

  layoutOf(name: string): ShardLayout {
    return this.#opt.layoutOf(name);
  }

  weightShard(name: string): Tensor {
    return this.#shards.get(name) as Tensor;
  }

  #publish(name: string): void {
    (this.weightShard(name).data() as Float32Array).set(this.#opt.master(name));
  }

  initFromFull(name: string, full: Float32Array): void {
    this.#opt.initFromFull(name, full);
    this.#publish(name);
  }

  initFromTensor(name: string, full: Tensor): void {
    this.initFromFull(name, toFloat32Array(full));
  }

  step(name: string, grad: Tensor, t: number, lr: number, gradScale: number): void {
    this.#opt.step(name, grad.data() as Float32Array, t, lr, gradScale);
    this.#publish(name);
  }

  stepsDone(): void {}

  snapshotLayout(): SnapshotLayout {
    return this.#opt.snapshotLayout();
  }

  snapshotArrays() {
    return this.#opt.snapshotArrays();
  }

  restore(src: ShardSource): void {
    this.#opt.restore(src);
    for (const name of this.#shards.keys()) this.#publish(name);
  }

  [Symbol.dispose](): void {
    for (const t of this.#shards.values()) t.dispose();
  }
}

/** A device optimizer's buffer from a whole f32 buffer on the GPU: the rank's slice into the master, its bf16 rounding into the weight shard. */
function initDeviceBuffer(opt: ShardedAdamWCuda, rank: number, name: string, full: Tensor, stream: Stream): void {
  const l = opt.layoutOf(name);
  if (full.numel !== l.numel || full.dtype !== "f32")
    throw new RangeError(`buffer "${name}": expected f32 [${l.numel}], got ${full.describe()}`);
  const start = rank * l.shardLen;
  const len = Math.max(0, Math.min(l.shardLen, l.numel - start));
  if (len === 0) return;
  using flat = full.reshape([l.numel]);
  using src = flat.narrow(start, len);
  using master = opt.master(name).narrow(0, len);
  copy(master, src, stream);
  using rounded = cast(src, "bf16", { stream });
  using bf16 = opt.bf16(name).narrow(0, len);
  copy(bf16, rounded, stream);
}

class DeviceState implements ShardedState {
  readonly place = "device";
  readonly #opt: ShardedAdamWCuda;

  constructor(
    specs: readonly BufferSpec[],
    readonly rank: number,
    ranks: number,
    hyper: AdamWHyper,
    readonly compute: Stream,
  ) {
    this.#opt = new ShardedAdamWCuda(specs, rank, ranks, hyper, "cuda:0");
  }

  layoutOf(name: string): ShardLayout {
    return this.#opt.layoutOf(name);
  }

  weightShard(name: string): Tensor {
    return this.#opt.bf16(name);
  }

  initFromFull(name: string, full: Float32Array): void {
    this.#opt.initFromFull(name, full);
  }

  /** Device to device: the rank's slice into the fp32 master and its bf16 rounding into the weight shard (m, v stay zero). */
  initFromTensor(name: string, full: Tensor): void {
    initDeviceBuffer(this.#opt, this.rank, name, full, this.compute);
  }

  step(name: string, grad: Tensor, t: number, lr: number, gradScale: number, o: StepOptions = {}): void {
    const stream = o.stream ?? this.compute;
    this.#opt.step(name, grad, t, lr, gradScale, stream);
    o.consumed?.record(stream);
  }

  stepsDone(): void {}

  snapshotLayout(): SnapshotLayout {
    return this.#opt.snapshotLayout();
  }

  snapshotArrays() {
    this.compute.synchronize();
    return this.#opt.snapshotArrays();
  }

  restore(src: ShardSource): void {
    this.#opt.restore(src);
  }

  [Symbol.dispose](): void {
    this.#opt[Symbol.dispose]();
  }
}

/**
 * The buffers whose state stays on the GPU when the rest is on the host: the ones whose gradients are
 * final last. Layer 0's gradient is complete when the backward's last layer ends and the embedding's
 * after it, so a streamed update of theirs (2.4 GB + 1.6 GB of fp32 state each way for 7B, ~80 ms
 * over PCIe) could only run after the backward, exposed; on the GPU it is a ~2 ms kernel. Every
 * other buffer's state streams while later layers' backward runs (the head's and final norm's right
 * after the loss, GradientSink.headDone).
 */
export function residentBuffers(specs: readonly BufferSpec[]): string[] {
  const names = new Set(specs.map((s) => s.name));
  return [layerBuffer(0), "embed"].filter((n) => names.has(n));
}

/** specs split by `resident`, each part in spec order, with each part's index of every spec (for snapshots). */
export function splitSpecs(
  specs: readonly BufferSpec[],
  resident: readonly string[],
): { host: BufferSpec[]; device: BufferSpec[]; at: { device: boolean; index: number }[] } {
  const set = new Set(resident);
  for (const n of resident) if (!specs.some((s) => s.name === n)) throw new RangeError(`resident buffer "${n}" is not a buffer`);
  const host: BufferSpec[] = [];
  const device: BufferSpec[] = [];
  const at = specs.map((s) => {
    const part = set.has(s.name) ? device : host;
    part.push(s);
    return { device: part === device, index: part.length - 1 };
  });
  return { host, device, at };
}

/** src restricted to the buffers of one part: its index j is the spec index whose `at` names (part, j). */
function partSource(src: ShardSource, at: readonly { device: boolean; index: number }[], device: boolean): ShardSource {
  const specIndex = at.flatMap((a, i) => (a.device === device ? [i] : []));
  return {
    arrays: src.arrays,
    shard: (k, j) => {
      const i = specIndex[j];
      if (i === undefined) throw new RangeError(`no buffer ${j} of the ${device ? "device" : "host"} part`);
      return src.shard(k, i);
    },
  };
}

/**
 * The streamed state: each buffer's update is enqueued as soon as its gradient is final (per layer
 * during the backward, or all of them after the global norm is known); the copies and updates run on
 * the state's own streams and the compute stream waits for them once, in stepsDone. The resident
 * buffers (residentBuffers) keep their state on the GPU as the device state does: their updates run on
 * the stream the gradient came from. Snapshots list the buffers in spec order either way, so a
 * snapshot of one placement resumes in any other.
 */
class HostState implements ShardedState {
  readonly place = "host";
  readonly #opt: StreamedAdamW;
  readonly #resident: ShardedAdamWCuda;
  readonly #onDevice: Set<string>;
  readonly #split: ReturnType<typeof splitSpecs>;
  readonly #specs: readonly BufferSpec[];
  readonly #ready: Event;
  /** Recorded by the steps whose caller gives no `consumed` event, and by stepsDone. */
  readonly #done: Event;

  constructor(
    specs: readonly BufferSpec[],
    readonly rank: number,
    ranks: number,
    hyper: AdamWHyper,
    readonly compute: Stream,
    resident: readonly string[],
  ) {
    this.#specs = specs;
    this.#split = splitSpecs(specs, resident);
    this.#onDevice = new Set(this.#split.device.map((s) => s.name));
    this.#opt = new StreamedAdamW(this.#split.host, rank, ranks, hyper, { device: 0 });
    this.#resident = new ShardedAdamWCuda(this.#split.device, rank, ranks, hyper, "cuda:0");
    this.#ready = Event.create(0);
    this.#done = Event.create(0);
  }

  layoutOf(name: string): ShardLayout {
    return this.#onDevice.has(name) ? this.#resident.layoutOf(name) : this.#opt.layoutOf(name);
  }

  weightShard(name: string): Tensor {
    return this.#onDevice.has(name) ? this.#resident.bf16(name) : this.#opt.bf16(name);
  }

  initFromFull(name: string, full: Float32Array): void {
    if (this.#onDevice.has(name)) {
      this.#resident.initFromFull(name, full);
      return;
    }
    this.#opt.initFromFull(name, full);
    this.#opt.opt.synchronize();
  }

  initFromTensor(name: string, full: Tensor): void {
    if (this.#onDevice.has(name) && full.device.kind === "cuda") initDeviceBuffer(this.#resident, this.rank, name, full, this.compute);
    else if (full.device.kind === "cuda") this.#opt.initFromDevice(name, full);
    else this.initFromFull(name, toFloat32Array(full));
  }

  step(name: string, grad: Tensor, t: number, lr: number, gradScale: number, o: StepOptions = {}): void {
    if (this.#onDevice.has(name)) {
      const stream = o.stream ?? this.compute;
      this.#resident.step(name, grad, t, lr, gradScale, stream);
      o.consumed?.record(stream);
      return;
    }
    this.#ready.record(o.stream ?? this.compute);
    this.#opt.step(name, grad, t, lr, gradScale, this.#ready, o.consumed ?? this.#done);
  }

  /**
   * The opt stream runs the streamed updates in the order they were enqueued: waiting for its present
   * point waits for all of them. The resident updates ran on the compute stream, or on the stream of
   * their gradient, which the caller has made the compute stream wait for (ZeroGradients.settle).
   */
  stepsDone(): void {
    this.compute.wait(this.#done.record(this.#opt.opt));
  }

  snapshotLayout(): SnapshotLayout {
    return planSnapshotLayout(planBuffers(this.#specs, this.rank, this.#opt.ranks));
  }

  snapshotArrays(): ShardSource {
    this.compute.synchronize();
    const host = this.#opt.snapshotArrays();
    const device = this.#resident.snapshotArrays();
    return {
      arrays: STATE_ARRAYS,
      shard: (k, i) => {
        const a = this.#split.at[i];
        if (!a) throw new RangeError(`no buffer ${i} (${this.#specs.length} buffers)`);
        return (a.device ? device : host).shard(k, a.index);
      },
    };
  }

  restore(src: ShardSource): void {
    this.#opt.restore(partSource(src, this.#split.at, false));
    this.#resident.restore(partSource(src, this.#split.at, true));
    this.#opt.opt.synchronize();
  }

  [Symbol.dispose](): void {
    this.#opt[Symbol.dispose]();
    this.#resident[Symbol.dispose]();
    this.#ready.dispose();
    this.#done.dispose();
  }
}

export function makeState(
  place: StatePlace,
  specs: readonly BufferSpec[],
  rank: number,
  ranks: number,
  hyper: AdamWHyper,
  compute: Stream | null,
  /** State "host": the buffers whose state stays on the GPU (residentBuffers(specs), or none). */
  resident: readonly string[] = [],
): ShardedState {
  if (place === "cpu") return new CpuState(specs, rank, ranks, hyper);
  if (compute === null) throw new RangeError(`optimizer state "${place}" needs a GPU compute stream`);
  return place === "device"
    ? new DeviceState(specs, rank, ranks, hyper, compute)
    : new HostState(specs, rank, ranks, hyper, compute, resident);
}
