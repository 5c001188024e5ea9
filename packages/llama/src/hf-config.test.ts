import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { LLAMA_PRESETS, LlamaConfigError, llamaPreset } from "./config.ts";
import { tempDirs } from "./fixtures/temp-dirs.ts";
import { parseHfConfig, readHfConfig, toHfConfig, writeHfConfig } from "./hf-config.ts";

// meta-llama/Llama-3.1-8B config.json as published (transformers 4.43).
const LLAMA31_8B = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  transformers_version: "4.43.0.dev0",
  use_cache: true,
  vocab_size: 128256,
};

// meta-llama/Llama-2-7b-hf config.json as first published (no rope_theta: transformers' default 10000).
const LLAMA2_7B = {
  _name_or_path: "meta-llama/Llama-2-7b-hf",
  architectures: ["LlamaForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 11008,
  max_position_embeddings: 4096,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 32,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  tie_word_embeddings: false,
  torch_dtype: "float16",
  transformers_version: "4.31.0.dev0",
  use_cache: true,
  vocab_size: 32000,
};

const tmp = tempDirs("llama-config-").root;
describe("Hugging Face config.json", () => {
  test("Llama-3.1-8B (transformers 4 form) loads as the llama3-8b preset", () => {
    expect(parseHfConfig(LLAMA31_8B, "Llama-3.1-8B/config.json")).toEqual(llamaPreset("llama3-8b"));
  });

  test("Llama-2-7b without rope_theta loads as the llama2-7b preset", () => {
    expect(parseHfConfig(LLAMA2_7B)).toEqual(llamaPreset("llama2-7b"));
  });

  test("transformers 5 rope_parameters form, and both forms together when they agree", () => {
    const { rope_scaling, rope_theta, torch_dtype, ...rest } = LLAMA31_8B;
    const v5 = { ...rest, dtype: torch_dtype, rope_parameters: { ...rope_scaling, rope_theta } };
    expect(parseHfConfig(v5)).toEqual(llamaPreset("llama3-8b"));
    expect(parseHfConfig({ ...v5, rope_theta, rope_scaling })).toEqual(llamaPreset("llama3-8b"));
    const plain = { ...rest, rope_parameters: { rope_type: "default", rope_theta: 10000 } };
    expect(parseHfConfig(plain).ropeScaling).toBeNull();
    // a partial_rotary_factor of 1 is plain RoPE over the whole head; another is refused
    expect(parseHfConfig({ ...rest, rope_parameters: { ...rope_scaling, rope_theta, partial_rotary_factor: 1.0 } })).toEqual(
      llamaPreset("llama3-8b"),
    );
    expect(() =>
      parseHfConfig({ ...rest, rope_parameters: { rope_type: "default", rope_theta, partial_rotary_factor: 0.5 } }, "c.json"),
    ).toThrow(/c\.json: field rope_parameters\.partial_rotary_factor 0\.5 is not supported/);
  });

  test("eos as a list, absent num_key_value_heads (MHA), absent tie_word_embeddings", () => {
    const { num_key_value_heads: _, tie_word_embeddings: __, ...rest } = LLAMA31_8B;
    const c = parseHfConfig({ ...rest, eos_token_id: [128001, 128008, 128009] });
    expect(c.eosIds).toEqual([128001, 128008, 128009]);
    expect(c.kvHeads).toBe(32);
    expect(c.tiedEmbeddings).toBe(false);
  });

  const errors: [string, (j: Record<string, unknown>) => Record<string, unknown>, RegExp][] = [
    ["unknown field", (j) => ({ ...j, sliding_window: 4096 }), /f\.json: field sliding_window is not a Llama config field/],
    ["missing field", ({ intermediate_size: _, ...j }) => j, /f\.json: field intermediate_size is missing/],
    [
      "heads not dividing hidden_size",
      (j) => ({ ...j, hidden_size: 4100 }),
      /field num_attention_heads \(32\) must divide hidden_size \(4100\) when head_dim is not given/,
    ],
    [
      "kv heads not dividing heads",
      (j) => ({ ...j, num_key_value_heads: 5 }),
      /field num_key_value_heads \(5\) must divide num_attention_heads \(32\)/,
    ],
    ["non-positive size", (j) => ({ ...j, vocab_size: 0 }), /field vocab_size must be a positive integer, got 0/],
    ["another model type", (j) => ({ ...j, model_type: "mistral" }), /field model_type must be "llama".*got "mistral"/],
    ["another activation", (j) => ({ ...j, hidden_act: "gelu" }), /field hidden_act must be "silu"/],
    ["biases", (j) => ({ ...j, attention_bias: true }), /field attention_bias must be false/],
    ["unknown dtype", (j) => ({ ...j, torch_dtype: "int8" }), /field torch_dtype must be "bfloat16", "float16" or "float32"/],
    [
      "unsupported rope type",
      (j) => ({ ...j, rope_scaling: { rope_type: "yarn", factor: 4 } }),
      /field rope_scaling: rope type "yarn" is not supported/,
    ],
    ["old-style rope type key", (j) => ({ ...j, rope_scaling: { type: "linear", factor: 2 } }), /rope type "linear" is not supported/],
    [
      "llama3 scaling missing a field",
      (j) => ({ ...j, rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4 } }),
      /field rope_scaling\.original_max_position_embeddings is missing/,
    ],
    [
      "llama3 scaling with an unknown field",
      (j) => ({ ...j, rope_scaling: { ...(j.rope_scaling as object), beta_fast: 32 } }),
      /field rope_scaling\.beta_fast is not a field of rope type "llama3"/,
    ],
    [
      "inconsistent llama3 factors",
      (j) => ({ ...j, rope_scaling: { ...(j.rope_scaling as object), high_freq_factor: 0.5 } }),
      /field rope_scaling\.high_freq_factor must exceed rope_scaling\.low_freq_factor \(1\)/,
    ],
    [
      "rope_theta disagreeing with rope_parameters",
      (j) => ({ ...j, rope_parameters: { rope_type: "default", rope_theta: 10000 }, rope_scaling: null }),
      /field rope_theta \(500000\) disagrees with rope_parameters\.rope_theta \(10000\)/,
    ],
    [
      "rope_parameters without theta",
      ({ rope_theta: _, rope_scaling: __, ...j }) => ({ ...j, rope_parameters: { rope_type: "default" } }),
      /rope_parameters\.rope_theta is missing/,
    ],
    ["bos beyond vocab", (j) => ({ ...j, bos_token_id: 200000 }), /field bos_token_id must be a token id in \[0, 128256\)/],
  ];
  for (const [what, edit, re] of errors) {
    test(`error: ${what}`, () => {
      expect(() => parseHfConfig(edit({ ...LLAMA31_8B }), "f.json")).toThrow(LlamaConfigError);
      expect(() => parseHfConfig(edit({ ...LLAMA31_8B }), "f.json")).toThrow(re);
    });
  }

  test("write then read gives the same config, in both forms, for every preset", async () => {
    for (const name of LLAMA_PRESETS) {
      const c = llamaPreset(name);
      for (const form of ["transformers4", "transformers5"] as const) {
        const path = join(tmp, `${name}-${form}.json`);
        await writeHfConfig(path, c, { dtype: "bfloat16", form });
        expect(await readHfConfig(path)).toEqual(c);
      }
    }
    expect(toHfConfig(llamaPreset("llama3-8b"), { dtype: "float32" }).rope_scaling).toEqual(LLAMA31_8B.rope_scaling);
  });

  test("a missing file and invalid JSON name the file", async () => {
    await expect(readHfConfig(join(tmp, "nope.json"))).rejects.toThrow(/nope\.json: no such file/);
    const path = join(tmp, "broken.json");
    await Bun.write(path, "{ hidden_size: ");
    await expect(readHfConfig(path)).rejects.toThrow(/broken\.json: not valid JSON/);
  });
});
