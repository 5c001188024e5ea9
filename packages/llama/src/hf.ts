// Hugging Face Llama checkpoints: the tensor names (shared/reference/llama.md section 1) mapped to
// our parameter fields (llama-contract.md), the shape of each from the config, and loading/saving a
// checkpoint folder (config.json + model.safetensors or shards with model.safetensors.index.json).
//
//   model.embed_tokens.weight                       embed      [V, C]
//   model.layers.N.input_layernorm.weight           attnNorm   [C]
//   model.layers.N.self_attn.q_proj.weight          wq         [Hq*D, C]
//   model.layers.N.self_attn.k_proj.weight          wk         [Hkv*D, C]
//   model.layers.N.self_attn.v_proj.weight          wv         [Hkv*D, C]
//   model.layers.N.self_attn.o_proj.weight          wo         [C, Hq*D]
//   model.layers.N.post_attention_layernorm.weight  mlpNorm    [C]
//   model.layers.N.mlp.gate_proj.weight             wGate      [F, C]
//   model.layers.N.mlp.up_proj.weight               wUp        [F, C]
//   model.layers.N.mlp.down_proj.weight             wDown      [C, F]
//   model.norm.weight                               finalNorm  [C]
//   lm_head.weight                                  head       [V, C]  (absent when tied)
//
// HF's q/k rows are already permuted for rotate-half RoPE, which is the layout ops/rope.ts uses, so
// the weights load as stored. `*.rotary_emb.inv_freq` buffers (old checkpoints) are ignored: the
// frequencies come from the config.

import { join } from "node:path";
import { decodeBf16 } from "@lightseq/tensor";
import { type LlamaConfig, LlamaConfigError } from "./config.ts";
import { type HfDtypeName, readHfConfig, writeHfConfig } from "./hf-config.ts";
import { SafetensorsCheckpoint, SafetensorsError } from "./safetensors.ts";
import { type TensorSpec, writeShardedSafetensors } from "./safetensors-write.ts";
import type { LayerParamName } from "./weights.ts";

export type NonLayerParamName = "embed" | "finalNorm" | "head";

/** Which parameter a checkpoint tensor is: a field of layer N, or a non-layer parameter. */
export type HfTensorRef =
  | { readonly layer: number; readonly field: LayerParamName }
  | { readonly layer: null; readonly field: NonLayerParamName };

const LAYER_SUFFIX = {
  attnNorm: "input_layernorm.weight",
  wq: "self_attn.q_proj.weight",
  wk: "self_attn.k_proj.weight",
  wv: "self_attn.v_proj.weight",
  wo: "self_attn.o_proj.weight",
  mlpNorm: "post_attention_layernorm.weight",
  wGate: "mlp.gate_proj.weight",
  wUp: "mlp.up_proj.weight",
  wDown: "mlp.down_proj.weight",
} as const satisfies Record<LayerParamName, string>;

const NON_LAYER_NAME = {
  embed: "model.embed_tokens.weight",
  finalNorm: "model.norm.weight",
  head: "lm_head.weight",
} as const satisfies Record<NonLayerParamName, string>;

const LAYER_FIELDS = Object.keys(LAYER_SUFFIX) as LayerParamName[];
const SUFFIX_FIELD = new Map<string, LayerParamName>(Object.entries(LAYER_SUFFIX).map(([f, s]) => [s, f as LayerParamName]));
const NAME_NON_LAYER = new Map<string, NonLayerParamName>(Object.entries(NON_LAYER_NAME).map(([f, n]) => [n, f as NonLayerParamName]));
const LAYER_NAME = /^model\.layers\.(0|[1-9][0-9]*)\.(.+)$/;
const INV_FREQ = /(^|\.)rotary_emb\.inv_freq$/;

export function hfTensorName(ref: HfTensorRef): string {
  return ref.layer === null ? NON_LAYER_NAME[ref.field] : `model.layers.${ref.layer}.${LAYER_SUFFIX[ref.field]}`;
}

