// The offloading store on CUDA: bf16 and f32 device tensors through pinned memory on the copy stream
// and back, bit for bit, over several steps with slots allocated once; tensors over several pinned
// segments; the spill split; and the device tensors that the copies read or write are not reused by
// the allocator before the copies finish (the next step's tensors overwrite the freed memory at once:
// a missing event wait would corrupt what comes back). Skipped visibly without a GPU.

import { describe, expect, test } from "bun:test";
import { skipWithoutGpu } from "@lightseq/cuda";
import { currentStream, randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { OffloadActivationStore } from "./offload.ts";

const noGpu = skipWithoutGpu();
const dev = "cuda:0";

/** One layer's kept tensors: x bf16 [T, C], o bf16 [T, C], lse two f32 [H, T/2]. */
function layer(seed: number, T: number, C: number) {
  return {
    x: randn([T, C], { seed, dtype: "bf16", device: dev }),
    o: randn([T, C], { seed: seed + 1, dtype: "bf16", device: dev }),
    lse: [randn([4, T / 2], { seed: seed + 2, device: dev }), randn([4, T / 2], { seed: seed + 3, device: dev })],
  };
}

const values = (ts: Tensor[]) => ts.map((t) => Array.from(toFloat32Array(t)));

describe.skipIf(noGpu)("offload store on CUDA", () => {
  for (const [what, deviceLayers] of [
    ["host", 0],
    ["spill (the last two of four layers on the GPU)", 2],
  ] as const) {
    test(`${what}: every value back bit for bit over 3 steps; slots allocated once; segments of 64 KiB`, () => {
      const L = 4;
      const T = 512;
      const C = 256;
      const stream = currentStream(0);
      using s = new OffloadActivationStore({ layers: 4, deviceLayers, stream, segmentBytes: 64 * 1024 });
      let allocations = -1;
      for (let step = 0; step < 3; step++) {
        const want: number[][][] = [];
        for (let i = 0; i < L; i++) {
          const t = layer(1000 * step + 10 * i, T, C);
          want.push(values([t.x, t.o, ...t.lse]));
          s.put(i, "x", t.x);
          s.put(i, "o", t.o);
          s.put(i, "lse", t.lse);
          // Fresh tensors on the compute stream right away: they take the memory the store frees.
          for (let k = 0; k < 3; k++) randn([T, C], { seed: 99 + k, dtype: "bf16", device: dev }).dispose();
        }
        for (let i = L - 1; i >= 0; i--) {
          if (i > 0) s.prefetch(i - 1);
          const got = values([s.get(i, "x") as Tensor, s.get(i, "o") as Tensor, ...(s.get(i, "lse") as Tensor[])]);
          for (let k = 0; k < 3; k++) randn([T, C], { seed: 199 + k, dtype: "bf16", device: dev }).dispose();
          expect(got).toEqual(want[i] as number[][]);
          s.release(i);
        }
        const r = s.report();
        if (allocations < 0) allocations = r.slotAllocations;
        expect(r.slotAllocations).toBe(allocations);
        expect([s.bytes(), r.deviceBytes]).toEqual([0, 0]);
      }
      expect(allocations).toBe(4 * (L - deviceLayers));
    });
  }
});
