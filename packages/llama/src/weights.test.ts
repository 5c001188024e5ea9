import { expect, test } from "bun:test";
import { randn, type Tensor, toFloat32Array } from "@lightseq/tensor";
import { namedTensors, tinyConfig } from "./fixtures/tiny.ts";
import {
  initLayer,
  initOffsets,
  initParams,
  LAYER_PARAMS,
  layerLayout,
  layerViews,
  ModelParams,
  type ParamRef,
  paramsFromTensors,
  zeroParams,
} from "./weights.ts";

test("a layer's flat buffer holds the contract's order; wqkv and wGateUp are views over q|k|v and gate|up", () => {
  const cfg = tinyConfig({ dim: 8, heads: 4, kvHeads: 2, ffn: 12 }); // D = 2
  const L = layerLayout(cfg);
  expect(L.entries.map((e) => e.name)).toEqual([...LAYER_PARAMS]);
  expect(L.entries.map((e) => e.shape)).toEqual([[8], [8, 8], [4, 8], [4, 8], [8, 8], [8], [12, 8], [12, 8], [8, 12]]);
  expect(L.numel).toBe(8 + 64 + 32 + 32 + 64 + 8 + 96 + 96 + 96);
  using flat = randn([L.numel], { seed: 1 });
  const w = layerViews(flat, cfg);
  const all = flat.data() as Float32Array;
  const at = (t: Tensor) => Array.from(t.data() as Float32Array);
  expect(at(w.wqkv)).toEqual(Array.from(all.subarray(8, 8 + 128)));
  expect(at(w.wqkv).slice(64, 96)).toEqual(at(w.wk));
  expect(at(w.wGateUp).slice(96)).toEqual(at(w.wUp));
  expect(at(w.wDown)).toEqual(Array.from(all.subarray(L.numel - 96)));
  expect(w.wqkv.shape).toEqual([16, 8]);
  expect(w.wGateUp.shape).toEqual([24, 8]);
  for (const t of Object.values(w)) t.dispose();
  using wrong = randn([L.numel - 1], { seed: 1 });
  expect(() => layerViews(wrong, cfg)).toThrow(`expected a flat [${L.numel}] buffer for this config`);
});

test("init: norms at 1, matrices normal(0, std); a layer's values do not depend on the layers after it; any slice regenerates alone", () => {
  const cfg = tinyConfig({ layers: 3 });
  using p = initParams(cfg, { seed: 4 });
  using shorter = initParams(tinyConfig({ layers: 2 }), { seed: 4 });
  const w = layerViews(p.layers[1] as Tensor, cfg);
  expect(new Set(toFloat32Array(w.attnNorm))).toEqual(new Set([1]));
  expect(new Set(toFloat32Array(p.finalNorm))).toEqual(new Set([1]));
  const m = toFloat32Array(w.wGate);
  const mean = m.reduce((a, b) => a + b, 0) / m.length;
  const std = Math.sqrt(m.reduce((a, b) => a + (b - mean) ** 2, 0) / m.length);
  expect(Math.abs(std - 0.02)).toBeLessThan(0.02 * 0.05); // 1536 samples: the sample std is within ~2% of 0.02
  for (const t of Object.values(w)) t.dispose();
  expect(toFloat32Array(shorter.layers[1] as Tensor)).toEqual(toFloat32Array(p.layers[1] as Tensor));
  expect(toFloat32Array(shorter.embed)).toEqual(toFloat32Array(p.embed));
  using alone = initLayer(cfg, 2, { seed: 4 });
  expect(toFloat32Array(alone)).toEqual(toFloat32Array(p.layers[2] as Tensor));
  // A shard (what a ZeRO rank owns) from its counter offset alone: wq of layer 2.
  const wq = layerLayout(cfg).entries[1] as { offset: number; numel: number };
  using shard = randn([wq.numel], { seed: 4, std: 0.02, offset: initOffsets(cfg).layer(2) + wq.offset });
  expect(toFloat32Array(shard)).toEqual(toFloat32Array(p.layers[2] as Tensor).subarray(wq.offset, wq.offset + wq.numel));
  expect(p.head).not.toBeNull();
  expect(toFloat32Array(p.head as Tensor)).not.toEqual(toFloat32Array(p.embed));
});

test("ModelParams refuses a missing head, a head with tied embeddings, and wrong shapes, naming the tensor", () => {
  const cfg = tinyConfig();
  using z = zeroParams(cfg);
  expect(() => new ModelParams(cfg, z.layers, z.embed, z.finalNorm, null)).toThrow(
    "model params: head is missing (the embeddings are not tied)",
  );
  const tied = tinyConfig({ tied: true });
  expect(() => new ModelParams(tied, z.layers, z.embed, z.finalNorm, z.head)).toThrow("head must be null when the embeddings are tied");
  expect(() => new ModelParams(cfg, z.layers, z.finalNorm, z.finalNorm, z.head)).toThrow("model params: embed: expected shape [40, 32]");
  expect(() => new ModelParams(cfg, z.layers.slice(1), z.embed, z.finalNorm, z.head)).toThrow("expected 2 layers, got 1");
});

test("paramsFromTensors packs per-tensor values into the flat layout (a round trip of initParams) and names a wrong size", () => {
  const cfg = tinyConfig();
  using p = initParams(cfg, { seed: 8 });
  const named = new Map(namedTensors(p));
  const read = (ref: ParamRef) => (named.get(ref.layer === null ? ref.field : `layers.${ref.layer}.${ref.field}`) as Tensor).data();
  using q = paramsFromTensors(cfg, read);
  q.all().forEach((t, j) => {
    expect(toFloat32Array(t)).toEqual(toFloat32Array(p.all()[j] as Tensor));
  });
  expect(() => paramsFromTensors(cfg, (ref) => (ref.layer === 1 && ref.field === "wUp" ? new Float32Array(3) : read(ref)))).toThrow(
    "params: layers.1.wUp: expected 1536 values for this config, got 3",
  );
  for (const t of named.values()) t.dispose();
});