/** The parameter a tensor name maps to, or null for a name that is not one of Llama's (layer range unchecked). */
export function parseHfTensorName(name: string): HfTensorRef | null {
  const nonLayer = NAME_NON_LAYER.get(name);
  if (nonLayer !== undefined) return { layer: null, field: nonLayer };
  const m = LAYER_NAME.exec(name);
  if (m === null) return null;
  const field = SUFFIX_FIELD.get(m[2]!);
  return field === undefined ? null : { layer: Number(m[1]), field };
}

/** The shape a parameter has under `cfg`, and (for errors) which config fields make it. */
export function hfTensorShape(cfg: LlamaConfig, ref: HfTensorRef): { shape: number[]; from: string } {
  const { dim: C, heads: Hq, kvHeads: Hkv, headDim: D, ffn: F, vocab: V } = cfg;
  switch (ref.field) {
    case "embed":
    case "head":
      return { shape: [V, C], from: "[vocab, dim]" };
    case "finalNorm":
    case "attnNorm":
    case "mlpNorm":
      return { shape: [C], from: "[dim]" };
    case "wq":
      return { shape: [Hq * D, C], from: "[heads*headDim, dim]" };
    case "wk":
    case "wv":
      return { shape: [Hkv * D, C], from: "[kvHeads*headDim, dim]" };
    case "wo":
      return { shape: [C, Hq * D], from: "[dim, heads*headDim]" };
    case "wGate":
    case "wUp":
      return { shape: [F, C], from: "[ffn, dim]" };
    case "wDown":
      return { shape: [C, F], from: "[dim, ffn]" };
  }
}

export interface HfTensorEntry {
  readonly ref: HfTensorRef;
  readonly name: string;
  readonly shape: readonly number[];
}

/** Every tensor a checkpoint of `cfg` holds, in order: embed, layer 0..L-1 (contract field order), norm, head. */
export function hfTensorEntries(cfg: LlamaConfig): HfTensorEntry[] {
  const refs: HfTensorRef[] = [{ layer: null, field: "embed" }];
  for (let l = 0; l < cfg.layers; l++) for (const field of LAYER_FIELDS) refs.push({ layer: l, field });
  refs.push({ layer: null, field: "finalNorm" });
  if (!cfg.tiedEmbeddings) refs.push({ layer: null, field: "head" });
  return refs.map((ref) => ({ ref, name: hfTensorName(ref), shape: hfTensorShape(cfg, ref).shape }));
}

export type HfDataType = "f32" | "bf16";
/** f32 values, or bf16 bits. */
export type HfTensorData = Float32Array | Uint16Array;

export interface HfLoadOptions {
  /** What the sink receives: f32 (F16/BF16 widened exactly) or bf16 bits (F32/F16 rounded to nearest even). Default f32. */
  as?: HfDataType;
}

/** Shape fields that must agree between a caller's config and the checkpoint's config.json. */
const SHAPE_FIELDS = ["dim", "layers", "heads", "kvHeads", "headDim", "ffn", "vocab", "tiedEmbeddings"] as const;

/**
 * Reads a Hugging Face Llama checkpoint folder: config.json (checked against `cfg` when given: every
 * shape field must agree), then every parameter, one tensor at a time, handed to `sink` in
 * hfTensorEntries order (the sink owns the new array). A missing or unknown tensor, a shape that
 * disagrees with the config or a non-float dtype is an error naming the file and the tensor; nothing
 * is handed to the sink before the whole checkpoint's names, shapes and dtypes are checked.
 * Returns the config (the checkpoint's when `cfg` is null).
 */
