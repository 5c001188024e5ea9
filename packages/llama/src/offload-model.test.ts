// The offloading activation store (@lightseq/checkpointing offload.ts) under the whole model on the
// CPU: every policy, with the kept tensors offloaded to the host or spilled (the last layer on the
// device, the others on the host), gives the loss and every gradient of the same model with its tensors kept
// in place, to the bit (the CPU kernels are deterministic and the store only moves bytes), over one
// rank and over P = 2 CPU ranks (DistAttn, all-reduced gradients); with and without the tiled MLP.
// A mixed policy (one kind per layer), offloaded or spilled, gives those of `none` kept in place.

import { expect, test } from "bun:test";
import { join } from "node:path";
import { referenceBackend } from "@lightseq/attention";
import { type ActivationStore, OffloadActivationStore, type Placement, POLICY_KINDS, type SavedName } from "@lightseq/checkpointing";
import { launch } from "@lightseq/comm";
import type { OffloadCase, OffloadResult } from "./fixtures/offload-ranks-worker.ts";
import { namedTensors, seqTokens, TEST_STD, tinyConfig } from "./fixtures/tiny.ts";
import { LocalActivationStore, LocalGradientSink } from "./interfaces.ts";
import { localModel, sequenceBatch } from "./model.ts";
import { initParams, type ModelParams, zeroParams } from "./weights.ts";

/** Records where each layer's kept tensors were when its backward released them. */
class WatchedStore extends OffloadActivationStore {
  readonly where = new Map<number, Map<SavedName, Placement>>();
  override release(layer: number): void {
    if (!this.where.has(layer)) this.where.set(layer, this.placement(layer));
    super.release(layer);
  }
}

async function run(params: ModelParams, policy: (typeof POLICY_KINDS)[number], store: ActivationStore, mlpChunkTokens?: number) {
  const model = localModel(params, { policy: { kind: policy }, backend: referenceBackend, store, mlpChunkTokens });
  const grads = zeroParams(params.config);
  const tokens = seqTokens(13, params.config.vocab, 5);
  const loss = await model.forwardBackward(sequenceBatch(tokens), new LocalGradientSink(grads), { gradScale: 1 / 12 });
  expect(store.bytes()).toBe(0);
  const bits = new Map(namedTensors(grads).map(([n, t]) => [n, Array.from(new Uint32Array((t.data() as Float32Array).slice().buffer))]));
  grads.dispose();
  return { loss, bits };
}

test("one rank: every policy, offloaded and spilled (tiled MLP too), equals the tensors kept in place to the bit", async () => {
  const cfg = tinyConfig({ layers: 3 });
  const params = initParams(cfg, { seed: 3, std: TEST_STD });
  for (const policy of POLICY_KINDS) {
    for (const mlpChunk of [undefined, 5]) {
      const ref = await run(params, policy, new LocalActivationStore(), mlpChunk);
      // deviceLayers 0: everything to the host; 1: layers 0 and 1 to the host, layer 2 on the device.
      for (const deviceLayers of [0, 1]) {
        const what = `${policy}${mlpChunk ? ` tiled ${mlpChunk}` : ""}, ${deviceLayers} layer(s) on the device`;
        using store = new WatchedStore({ layers: cfg.layers, deviceLayers });
        const got = await run(params, policy, store, mlpChunk);
        expect({ what, loss: got.loss }).toEqual({ what, loss: ref.loss });
        for (const [name, b] of ref.bits) expect({ what, name, bits: got.bits.get(name) }).toEqual({ what, name, bits: b });
        const places = [0, 1, 2].map((i) => [...new Set(store.where.get(i)?.values())].join());
        expect({ what, places }).toEqual({ what, places: deviceLayers === 0 ? ["host", "host", "host"] : ["host", "host", "device"] });
        const r = store.report();
        expect(r.copiesOut).toBeGreaterThan(0);
        expect(r.copiesIn).toBeGreaterThan(0);
        expect(r.deviceBytes).toBe(0);
      }
    }
  }
  params.dispose();
});

test("P = 2 CPU ranks through parallelize (DistAttn zigzag, all-reduced gradients): every policy with the offloaded and the spilled store equals the in-place store to the bit; a mixed one equals none", async () => {
  const worker = join(import.meta.dir, "fixtures", "offload-ranks-worker.ts");
  const cases: OffloadCase[] = POLICY_KINDS.flatMap((policy) => [
    { policy, N: 23, store: "host" as const },
    { policy, N: 23, store: "spill" as const, mlpChunk: policy === "none" ? 4 : undefined },
  ]);
  // a mixed policy, offloaded or spilled (its none layer on the device), against none kept in place
  for (const store of ["host", "spill"] as const) cases.push({ policy: "full*1,remat-aware*1,none*1", refPolicy: "none", N: 23, store });
  const results: OffloadResult[] = [];
  const log: string[] = [];
  const r = await launch({
    nprocs: 2,
    script: worker,
    args: [JSON.stringify(cases)],
    gpus: 0,
    env: { LIGHTSEQ_COMM_TIMEOUT_MS: "30000" },
    onLine: (rank, _s, line) => {
      log.push(`[rank ${rank}] ${line}`);
      if (line.startsWith("{")) results.push(JSON.parse(line));
    },
    log: (m) => log.push(`[launcher] ${m}`),
  });
  if (r.exitCode !== 0) throw new Error(`ranks failed (exit ${r.exitCode}):\n${log.join("\n")}`);
  expect(results.length).toBe(2 * cases.length);
  for (const res of results) {
    expect({ case: res.case, rank: res.rank, failures: res.failures }).toEqual({ case: res.case, rank: res.rank, failures: [] });
    expect(res.copiesOut).toBeGreaterThan(0);
    expect(res.hostLayers).toEqual(res.case.store === "spill" ? [0, 1] : [0, 1, 2]);
  }
}, 60_000);
