// The offloading store's logic on the CPU (host "copies" into ArrayBuffer slots, the same code as
// on CUDA): what goes where under a budget, every value back bit for bit, slots reused across steps,
// prefetch copies one layer at a time, the last layer put reused without a round trip, release frees
// everything, and the refusals. The model-level equality (every policy, offload on and off, 1 and 2
// ranks) is in packages/llama/src/offload-model.test.ts.

import { expect, test } from "bun:test";
import { fromArray, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { OffloadActivationStore } from "./offload.ts";
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
  using s = new OffloadActivationStore({ deviceBudgetBytes: 0 });
  const L = 4;
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

test("spill: the GPU budget fills first in put order, every later tensor goes to the host; a budget that fits all moves nothing", () => {
  // Two layers and 64 bytes: layers 0 and 1 stay; layer 2's x (128 B) does not fit, and from there on
  // everything spills, even layer 2's lse chunks (16 B each) that would fit the 64 B left: the GPU part
  // stays one prefix of the put order.
  using s = new OffloadActivationStore({ deviceBudgetBytes: 2 * LAYER_BYTES + 64 });
  const L = 4;
  const places: string[] = [];
  step(s, L, 0, (i) => places.push(`${i}:${[...s.placement(i)].map(([n, p]) => `${n}=${p}`).join(",")}`));
  expect(places.reverse()).toEqual([
    "0:x=device,o=device,lse=device",
    "1:x=device,o=device,lse=device",
    "2:x=host,o=host,lse=host",
    "3:x=host,o=host,lse=host",
  ]);
  const r = s.report();
  expect([r.copiesOut, r.copiesIn, r.reused]).toEqual([2 * 4, 4, 4]);
  // The budget is given back when the store empties: the next step places the same way.
  step(s, L, 1);
  expect(s.report().copiesOut).toBe(4 * 4);

  using all = new OffloadActivationStore({ deviceBudgetBytes: Number.POSITIVE_INFINITY });
  step(all, L, 0);
  expect(all.report()).toMatchObject({ copiesOut: 0, copiesIn: 0, slotAllocations: 0, peakDeviceBytes: L * LAYER_BYTES });
});

test("a tensor split at a slot boundary of several segments, and a slot grown for a larger tensor later", () => {
  using s = new OffloadActivationStore({ deviceBudgetBytes: 0, segmentBytes: 24 });
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

test("refusals: a name put twice, an empty lse list, a bad budget or segment size; unknown names are undefined", () => {
  expect(() => new OffloadActivationStore({ deviceBudgetBytes: -1 })).toThrow("deviceBudgetBytes must be a non-negative integer");
  expect(() => new OffloadActivationStore({ deviceBudgetBytes: 0, segmentBytes: 2 ** 33 })).toThrow("segmentBytes must be");
  using s = new OffloadActivationStore({ deviceBudgetBytes: 0 });
  s.put(0, "x", fromArray([1], [1]));
  expect(() => s.put(0, "x", fromArray([1], [1]))).toThrow('layer 0 already holds "x"');
  expect(() => s.put(0, "lse", [])).toThrow("empty list");
  expect(s.get(0, "q" as SavedName)).toBeUndefined();
  expect(s.get(7, "x")).toBeUndefined();
  s.release(0);
  expect(s.bytes()).toBe(0);
});
