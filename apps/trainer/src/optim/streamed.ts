// One rank's optimizer state in pinned host memory, updated on the GPU as gradients arrive (issue 14,
// DESIGN.md section 7): for each buffer, its fp32 master shard and AdamW moments live in page-locked
// host memory; step() streams them to the GPU in chunks, runs ls_adamw_f32 there and streams them back,
// on three streams so the copies in, the updates and the copies out of successive chunks overlap each
// other and the backward that runs on the compute stream meanwhile. Only `slots` chunks of state are
// ever on the GPU; the bf16 weights the kernel writes stay on the GPU (the all-gather's input).
//
// Per chunk c, slot s = c mod slots (every wait is on the GPU, none on the host):
//   h2d: wait free[s]; copy master, m, v of chunk c into slot s; record loaded[s]
//   opt: wait loaded[s] (and, once per step() call, the gradient's ready event); ls_adamw_f32 per decay
//        segment of the chunk; record updated[s]
//   d2h: wait updated[s]; copy master, m, v back to the host; record free[s]
// Equals ShardedAdamW (the CPU reference) bit for bit: the same segments and scalars, the same kernel.
//
// Clipping: step() takes the clip coefficient as gradScale, so the caller decides when it is known.
// Updating each layer during the backward (the overlap this class exists for) needs the coefficient
// before the backward has produced the whole gradient; the trainer uses the previous step's norm for
// that, or keeps the gradients until the norm is known and then streams the updates (no overlap).

import { Event, memcpyAsync, PinnedBuffer, Stream } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import type { ShardSource, SnapshotLayout } from "../snapshot.ts";
import { type AdamWHyper, adamwCuda, adamwScalars } from "./adamw.ts";
import { SHARD_ALIGN, type ShardLayout } from "./shard.ts";
import {
  type BufferPlan,
  type BufferSpec,
  checkedShard,
  checkStateArrays,
  planBuffers,
  planSnapshotLayout,
  STATE_ARRAYS,
  stateKey,
} from "./sharded.ts";

interface HostBuffer extends BufferPlan {
  master: PinnedBuffer;
  m: PinnedBuffer;
  v: PinnedBuffer;
  bf16: T.Tensor;
}

interface Slot {
  master: T.Tensor;
  m: T.Tensor;
  v: T.Tensor;
  loaded: Event;
  updated: Event;
  free: Event;
}

/** Elements per chunk and chunks in flight unless StreamedOptions says otherwise. */
export const DEFAULT_CHUNK = 8 << 20;
export const DEFAULT_SLOTS = 3;

/** Device bytes of the slots: master, m, v (f32) of `slots` chunks, a chunk no longer than the largest shard. */
export function slotBytes(maxShardLen: number, chunk = DEFAULT_CHUNK, slots = DEFAULT_SLOTS): number {
  return slots * 3 * 4 * Math.max(SHARD_ALIGN, Math.min(chunk, maxShardLen));
}

export interface StreamedOptions {
  device?: number;
  /** Elements per chunk (a multiple of SHARD_ALIGN); default 8M (96 MiB of state per slot). */
  chunk?: number;
  /** Chunks in flight; 2 overlaps the copies of one with the update of the other, 3 adds the way back. */
  slots?: number;
}

export class StreamedAdamW implements Disposable {
  private readonly buffers: HostBuffer[];
  private readonly byName = new Map<string, number>();
  private readonly slots: Slot[];
  private readonly chunk: number;
  private next = 0;
  readonly h2d: Stream;
  readonly opt: Stream;
  readonly d2h: Stream;
  /** Recorded on d2h after the last chunk of the last step() call: the host state is current. */
  readonly hostCurrent: Event;

