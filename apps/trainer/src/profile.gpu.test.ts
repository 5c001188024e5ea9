// StepProfiler on a GPU: timing events on the compute stream, read after the step's synchronize. A
// step of 2 layers whose layer-1 backward enqueues ~100 ms of fills: its GPU time must show them,
// the clocks must be ordered, and the host must run ahead of the GPU (a lag > 0 at the settle): no
// mark synchronizes the host with the stream. Skipped visibly without a GPU (CI cannot run it).

import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { skipWithoutGpu } from "@lightseq/cuda";
import { currentStream, fill, zeros } from "@lightseq/tensor";
import { StepProfiler } from "./profile.ts";

const noGpu = skipWithoutGpu();
const dir = mkdtempSync(join(tmpdir(), "profile-gpu-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(noGpu)("StepProfiler on a GPU", () => {
  test("GPU times show the enqueued work; the host runs ahead; events are reused across steps", () => {
    const stream = currentStream(0);
    using t = zeros([256 * 2 ** 20], { device: "cuda:0", stream }); // 1 GiB of f32
    using p = new StepProfiler(["remat-aware", "none"], stream, dir, { resume: false });
    // A 1 GiB fill takes ~0.3 ms at H200 bandwidth: 300 of them are ~100 ms on the GPU, ~1 ms to enqueue.
    const heavy = () => {
      for (let k = 0; k < 300; k++) fill(t, k, stream);
    };
    for (const step of [1, 2]) {
      p.begin();
      for (const i of [0, 1]) {
        p.layer(i);
        fill(t, 1, stream);
        p.released(i);
      }
      p.loss();
      for (const i of [1, 0]) {
        p.layer(i);
        if (i === 1) heavy();
        p.layerDone(i);
      }
      p.sequenceEnd();
      p.settled();
      p.end();
      stream.synchronize();
      expect(p.finish(step)).toMatch(/^profile step \d \(GPU clock, host in brackets\): total GPU [\d.]+ ms vs host [\d.]+ ms$/m);
    }
    const recs = readFileSync(join(dir, "profile.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(recs).toHaveLength(2);
    for (const r of recs) {
      expect(r.clock).toBe("gpu");
      const gpu = r.marks.map((m: { gpu_ms: number }) => m.gpu_ms);
      for (let k = 1; k < gpu.length; k++) expect(gpu[k]).toBeGreaterThanOrEqual(gpu[k - 1]);
      // Layer 1's backward (the 300 fills) holds most of the step's GPU time.
      expect(r.backward_ms[1]).toBeGreaterThan(20);
      expect(r.backward_ms[1]).toBeGreaterThan(0.8 * r.total_gpu_ms);
      expect(r.backward_ms[0]).toBeLessThan(5);
      // No synchronize inside the step: the host reached the settle long before the GPU did.
      const settled = r.marks.find((m: { mark: string }) => m.mark === "settled");
      expect(settled.gpu_ms - settled.host_ms).toBeGreaterThan(10);
      // Both clocks end at the synchronize: the GPU's total is within the host's.
      expect(r.total_gpu_ms).toBeLessThanOrEqual(r.total_host_ms + 1);
    }
  });
});
