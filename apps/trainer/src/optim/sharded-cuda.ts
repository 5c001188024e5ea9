// One rank's ZeRO-3 optimizer state on the GPU: the same buffers, shards and decay segments as
// ShardedAdamW (sharded.ts, the CPU reference it must equal bit for bit), held as device tensors: fp32
// master, m, v and the bf16 shard each step writes (the next all-gather's input). A step is one
// ls_adamw_f32 launch per segment on the caller's stream; nothing synchronizes the host.

import type { Stream } from "@lightseq/cuda";
import * as T from "@lightseq/tensor";
import type { ShardSource, SnapshotLayout } from "../snapshot.ts";
import { type AdamWHyper, adamwCuda, adamwScalars } from "./adamw.ts";
import type { ShardLayout } from "./shard.ts";
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

interface DeviceBuffer extends BufferPlan {
  master: T.Tensor;
  m: T.Tensor;
  v: T.Tensor;
  bf16: T.Tensor;
}

export class ShardedAdamWCuda implements Disposable {
  private readonly buffers: DeviceBuffer[];
  private readonly byName = new Map<string, number>();

  constructor(
    specs: readonly BufferSpec[],
    readonly rank: number,
    readonly ranks: number,
    readonly hyper: AdamWHyper,
    readonly device = "cuda:0",
  ) {
    this.buffers = planBuffers(specs, rank, ranks).map((plan, i) => {
      this.byName.set(plan.spec.name, i);
      const n = [plan.layout.shardLen];
      return {
        ...plan,
        master: T.zeros(n, { device }),
        m: T.zeros(n, { device }),
        v: T.zeros(n, { device }),
        bf16: T.zeros(n, { dtype: "bf16", device }),
      };
    });
    // The zero fills ran on the device's current stream; a step may come on another.
    const d = T.parseDevice(device);
    if (d.kind === "cuda") T.currentStream(d.index).synchronize();
  }

  private get(name: string): DeviceBuffer {
    const i = this.byName.get(name);
    if (i === undefined) throw new RangeError(`no buffer "${name}" (buffers: ${[...this.byName.keys()].join(", ")})`);
    return this.buffers[i] as DeviceBuffer;
  }

  layoutOf(name: string): ShardLayout {
    return this.get(name).layout;
  }

  /** fp32 master shard (device). */
  master(name: string): T.Tensor {
    return this.get(name).master;
  }

  /** bf16 weights of the shard as of the last step or init (device; the all-gather's input). */
  bf16(name: string): T.Tensor {
    return this.get(name).bf16;
  }

  /** Uploads this rank's slice of the whole buffer's initial values (and its bf16 copy). */
  initFromFull(name: string, full: Float32Array): void {
    const b = this.get(name);
    if (full.length !== b.layout.numel) throw new RangeError(`buffer "${name}": ${full.length} values for ${b.layout.numel} parameters`);
    const start = this.rank * b.layout.shardLen;
    const host = new Float32Array(b.layout.shardLen);
    host.set(full.subarray(start, Math.min(full.length, start + b.layout.shardLen)));
    this.upload(b, host, new Float32Array(b.layout.shardLen), new Float32Array(b.layout.shardLen));
  }

  private upload(b: DeviceBuffer, master: Float32Array, m: Float32Array, v: Float32Array): void {
    const put = (dst: T.Tensor, host: T.Tensor) => {
      T.copy(dst, host);
      host.dispose();
    };
    const n = [b.layout.shardLen];
    put(b.master, T.fromArray(master, n));
    put(b.m, T.fromArray(m, n));
    put(b.v, T.fromArray(v, n));
    put(b.bf16, T.fromArray(master, n, { dtype: "bf16" })); // fromArray rounds to bf16
  }

  /** AdamW step t of one buffer from its gradient shard (f32 device tensor of shardLen), on `stream`. */
  step(
    name: string,
    grad: T.Tensor,
    t: number,
    lr: number,
    gradScale: number,
    stream: Stream = T.currentStream(grad.device.kind === "cuda" ? grad.device.index : 0),
  ): void {
    const b = this.get(name);
    if (grad.dtype !== "f32" || grad.numel !== b.layout.shardLen || grad.device.kind !== "cuda")
      throw new RangeError(`buffer "${name}": gradient shard must be f32 [${b.layout.shardLen}] on a GPU, got ${grad.describe()}`);
    const h = { ...this.hyper, lr };
    const decayed = adamwScalars(h, t, true, gradScale);
    const plain = adamwScalars(h, t, false, gradScale);
    for (const s of b.segments) {
      const at4 = 4 * s.offset;
      adamwCuda(
        { p: b.master.ptr() + at4, g: grad.ptr() + at4, m: b.m.ptr() + at4, v: b.v.ptr() + at4, w: b.bf16.ptr() + 2 * s.offset, n: s.len },
        s.decay ? decayed : plain,
        stream,
      );
    }
  }

  snapshotLayout(): SnapshotLayout {
    return planSnapshotLayout(this.buffers);
  }

  /** master, m and v of every buffer, each shard copied to the host when asked for (what writeRankShards takes). */
  snapshotArrays(): ShardSource {
    return {
      arrays: STATE_ARRAYS,
      shard: (k, i) => {
        const b = this.buffers[i];
        if (!b) throw new RangeError(`no buffer ${i} (${this.buffers.length} buffers)`);
        return T.toFloat32Array(b[stateKey(k)]);
      },
    };
  }

  /** The inverse of snapshotArrays, one shard uploaded at a time; the bf16 shards are recomputed from the masters. */
  restore(src: ShardSource): void {
    checkStateArrays(src);
    const n = (b: DeviceBuffer) => [b.layout.shardLen];
    this.buffers.forEach((b, i) => {
      for (const k of STATE_ARRAYS) {
        const host = checkedShard(src, k, i, b);
        using t = T.fromArray(host, n(b));
        T.copy(b[k], t);
        if (k === "master") {
          using w = T.fromArray(host, n(b), { dtype: "bf16" }); // fromArray rounds to bf16
          T.copy(b.bf16, w);
        }
      }
    });
  }

  [Symbol.dispose](): void {
    for (const b of this.buffers) for (const t of [b.master, b.m, b.v, b.bf16]) t.dispose();
  }
}