  constructor(
    specs: readonly BufferSpec[],
    readonly rank: number,
    readonly ranks: number,
    readonly hyper: AdamWHyper,
    o: StreamedOptions = {},
  ) {
    const device = o.device ?? 0;
    this.chunk = o.chunk ?? DEFAULT_CHUNK;
    if (this.chunk <= 0 || this.chunk % SHARD_ALIGN !== 0)
      throw new RangeError(`chunk must be a positive multiple of ${SHARD_ALIGN}, got ${this.chunk}`);
    const dev = `cuda:${device}`;
    this.h2d = Stream.create(device);
    this.opt = Stream.create(device);
    this.d2h = Stream.create(device);
    this.hostCurrent = Event.create(device).record(this.d2h);
    this.buffers = planBuffers(specs, rank, ranks).map((plan, i) => {
      this.byName.set(plan.spec.name, i);
      const bytes = plan.layout.shardLen * 4;
      const hb: HostBuffer = {
        ...plan,
        master: PinnedBuffer.alloc(bytes),
        m: PinnedBuffer.alloc(bytes),
        v: PinnedBuffer.alloc(bytes),
        bf16: T.zeros([plan.layout.shardLen], { dtype: "bf16", device: dev }),
      };
      for (const k of ["master", "m", "v"] as const) new Uint8Array(hb[k].buffer).fill(0);
      return hb;
    });
    const maxShard = Math.max(0, ...this.buffers.map((b) => b.layout.shardLen));
    const slotLen = Math.max(SHARD_ALIGN, Math.min(this.chunk, maxShard));
    this.slots = Array.from({ length: Math.max(1, o.slots ?? DEFAULT_SLOTS) }, () => ({
      master: T.zeros([slotLen], { device: dev }),
      m: T.zeros([slotLen], { device: dev }),
      v: T.zeros([slotLen], { device: dev }),
      // Recorded once so the first waits on them are satisfied.
      loaded: Event.create(device).record(this.h2d),
      updated: Event.create(device).record(this.opt),
      free: Event.create(device).record(this.d2h),
    }));
    // The zero fills above ran on the device's current stream: finish them before any of ours touch the memory.
    T.currentStream(device).synchronize();
    this.h2d.synchronize();
    this.opt.synchronize();
    this.d2h.synchronize();
  }

  private get(name: string): HostBuffer {
    const i = this.byName.get(name);
    if (i === undefined) throw new RangeError(`no buffer "${name}" (buffers: ${[...this.byName.keys()].join(", ")})`);
    return this.buffers[i] as HostBuffer;
  }

  layoutOf(name: string): ShardLayout {
    return this.get(name).layout;
  }

  /** bf16 weights of the shard (device), current once `updated` of the step that wrote them has passed. */
  bf16(name: string): T.Tensor {
    return this.get(name).bf16;
  }

  /** Host views of the state; only valid while no step() is in flight (see syncHost). */
  private views(b: HostBuffer) {
    return { master: new Float32Array(b.master.buffer), m: new Float32Array(b.m.buffer), v: new Float32Array(b.v.buffer) };
  }

  /** Waits until every streamed-out chunk has reached the host. */
  syncHost(): void {
    this.d2h.synchronize();
  }

  initFromFull(name: string, full: Float32Array): void {
    const b = this.get(name);
    if (full.length !== b.layout.numel) throw new RangeError(`buffer "${name}": ${full.length} values for ${b.layout.numel} parameters`);
    this.syncHost();
    const v = this.views(b);
    const start = this.rank * b.layout.shardLen;
    v.master.fill(0);
    v.master.set(full.subarray(start, Math.min(full.length, start + b.layout.shardLen)));
    v.m.fill(0);
    v.v.fill(0);
    this.uploadBf16(b);
  }

  /**
   * initFromFull from a whole buffer already on the GPU (f32, produced on the device's current
   * stream): the rank's slice is copied into the pinned master and rounded to the bf16 shard there,
   * so a large model's init never loops over its values on the host.
   */
  initFromDevice(name: string, full: T.Tensor): void {
    const b = this.get(name);
    if (full.dtype !== "f32" || full.numel !== b.layout.numel || full.device.kind !== "cuda")
      throw new RangeError(`buffer "${name}": expected f32 [${b.layout.numel}] on a GPU, got ${full.describe()}`);
    this.syncHost();
    const v = this.views(b);
    for (const a of [v.master, v.m, v.v]) a.fill(0);
    const start = this.rank * b.layout.shardLen;
    const len = Math.max(0, Math.min(b.layout.shardLen, b.layout.numel - start));
    if (len === 0) return;
    const s = T.currentStream(full.device.index);
    using flat = full.reshape([b.layout.numel]);
    using src = flat.narrow(start, len);
    memcpyAsync(b.master.ptr, src.ptr(), len * 4, s, `${name} master init`);
    using rounded = T.cast(src, "bf16", { stream: s });
    using dst = b.bf16.narrow(0, len);
    T.copy(dst, rounded, s);
    s.synchronize();
  }

  private uploadBf16(b: HostBuffer): void {
    const host = T.fromArray(this.views(b).master, [b.layout.shardLen], { dtype: "bf16" });
    T.copy(b.bf16, host, this.opt);
    host.dispose();
  }

