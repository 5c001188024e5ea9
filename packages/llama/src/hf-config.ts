// Hugging Face config.json <-> LlamaConfig: parsing (transformers 4 `rope_theta`/`rope_scaling` and
// transformers 5 `rope_parameters`; see shared/reference/llama.md section 1), reading and writing the
// file. The result is validated by config.ts's resolveLlamaConfig, with errors naming config.json's
// fields.
//
// Which config.json fields do what (HF_READ, HF_FIXED, HF_DTYPE_FIELDS and HF_IGNORED below are the
// single source of truth):
// - read into LlamaConfig: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads
//   (absent = MHA), head_dim (absent = hidden_size / num_attention_heads), intermediate_size,
//   vocab_size, rms_norm_eps, max_position_embeddings, tie_word_embeddings (absent = false),
//   bos_token_id, eos_token_id, and RoPE (rope_theta absent = 10000, transformers' default).
// - checked, because another value would change the math we implement: model_type ("llama"),
//   hidden_act ("silu"), attention_bias / mlp_bias (false), attention_dropout (0), torch_dtype / dtype
//   (a float type name; only the weights' storage, which the safetensors header states per tensor).
// - tolerated and ignored (no effect on the forward/backward math): architectures, transformers_version,
//   initializer_range (we initialize with our own seeded init), use_cache, pretraining_tp (HF's
//   emulation of Meta's sliced matmuls: the same math up to rounding), pad_token_id, _name_or_path, and
//   generic transformers PretrainedConfig bookkeeping (output_attentions, return_dict, ...).
// - anything else is an error naming the field and the file, so a config of another architecture
//   (or a feature we do not implement: quantization, sliding windows, biases, other RoPE types) is
//   refused instead of silently loaded wrong.

import {
  type Field,
  type LlamaConfig,
  LlamaConfigError,
  type LlamaConfigInput,
  positiveFinite,
  type RopeScaling,
  resolveLlamaConfig,
} from "./config.ts";

/** The weights' storage type a config.json names (torch_dtype / dtype); informational only. */
export type HfDtypeName = "bfloat16" | "float16" | "float32";

/** Fields read into the config, checked for a fixed value, or tolerated and ignored. */
const HF_READ = [
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "intermediate_size",
  "vocab_size",
  "rms_norm_eps",
  "max_position_embeddings",
  "tie_word_embeddings",
  "bos_token_id",
  "eos_token_id",
  "rope_theta",
  "rope_scaling",
  "rope_parameters",
] as const;

/** Must hold exactly this value (or be absent): any other value changes the math. */
const HF_FIXED: Readonly<Record<string, unknown>> = {
  model_type: "llama",
  hidden_act: "silu",
  attention_bias: false,
  mlp_bias: false,
  attention_dropout: 0,
};

const HF_DTYPE_FIELDS = ["torch_dtype", "dtype"] as const;

const HF_IGNORED = [
  "architectures",
  "transformers_version",
  "initializer_range",
  "use_cache",
  "pretraining_tp",
  "pad_token_id",
  "_name_or_path",
  // generic PretrainedConfig bookkeeping, written by some transformers versions
  "output_attentions",
  "output_hidden_states",
  "return_dict",
  "torchscript",
  "use_return_dict",
  "is_encoder_decoder",
  "is_decoder",
  "add_cross_attention",
  "tie_encoder_decoder",
  "chunk_size_feed_forward",
  "id2label",
  "label2id",
  "problem_type",
  "tokenizer_class",
  "prefix",
  "sep_token_id",
  "decoder_start_token_id",
  "task_specific_params",
  "finetuning_task",
  "_attn_implementation_autoset",
] as const;

/** Our field -> the HF field it comes from (for error messages). */
const HF_NAME: Readonly<Record<string, string>> = {
  dim: "hidden_size",
  layers: "num_hidden_layers",
  heads: "num_attention_heads",
  kvHeads: "num_key_value_heads",
  headDim: "head_dim",
  ffn: "intermediate_size",
  vocab: "vocab_size",
  normEps: "rms_norm_eps",
  ropeTheta: "rope_theta",
  ropeScaling: "rope_scaling",
  "ropeScaling.factor": "rope_scaling.factor",
  "ropeScaling.lowFreqFactor": "rope_scaling.low_freq_factor",
  "ropeScaling.highFreqFactor": "rope_scaling.high_freq_factor",
  "ropeScaling.originalMaxPositions": "rope_scaling.original_max_position_embeddings",
  tiedEmbeddings: "tie_word_embeddings",
  maxPositions: "max_position_embeddings",
  bosId: "bos_token_id",
  eosIds: "eos_token_id",
};

const LLAMA3_HF_KEYS = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"] as const;

interface ParsedRope {
  theta: number | undefined;
  scaling: RopeScaling | null;
}

