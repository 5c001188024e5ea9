// The offloading store's logic on the CPU (host "copies" into ArrayBuffer slots, the same code as
// on CUDA): what goes where (host, or spill: the last layers on the device), every value back bit for bit, slots reused across steps,
// prefetch copies one layer at a time, the last layer put reused without a round trip, release frees
// everything, and the refusals. The model-level equality (every policy, offload on and off, 1 and 2
// ranks) is in packages/llama/src/offload-model.test.ts.

import { expect, test } from "bun:test";
import { fromArray, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { OffloadActivationStore, spillLayers, storeForOffload } from "./offload.ts";
import type { SavedName } from "./policy.ts";

/** A layer's kept tensors as the model puts them: x [4, 8] f32, o [4, 8], lse two [2, 2] chunks. */
function layerTensors(layer: number, step: number): { x: Tensor; o: Tensor; lse: Tensor[] } {
  const v = (n: number, salt: number) => Array.from({ length: n }, (_, i) => Math.sin(1 + i + 31 * layer + 7 * step + salt) * 1e3);
  return {
    x: fromArray(v(32, 0), [4, 8]),
    o: fromArray(v(32, 1), [4, 8]),
    lse: [fromArray(v(4, 2), [2, 2]), fromArray(v(4, 3), [2, 2])],
  };
}
const LAYER_BYTES = 4 * (32 + 32 + 4 + 4);

function putLayer(s: OffloadActivationStore, layer: number, step: number): Float32Array[] {
  const t = layerTensors(layer, step);
  const values = [toFloat32Array(t.x), toFloat32Array(t.o), ...t.lse.map((l) => toFloat32Array(l))];
  s.put(layer, "x", t.x);
  s.put(layer, "o", t.o);
  s.put(layer, "lse", t.lse);
  return values;
}

function got(s: OffloadActivationStore, layer: number): Float32Array[] {
  const lse = s.get(layer, "lse") as Tensor[];
  return [toFloat32Array(s.get(layer, "x") as Tensor), toFloat32Array(s.get(layer, "o") as Tensor), ...lse.map((l) => toFloat32Array(l))];
}

/** One step as the model runs it: puts in layer order, then backward from the last layer with prefetch one ahead. */
function step(s: OffloadActivationStore, L: number, stepNo: number, seen?: (layer: number) => void): void {
  const put = Array.from({ length: L }, (_, i) => putLayer(s, i, stepNo));
  s.prefetch(L - 1);
  for (let i = L - 1; i >= 0; i--) {
    if (i > 0) s.prefetch(i - 1);
    seen?.(i);
    expect(got(s, i)).toEqual(put[i] as Float32Array[]); // bit for bit (toEqual on Float32Array compares elements)
    s.release(i);
  }
}

test("host offload: everything goes to the host, comes back bit for bit; slots are allocated once and reused by later steps", () => {
  const L = 4;
  using s = new OffloadActivationStore({ layers: L, deviceLayers: 0 });
  step(s, L, 0);
  const first = s.report();
  expect(first.slotAllocations).toBe(L * 4); // x, o and two lse chunks per layer
  expect(first.slotBytes).toBe(L * LAYER_BYTES);
  expect(first.copiesOut).toBe(L * 4);
  // The last layer put is still on the device when its backward comes: no copy back for it.
  expect(first.copiesIn).toBe((L - 1) * 4);
  expect(first.reused).toBe(4);
  for (let k = 1; k <= 3; k++) step(s, L, k);
  const r = s.report();
  expect([r.slotAllocations, r.slotBytes]).toEqual([L * 4, L * LAYER_BYTES]);
  expect([r.copiesOut, r.copiesIn, r.bytesOut]).toEqual([4 * L * 4, 4 * (L - 1) * 4, 4 * L * LAYER_BYTES]);
  expect([s.bytes(), r.deviceBytes, r.hostBytes]).toEqual([0, 0, 0]);
  // On the device at once: the layer being put and the one before it (its copy out may still run),
  // or in the backward the layer in use and the one prefetched: two layers, never more.
  expect(r.peakDeviceBytes).toBe(2 * LAYER_BYTES);
  expect(r.peakHostBytes).toBe(L * LAYER_BYTES);
});

test("spill: the last layers stay on the device, the first go to the host; at most max(deviceLayers, 2) layers on the device", () => {
  const L = 4;
  for (const k of [1, 2, 3, 4]) {
    using s = new OffloadActivationStore({ layers: L, deviceLayers: k });
    const places: string[] = [];
    step(s, L, 0, (i) => places.push(`${i}:${[...new Set(s.placement(i).values())].join(",")}`));
    expect(places.reverse()).toEqual([0, 1, 2, 3].map((i) => `${i}:${i >= L - k ? "device" : "host"}`));
    const r = s.report();
    const hostLayers = L - k;
    // The last host layer is retired (freed) when the first device layer is put, so every host layer comes back by a copy.
    expect([r.copiesOut, r.copiesIn, r.reused]).toEqual([4 * hostLayers, 4 * hostLayers, 0]);
    expect(r.peakDeviceBytes).toBe(Math.max(k, 2) * LAYER_BYTES);
    expect(r.peakHostBytes).toBe(hostLayers * LAYER_BYTES);
    expect(r.deviceBytes).toBe(0);
  }
  expect(spillLayers({ layers: 32, layerBytes: 3 * 2 ** 30, deviceBytes: 20 * 2 ** 30 })).toBe(6);
  expect(spillLayers({ layers: 4, layerBytes: 1, deviceBytes: 100 })).toBe(4);
  // one size per layer (a mixed policy): from the last layer down while they fit
  expect(spillLayers({ layers: 4, layerBytes: [1, 1, 4, 10], deviceBytes: 14 })).toBe(2);
  expect(spillLayers({ layers: 4, layerBytes: [1, 1, 4, 10], deviceBytes: 15 })).toBe(3);
  expect(spillLayers({ layers: 4, layerBytes: [10, 4, 1, 1], deviceBytes: 6 })).toBe(3);
  expect(spillLayers({ layers: 4, layerBytes: [1, 1, 4, 10], deviceBytes: 9 })).toBe(0);
  expect(() => spillLayers({ layers: 3, layerBytes: [1, 1], deviceBytes: 9 })).toThrow("layerBytes lists 2 layers, the model has 3");
  expect(() => spillLayers({ layers: 2, layerBytes: [1, -1], deviceBytes: 9 })).toThrow(
    "layerBytes must be non-negative, got -1 for layer 1",
  );
  // a skip layer keeps nothing: it always fits
  expect(spillLayers({ layers: 3, layerBytes: [4, 0, 4], deviceBytes: 5 })).toBe(2);
});

test("a tensor split at a slot boundary of several segments, and a slot grown for a larger tensor later", () => {
  using s = new OffloadActivationStore({ layers: 2, deviceLayers: 0, segmentBytes: 24 });
  const a = fromArray(
    Array.from({ length: 30 }, (_, i) => i * 0.5 - 3),
    [5, 6],
  );
  const av = toFloat32Array(a);
  s.put(0, "h", a);
  s.put(1, "h", fromArray([1, 2], [2]));
  expect(toFloat32Array(s.get(0, "h") as Tensor)).toEqual(av);
  s.release(0);
  s.release(1);
  const big = Array.from({ length: 40 }, (_, i) => -i);
  s.put(0, "h", fromArray(big, [40]));
  s.put(1, "h", fromArray([5], [1]));
  expect(Array.from(toFloat32Array(s.get(0, "h") as Tensor))).toEqual(big);
  s.release(0);
  s.release(1);
  expect(s.report()).toMatchObject({ slotAllocations: 3, slotBytes: 160 + 8 });
});

test("refusals: a name put twice, an empty lse list, a layer out of range, bad layer counts or segment size; unknown names are undefined", () => {
  expect(() => new OffloadActivationStore({ layers: 0, deviceLayers: 0 })).toThrow("layers must be a positive integer");
  expect(() => new OffloadActivationStore({ layers: 2, deviceLayers: 3 })).toThrow("deviceLayers must be an integer in [0, 2]");
  expect(() => new OffloadActivationStore({ layers: 2, deviceLayers: 0, segmentBytes: 2 ** 33 })).toThrow("segmentBytes must be");
  using s = new OffloadActivationStore({ layers: 2, deviceLayers: 0 });
  s.put(0, "x", fromArray([1], [1]));
  expect(() => s.put(0, "x", fromArray([1], [1]))).toThrow('layer 0 already holds "x"');
  expect(() => s.put(0, "lse", [])).toThrow("empty list");
  expect(() => s.put(2, "x", fromArray([1], [1]))).toThrow("layer must be an integer in [0, 2) (the store was made for 2 layers), got 2");
  expect(s.get(0, "q" as SavedName)).toBeUndefined();
  expect(s.get(1, "x")).toBeUndefined();
  s.release(0);
  expect(s.bytes()).toBe(0);
});

test("storeForOffload: the estimator's modes as stores", () => {
  expect(storeForOffload("none", { layers: 4 }).deviceLayers).toBe(4);
  expect(storeForOffload("host", { layers: 4 }).deviceLayers).toBe(0);
  expect(storeForOffload("spill", { layers: 4, deviceLayers: 3 }).deviceLayers).toBe(3);
  expect(() => storeForOffload("spill", { layers: 4 })).toThrow('"spill" needs deviceLayers');
  expect(() => storeForOffload("disk" as never, { layers: 4 })).toThrow('got "disk"');
});

test("prefetch copies exactly the layer announced, once; a get without prefetch copies then; nothing copies twice", () => {
  using s = new OffloadActivationStore({ layers: 4, deviceLayers: 0 });
  for (let i = 0; i < 4; i++) putLayer(s, i, 0);
  const copiesIn = () => s.report().copiesIn;
  expect(copiesIn()).toBe(0);
  s.prefetch(2);
  expect(copiesIn()).toBe(4); // x, o and two lse chunks of layer 2
  s.prefetch(2);
  got(s, 2);
  expect(copiesIn()).toBe(4);
  got(s, 3); // the last layer put: still on the device, no copy
  expect([copiesIn(), s.report().reused]).toEqual([4, 4]);
  got(s, 1); // not announced: copied when asked
  expect(copiesIn()).toBe(8);
  s.release(3);
  s.release(2);
  s.release(1);
  s.prefetch(1); // released: nothing left to copy
  expect(copiesIn()).toBe(8);
  s.release(0);
  expect(s.report().deviceBytes).toBe(0);
});