  /**
   * Enqueues AdamW step t of one buffer: its state streams in, is updated with `grad` (f32 device shard)
   * and streams out. `gradReady` is recorded where the gradient was produced; `consumed`, the caller's
   * event, is recorded on the opt stream once every chunk's update is enqueued: it says when `grad` has
   * been read (its memory may then be overwritten) and the bf16 shard is new. Returns `consumed`. Each
   * call records only the event it is given, so a caller cycling gradient buffers gives each its own.
   */
  step(name: string, grad: T.Tensor, t: number, lr: number, gradScale: number, gradReady: Event, consumed: Event): Event {
    const b = this.get(name);
    if (grad.dtype !== "f32" || grad.numel !== b.layout.shardLen || grad.device.kind !== "cuda")
      throw new RangeError(`buffer "${name}": gradient shard must be f32 [${b.layout.shardLen}] on a GPU, got ${grad.describe()}`);
    const h = { ...this.hyper, lr };
    const scalars = { true: adamwScalars(h, t, true, gradScale), false: adamwScalars(h, t, false, gradScale) };
    this.opt.wait(gradReady);
    for (let c0 = 0; c0 < b.layout.shardLen; c0 += this.chunk) {
      const c1 = Math.min(b.layout.shardLen, c0 + this.chunk);
      const slot = this.slots[this.next++ % this.slots.length] as Slot;
      const bytes = (c1 - c0) * 4;
      this.h2d.wait(slot.free);
      for (const k of ["master", "m", "v"] as const) memcpyAsync(slot[k].ptr(), b[k].ptr + c0 * 4, bytes, this.h2d, `${name} ${k} in`);
      slot.loaded.record(this.h2d);
      this.opt.wait(slot.loaded);
      for (const s of b.segments) {
        const a = Math.max(c0, s.offset);
        const e = Math.min(c1, s.offset + s.len);
        if (a >= e) continue;
        const inSlot = (a - c0) * 4;
        adamwCuda(
          {
            p: slot.master.ptr() + inSlot,
            g: grad.ptr() + a * 4,
            m: slot.m.ptr() + inSlot,
            v: slot.v.ptr() + inSlot,
            w: b.bf16.ptr() + a * 2,
            n: e - a,
          },
          scalars[s.decay ? "true" : "false"],
          this.opt,
        );
      }
      slot.updated.record(this.opt);
      this.d2h.wait(slot.updated);
      for (const k of ["master", "m", "v"] as const) memcpyAsync(b[k].ptr + c0 * 4, slot[k].ptr(), bytes, this.d2h, `${name} ${k} out`);
      slot.free.record(this.d2h);
    }
    this.hostCurrent.record(this.d2h);
    return consumed.record(this.opt);
  }

  snapshotLayout(): SnapshotLayout {
    return planSnapshotLayout(this.buffers);
  }

  /** master, m and v of every buffer, views of the pinned shards one at a time (after the host state is current). */
  snapshotArrays(): ShardSource {
    this.syncHost();
    return {
      arrays: STATE_ARRAYS,
      shard: (k, i) => {
        const b = this.buffers[i];
        if (!b) throw new RangeError(`no buffer ${i} (${this.buffers.length} buffers)`);
        return this.views(b)[stateKey(k)];
      },
    };
  }

  /** The inverse of snapshotArrays, buffer by buffer into the pinned shards (bf16 re-rounded from the masters). */
  restore(src: ShardSource): void {
    checkStateArrays(src);
    this.syncHost();
    this.buffers.forEach((b, i) => {
      const v = this.views(b);
      for (const k of STATE_ARRAYS) v[k].set(checkedShard(src, k, i, b));
      this.uploadBf16(b);
    });
  }

  [Symbol.dispose](): void {
    this.h2d.synchronize();
    this.opt.synchronize();
    this.d2h.synchronize();
    for (const s of this.slots) {
      for (const t of [s.master, s.m, s.v]) t.dispose();
      for (const e of [s.loaded, s.updated, s.free]) e.dispose();
    }
    for (const b of this.buffers) {
      b.master.dispose();
      b.m.dispose();
      b.v.dispose();
      b.bf16.dispose();
    }
    this.hostCurrent.dispose();
    this.h2d.dispose();
    this.opt.dispose();
    this.d2h.dispose();
  }
}