/** One rope block: transformers 4 `rope_scaling` (no theta inside) or transformers 5 `rope_parameters`. */
function parseRopeBlock(block: unknown, field: "rope_scaling" | "rope_parameters", file: string): ParsedRope {
  if (block === null || block === undefined) return { theta: undefined, scaling: null };
  const err = (msg: string): never => {
    throw new LlamaConfigError(`${file}: field ${field}${msg}`);
  };
  if (typeof block !== "object" || Array.isArray(block)) err(` must be an object or null, got ${JSON.stringify(block)}`);
  const b = block as Record<string, unknown>;
  const named = b.rope_type ?? b.type;
  if (b.rope_type !== undefined && b.type !== undefined && b.rope_type !== b.type) {
    err(`: rope_type ${JSON.stringify(b.rope_type)} and type ${JSON.stringify(b.type)} disagree`);
  }
  const type = named ?? "default";
  const allowed: string[] = ["rope_type", "type"];
  // transformers 5 may write partial_rotary_factor into the block; 1 (rotate the whole head) is what we implement
  if (b.partial_rotary_factor !== undefined) {
    if (b.partial_rotary_factor !== 1)
      err(`.partial_rotary_factor ${JSON.stringify(b.partial_rotary_factor)} is not supported (only 1: RoPE over the whole head)`);
    allowed.push("partial_rotary_factor");
  }
  if (field === "rope_parameters") allowed.push("rope_theta");
  let theta: number | undefined;
  if (b.rope_theta !== undefined) {
    if (field !== "rope_parameters") err(`.rope_theta is not part of rope_scaling (transformers 4 puts rope_theta at the top level)`);
    theta = positiveFinite(b.rope_theta, `${file}: field rope_parameters.rope_theta`);
  }
  let scaling: RopeScaling | null = null;
  if (type === "llama3") {
    allowed.push(...LLAMA3_HF_KEYS);
    for (const k of LLAMA3_HF_KEYS) if (b[k] === undefined) err(`.${k} is missing (required by rope_type "llama3")`);
    scaling = {
      type: "llama3",
      factor: b.factor as number,
      lowFreqFactor: b.low_freq_factor as number,
      highFreqFactor: b.high_freq_factor as number,
      originalMaxPositions: b.original_max_position_embeddings as number,
    };
  } else if (type !== "default") {
    err(
      `: rope type ${JSON.stringify(type)} is not supported (implemented: "default", "llama3"); convert the checkpoint or add the scaling to ops/rope.ts`,
    );
  }
  for (const k of Object.keys(b)) if (!allowed.includes(k)) err(`.${k} is not a field of rope type ${JSON.stringify(type)}`);
  return { theta, scaling };
}

/**
 * Parses a Hugging Face Llama config.json object. `file` names the file in every error. Accepts the
 * transformers 4 and 5 RoPE forms (and both together when they agree).
 */
export function parseHfConfig(json: unknown, file = "config.json"): LlamaConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new LlamaConfigError(`${file}: expected a JSON object, got ${JSON.stringify(json)?.slice(0, 80)}`);
  }
  const j = json as Record<string, unknown>;
  const at = (f: string) => `${file}: field ${f}`;
  for (const k of Object.keys(j)) {
    const known =
      (HF_READ as readonly string[]).includes(k) ||
      Object.hasOwn(HF_FIXED, k) ||
      (HF_DTYPE_FIELDS as readonly string[]).includes(k) ||
      (HF_IGNORED as readonly string[]).includes(k);
    if (!known) {
      throw new LlamaConfigError(
        `${at(k)} is not a Llama config field we read or know to be harmless (value ${JSON.stringify(j[k])?.slice(0, 80)}); ` +
          `remove it if it does not change the model, or teach packages/llama/src/hf-config.ts about it`,
      );
    }
  }
  for (const [k, v] of Object.entries(HF_FIXED)) {
    if (j[k] !== undefined && j[k] !== v)
      throw new LlamaConfigError(`${at(k)} must be ${JSON.stringify(v)} for a Llama we implement, got ${JSON.stringify(j[k])}`);
  }
  for (const k of HF_DTYPE_FIELDS) {
    const v = j[k];
    if (v !== undefined && v !== null && !["bfloat16", "float16", "float32"].includes(v as string)) {
      throw new LlamaConfigError(`${at(k)} must be "bfloat16", "float16" or "float32", got ${JSON.stringify(v)}`);
    }
  }
  for (const k of [
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "rms_norm_eps",
    "max_position_embeddings",
  ]) {
    if (j[k] === undefined || j[k] === null) throw new LlamaConfigError(`${at(k)} is missing (required)`);
  }

  // RoPE: top-level rope_theta + rope_scaling (transformers 4) and/or rope_parameters (transformers 5).
  const legacy = parseRopeBlock(j.rope_scaling, "rope_scaling", file);
  const params = parseRopeBlock(j.rope_parameters, "rope_parameters", file);
  const topTheta = j.rope_theta === undefined || j.rope_theta === null ? undefined : positiveFinite(j.rope_theta, at("rope_theta"));
  let ropeTheta = topTheta ?? params.theta ?? 10000;
  let ropeScaling = legacy.scaling;
  if (j.rope_parameters !== undefined && j.rope_parameters !== null) {
    if (params.theta === undefined)
      throw new LlamaConfigError(`${at("rope_parameters.rope_theta")} is missing (required in rope_parameters)`);
    if (topTheta !== undefined && topTheta !== params.theta) {
      throw new LlamaConfigError(`${at("rope_theta")} (${topTheta}) disagrees with rope_parameters.rope_theta (${params.theta})`);
    }
    if (j.rope_scaling !== undefined && j.rope_scaling !== null && JSON.stringify(legacy.scaling) !== JSON.stringify(params.scaling)) {
      throw new LlamaConfigError(`${at("rope_scaling")} disagrees with rope_parameters; keep one of them`);
    }
    ropeTheta = params.theta;
    ropeScaling = params.scaling;
  }

  const eos = j.eos_token_id;
  const input: LlamaConfigInput = {
    dim: j.hidden_size as number,
    layers: j.num_hidden_layers as number,
    heads: j.num_attention_heads as number,
    kvHeads: (j.num_key_value_heads ?? j.num_attention_heads) as number,
    ...(j.head_dim === undefined || j.head_dim === null ? {} : { headDim: j.head_dim as number }),
    ffn: j.intermediate_size as number,
    vocab: j.vocab_size as number,
    normEps: j.rms_norm_eps as number,
    ropeTheta,
    ropeScaling,
    tiedEmbeddings: (j.tie_word_embeddings ?? false) as boolean,
    maxPositions: j.max_position_embeddings as number,
    bosId: (j.bos_token_id ?? null) as number | null,
    eosIds: (eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos]) as number[],
  };
  const ropeSource = j.rope_parameters !== undefined && j.rope_parameters !== null ? "rope_parameters" : "rope_scaling";
  const label = (field: Field): string => {
    const hf = HF_NAME[field] ?? field;
    return ropeSource === "rope_parameters"
      ? hf.replace(/^rope_scaling/, "rope_parameters").replace(/^rope_theta$/, "rope_parameters.rope_theta")
      : hf;
  };
  return resolveLlamaConfig(input, { at: (field) => at(label(field)), label });
}

