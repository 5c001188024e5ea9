import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { encodeBf16 } from "@lightseq/tensor";
import { type LlamaConfig, llamaPreset } from "./config.ts";
import { tempDirs } from "./fixtures/temp-dirs.ts";
import {
  type HfTensorData,
  type HfTensorRef,
  hfTensorEntries,
  hfTensorName,
  loadHfCheckpoint,
  parseHfTensorName,
  saveHfCheckpoint,
} from "./hf.ts";
import { writeHfConfig } from "./hf-config.ts";
import { convertHfCheckpoint } from "./hf-convert.ts";
import { writeSafetensors } from "./safetensors-write.ts";

const { freshDir } = tempDirs("hf-test-");

// GQA (4 query heads, 2 K/V heads), headDim 6 given explicitly (heads*headDim = 24 != dim 16), untied.
const cfg: LlamaConfig = llamaPreset("tiny", { dim: 16, layers: 2, heads: 4, kvHeads: 2, headDim: 6, ffn: 24, vocab: 40 });

/** Distinct, seeded values per parameter, so a swapped tensor shows. */
function values(ref: HfTensorRef, n: number): Float32Array {
  const seed = (ref.layer ?? 7) * 101 + ref.field.length * 13 + ref.field.charCodeAt(1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sin(seed + i * 0.37) * (1 + (ref.layer ?? 0));
  return out;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

async function loadAll(dir: string, c: LlamaConfig | null, as: "f32" | "bf16" = "f32") {
  const got = new Map<string, HfTensorData>();
  const config = await loadHfCheckpoint(
    dir,
    c,
    (ref, data, dtype) => {
      expect(dtype).toBe(as);
      got.set(hfTensorName(ref), data);
    },
    { as },
  );
  return { config, got };
}

/** A checkpoint folder written by hand: config.json + one model.safetensors with these tensors. */
async function handMade(c: LlamaConfig, edit: (t: { name: string; shape: number[]; dtype: "F32" | "I32" }[]) => void): Promise<string> {
  const dir = freshDir();
  await writeHfConfig(join(dir, "config.json"), c, { dtype: "float32" });
  const tensors: { name: string; shape: number[]; dtype: "F32" | "I32" }[] = hfTensorEntries(c).map((e) => ({
    name: e.name,
    shape: [...e.shape],
    dtype: "F32",
  }));
  edit(tensors);
  writeSafetensors(
    join(dir, "model.safetensors"),
    tensors.map((t) => ({ ...t, data: t.dtype === "F32" ? new Float32Array(numel(t.shape)) : new Int32Array(numel(t.shape)) })),
  );
  return dir;
}

describe("names", () => {
  test("every parameter maps to its HF name and back", () => {
    const entries = hfTensorEntries(cfg);
    expect(entries.length).toBe(1 + 9 * 2 + 1 + 1);
    expect(entries.map((e) => e.name).slice(0, 4)).toEqual([
      "model.embed_tokens.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.self_attn.k_proj.weight",
    ]);
    for (const e of entries) expect(parseHfTensorName(e.name)).toEqual(e.ref);
    const shape = (name: string) => entries.find((e) => e.name === name)!.shape;
    expect(shape("model.layers.1.self_attn.q_proj.weight")).toEqual([24, 16]);
    expect(shape("model.layers.1.self_attn.v_proj.weight")).toEqual([12, 16]);
    expect(shape("model.layers.1.self_attn.o_proj.weight")).toEqual([16, 24]);
    expect(shape("model.layers.1.mlp.down_proj.weight")).toEqual([16, 24]);
    expect(shape("lm_head.weight")).toEqual([40, 16]);
    expect(parseHfTensorName("model.layers.01.mlp.up_proj.weight")).toBeNull();
    expect(parseHfTensorName("model.layers.0.self_attn.q_proj.bias")).toBeNull();
    expect(hfTensorEntries(llamaPreset("llama3.2-1b")).some((e) => e.name === "lm_head.weight")).toBe(false);
  });
});

describe("save and load", () => {
  test("f32 round trip, sharded, exact", async () => {
    const dir = freshDir();
    const files = await saveHfCheckpoint(
      dir,
      cfg,
      (ref) => values(ref, numel(hfTensorEntries(cfg).find((e) => e.name === hfTensorName(ref))!.shape)),
      {
        dtype: "f32",
        shardBytes: 4096,
      },
    );
    expect(files.some((f) => f.endsWith("model.safetensors.index.json"))).toBe(true);
    expect(readdirSync(dir).filter((f) => f.endsWith(".safetensors")).length).toBeGreaterThan(2);
    expect(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).torch_dtype).toBe("float32");
    const { config, got } = await loadAll(dir, null);
    expect(config).toEqual(cfg);
    for (const e of hfTensorEntries(cfg)) expect(got.get(e.name)).toEqual(values(e.ref, numel(e.shape)));
  });

  test("bf16: f32 sources rounded to nearest even, bf16 bits kept; loaded as bf16 or widened to f32", async () => {
    const dir = freshDir();
    const bits = new Map<string, Uint16Array>();
    await saveHfCheckpoint(dir, cfg, (ref) => {
      const e = hfTensorEntries(cfg).find((x) => x.name === hfTensorName(ref))!;
      const v = values(ref, numel(e.shape));
      bits.set(e.name, encodeBf16(v));
      return ref.layer === 1 ? encodeBf16(v) : v; // layer 1 hands bf16 bits, the rest f32
    });
    expect(readdirSync(dir).sort()).toEqual(["config.json", "model.safetensors"]);
    const b = await loadAll(dir, cfg, "bf16");
    for (const [name, want] of bits) expect(b.got.get(name)).toEqual(want);
    const f = await loadAll(dir, cfg, "f32");
    const q = f.got.get("model.layers.0.self_attn.q_proj.weight") as Float32Array;
    expect(encodeBf16(q)).toEqual(bits.get("model.layers.0.self_attn.q_proj.weight")!);
  });

  test("tied embeddings: no lm_head saved; an lm_head equal to the embedding is accepted", async () => {
    const tied = llamaPreset("tiny", { dim: 16, layers: 1, heads: 4, kvHeads: 2, ffn: 24, vocab: 40, tiedEmbeddings: true });
    const dir = freshDir();
    await saveHfCheckpoint(dir, tied, (ref) => values(ref, numel(hfTensorEntries(tied).find((e) => e.name === hfTensorName(ref))!.shape)));
    const saved = await loadAll(dir, null, "bf16");
    expect(saved.config.tiedEmbeddings).toBe(true);
    expect([...saved.got.keys()]).not.toContain("lm_head.weight");
    expect(saved.got.size).toBe(1 + 9 + 1);
    const ok = await handMade(tied, (t) => t.push({ name: "lm_head.weight", shape: [40, 16], dtype: "F32" }));
    const { got } = await loadAll(ok, null);
    expect(got.has("lm_head.weight")).toBe(false);
  });

  test("convertHfCheckpoint: f32 folder to sharded bf16, values rounded to nearest even", async () => {
    const src = freshDir();
    const dst = join(freshDir(), "out");
    const size = (ref: HfTensorRef) => numel(hfTensorEntries(cfg).find((e) => e.name === hfTensorName(ref))!.shape);
    await saveHfCheckpoint(src, cfg, (ref) => values(ref, size(ref)), { dtype: "f32" });
    await convertHfCheckpoint(src, dst, "bf16", 2048);
    expect(readdirSync(dst)).toContain("model.safetensors.index.json");
    expect(JSON.parse(readFileSync(join(dst, "config.json"), "utf8")).torch_dtype).toBe("bfloat16");
    const { got } = await loadAll(dst, cfg, "bf16");
    for (const e of hfTensorEntries(cfg)) expect(got.get(e.name)).toEqual(encodeBf16(values(e.ref, numel(e.shape))));
  });

  test("rotary_emb.inv_freq buffers are ignored", async () => {
    const dir = await handMade(cfg, (t) => t.push({ name: "model.layers.0.self_attn.rotary_emb.inv_freq", shape: [3], dtype: "F32" }));
    const { got } = await loadAll(dir, null);
    expect(got.size).toBe(hfTensorEntries(cfg).length);
  });
});

describe("bad checkpoints: errors name the file and the tensor", () => {
  const cases: [string, (t: { name: string; shape: number[]; dtype: "F32" | "I32" }[]) => void, RegExp][] = [
    [
      "missing tensor",
      (t) => t.splice(5, 1),
      /model\.safetensors: tensor "model\.layers\.0\.self_attn\.o_proj\.weight": missing from the checkpoint/,
    ],
    [
      "shape disagreeing with the config",
      (t) => (t.find((x) => x.name === "model.layers.1.self_attn.k_proj.weight")!.shape = [24, 16]),
      /tensor "model\.layers\.1\.self_attn\.k_proj\.weight": shape \[24, 16\] disagrees with the config: expected \[kvHeads\*headDim, dim\] = \[12, 16\]/,
    ],
    [
      "a layer beyond the config",
      (t) => t.push({ name: "model.layers.2.mlp.up_proj.weight", shape: [24, 16], dtype: "F32" }),
      /tensor "model\.layers\.2\.mlp\.up_proj\.weight": layer 2, but the config has 2 layers/,
    ],
    [
      "an unknown tensor",
      (t) => t.push({ name: "model.layers.0.self_attn.q_proj.bias", shape: [24], dtype: "F32" }),
      /tensor "model\.layers\.0\.self_attn\.q_proj\.bias": is not a Llama parameter/,
    ],
    [
      "an integer weight",
      (t) => (t.find((x) => x.name === "model.norm.weight")!.dtype = "I32"),
      /tensor "model\.norm\.weight": is I32; weights must be F32, BF16 or F16/,
    ],
  ];
  for (const [what, edit, re] of cases) {
    test(what, async () => {
      const dir = await handMade(cfg, edit);
      const calls: string[] = [];
      await expect(loadHfCheckpoint(dir, null, (ref) => void calls.push(hfTensorName(ref)))).rejects.toThrow(re);
      expect(calls).toEqual([]); // checked before anything reaches the sink
    });
  }

  test("tied lm_head that differs from the embedding", async () => {
    const tied = llamaPreset("tiny", { dim: 16, layers: 1, heads: 4, kvHeads: 2, ffn: 24, vocab: 40, tiedEmbeddings: true });
    const dir = freshDir();
    await writeHfConfig(join(dir, "config.json"), tied, { dtype: "float32" });
    const tensors = hfTensorEntries(tied).map((e) => ({
      name: e.name,
      dtype: "F32" as const,
      shape: e.shape,
      data: new Float32Array(numel(e.shape)),
    }));
    tensors.push({ name: "lm_head.weight", dtype: "F32", shape: [40, 16], data: new Float32Array(640).fill(1) });
    writeSafetensors(join(dir, "model.safetensors"), tensors);
    await expect(loadHfCheckpoint(dir, null, () => {})).rejects.toThrow(
      /tensor "lm_head\.weight": differs from model\.embed_tokens\.weight, but tie_word_embeddings is true/,
    );
  });

  test("config.json disagreeing with the model's config", async () => {
    const dir = await handMade(cfg, () => {});
    await expect(
      loadHfCheckpoint(dir, llamaPreset("tiny", { dim: 16, layers: 2, heads: 4, kvHeads: 4, headDim: 6, ffn: 24, vocab: 40 }), () => {}),
    ).rejects.toThrow(/config\.json: kvHeads is 2, but the model's config has 4/);
  });
});