export async function loadHfCheckpoint(
  dir: string,
  cfg: LlamaConfig | null,
  sink: (ref: HfTensorRef, data: HfTensorData, dtype: HfDataType) => void | Promise<void>,
  o: HfLoadOptions = {},
): Promise<LlamaConfig> {
  const configPath = join(dir, "config.json");
  const fileCfg = await readHfConfig(configPath);
  if (cfg !== null) {
    for (const f of SHAPE_FIELDS) {
      if (cfg[f] !== fileCfg[f]) throw new LlamaConfigError(`${configPath}: ${f} is ${fileCfg[f]}, but the model's config has ${cfg[f]}`);
    }
  }
  const config = cfg ?? fileCfg;
  const as = o.as ?? "f32";
  const ck = SafetensorsCheckpoint.open(dir);
  try {
    const entries = hfTensorEntries(config);
    const expected = new Map(entries.map((e) => [e.name, e]));
    const fail = (tensor: string, file: string, msg: string): never => {
      throw new SafetensorsError(`${file}: tensor ${JSON.stringify(tensor)}: ${msg}`);
    };
    let tiedHead: string | null = null;
    for (const name of ck.names()) {
      if (expected.has(name) || INV_FREQ.test(name)) continue;
      const file = ck.info(name).file;
      const ref = parseHfTensorName(name);
      if (ref?.field === "head" && config.tiedEmbeddings) {
        tiedHead = name; // checked below: must equal the embedding it is tied to
        continue;
      }
      if (ref !== null && ref.layer !== null)
        fail(name, file, `layer ${ref.layer}, but the config has ${config.layers} layers (num_hidden_layers)`);
      fail(name, file, "is not a Llama parameter (unknown name; a checkpoint of another architecture or with adapters?)");
    }
    for (const e of entries) {
      if (!ck.has(e.name)) fail(e.name, ck.source, "missing from the checkpoint");
      const t = ck.info(e.name);
      const { from } = hfTensorShape(config, e.ref);
      if (t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])) {
        fail(e.name, t.file, `shape [${t.shape.join(", ")}] disagrees with the config: expected ${from} = [${e.shape.join(", ")}]`);
      }
      if (t.dtype === "I32") fail(e.name, t.file, "is I32; weights must be F32, BF16 or F16");
    }
    if (tiedHead !== null) {
      const a = ck.readF32(tiedHead);
      const b = ck.readF32(NON_LAYER_NAME.embed);
      if (a.length !== b.length || a.some((v, i) => !Object.is(v, b[i]))) {
        fail(tiedHead, ck.info(tiedHead).file, "differs from model.embed_tokens.weight, but tie_word_embeddings is true");
      }
    }
    for (const e of entries) await sink(e.ref, as === "f32" ? ck.readF32(e.name) : ck.readBf16(e.name), as);
  } finally {
    ck.close();
  }
  return config;
}

export interface HfSaveOptions {
  /** The dtype of the saved tensors (and of config.json's torch_dtype). Default bf16. */
  dtype?: HfDataType;
  /** Upper bound of one shard's bytes; transformers' default is 5 GB. */
  shardBytes?: number;
}

const HF_DEFAULT_SHARD_BYTES = 5_000_000_000;

/**
 * Writes a checkpoint folder transformers loads as LlamaForCausalLM: config.json, then the tensors in
 * hfTensorEntries order, each asked of `source` once, when its shard is written. `source` returns f32
 * values or bf16 bits (a Uint16Array); they are converted to `dtype` (f32 -> bf16 rounds to nearest
 * even; bf16 -> f32 is exact).
 */
export async function saveHfCheckpoint(
  dir: string,
  cfg: LlamaConfig,
  source: (ref: HfTensorRef) => HfTensorData | Promise<HfTensorData>,
  o: HfSaveOptions = {},
): Promise<string[]> {
  const dtype = o.dtype ?? "bf16";
  const entries = hfTensorEntries(cfg);
  const byName = new Map(entries.map((e) => [e.name, e]));
  const specs: TensorSpec[] = entries.map((e) => ({ name: e.name, dtype: dtype === "bf16" ? "BF16" : "F32", shape: e.shape }));
  const files = await writeShardedSafetensors(
    dir,
    specs,
    async (spec) => {
      const data = await source(byName.get(spec.name)!.ref);
      if (data instanceof Uint16Array && dtype === "f32") return decodeBf16(data);
      if (!(data instanceof Uint16Array) && !(data instanceof Float32Array)) {
        throw new SafetensorsError(
          `${dir}: tensor ${JSON.stringify(spec.name)}: the source must give a Float32Array or bf16 bits (Uint16Array)`,
        );
      }
      return data;
    },
    { shardBytes: o.shardBytes ?? HF_DEFAULT_SHARD_BYTES },
  );
  const torchDtype: HfDtypeName = dtype === "bf16" ? "bfloat16" : "float32";
  const configPath = join(dir, "config.json");
  await writeHfConfig(configPath, cfg, { dtype: torchDtype });
  return [configPath, ...files];
}