/** Reads and parses a config.json file. */
export async function readHfConfig(path: string): Promise<LlamaConfig> {
  const file = Bun.file(path);
  if (!(await file.exists())) throw new LlamaConfigError(`${path}: no such file (expected a Hugging Face config.json)`);
  let json: unknown;
  try {
    json = JSON.parse(await file.text());
  } catch (e) {
    throw new LlamaConfigError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseHfConfig(json, path);
}

export interface HfConfigWriteOptions {
  /** The dtype the weights are stored in (torch_dtype / dtype). */
  dtype: HfDtypeName;
  /** transformers 4 form (rope_theta + rope_scaling, readable by transformers 4 and 5; default) or 5 (rope_parameters). */
  form?: "transformers4" | "transformers5";
}

/** The config.json object for `cfg`, loadable by transformers as LlamaForCausalLM. */
export function toHfConfig(cfg: LlamaConfig, o: HfConfigWriteOptions): Record<string, unknown> {
  const form = o.form ?? "transformers4";
  const scaling =
    cfg.ropeScaling === null
      ? null
      : {
          rope_type: "llama3",
          factor: cfg.ropeScaling.factor,
          low_freq_factor: cfg.ropeScaling.lowFreqFactor,
          high_freq_factor: cfg.ropeScaling.highFreqFactor,
          original_max_position_embeddings: cfg.ropeScaling.originalMaxPositions,
        };
  const rope =
    form === "transformers4"
      ? { rope_theta: cfg.ropeTheta, rope_scaling: scaling }
      : { rope_parameters: { rope_type: "default", rope_theta: cfg.ropeTheta, ...(scaling ?? {}) } };
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: cfg.dim,
    num_hidden_layers: cfg.layers,
    num_attention_heads: cfg.heads,
    num_key_value_heads: cfg.kvHeads,
    head_dim: cfg.headDim,
    intermediate_size: cfg.ffn,
    vocab_size: cfg.vocab,
    rms_norm_eps: cfg.normEps,
    max_position_embeddings: cfg.maxPositions,
    tie_word_embeddings: cfg.tiedEmbeddings,
    hidden_act: "silu",
    attention_bias: false,
    mlp_bias: false,
    attention_dropout: 0,
    bos_token_id: cfg.bosId,
    eos_token_id: cfg.eosIds.length === 1 ? cfg.eosIds[0] : cfg.eosIds.length === 0 ? null : [...cfg.eosIds],
    ...rope,
    [form === "transformers4" ? "torch_dtype" : "dtype"]: o.dtype,
  };
}

export async function writeHfConfig(path: string, cfg: LlamaConfig, o: HfConfigWriteOptions): Promise<void> {
  await Bun.write(path, `${JSON.stringify(toHfConfig(cfg, o), null, 2)}\n`);
}
