// Llama model configuration: the typed, validated LlamaConfig (headDim derived, every field checked,
// unknown keys refused), the named presets with overrides, and the parameter count. Reading and writing
// Hugging Face config.json lives in hf-config.ts, which validates through resolveLlamaConfig below with
// its own field names (so an error names config.json's field, not ours); index.ts re-exports the public
// names of both, not the validation helpers they share.

/** Llama-3 RoPE frequency scaling ("rope_type": "llama3"); math in reference/llama.md section 1. */
export interface Llama3RopeScaling {
  readonly type: "llama3";
  readonly factor: number;
  readonly lowFreqFactor: number;
  readonly highFreqFactor: number;
  /** Context length the frequencies were trained for (original_max_position_embeddings). */
  readonly originalMaxPositions: number;
}

/** The RoPE scalings we implement; `null` is plain RoPE (HF "default"). */
export type RopeScaling = Llama3RopeScaling;

export interface LlamaConfig {
  /** Model width C (hidden_size). */
  readonly dim: number;
  readonly layers: number;
  /** Query heads Hq. */
  readonly heads: number;
  /** Key/value heads Hkv (GQA when < heads); divides heads. */
  readonly kvHeads: number;
  /** Per-head width D; dim / heads unless the checkpoint states it. Even (RoPE rotates halves). */
  readonly headDim: number;
  /** MLP width F (intermediate_size). */
  readonly ffn: number;
  readonly vocab: number;
  readonly normEps: number;
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling | null;
  /** The LM head is the embedding table (no separate `head` / lm_head.weight). */
  readonly tiedEmbeddings: boolean;
  readonly maxPositions: number;
  readonly bosId: number | null;
  /** Possibly several (Llama-3 instruct lists three); empty when the checkpoint names none. */
  readonly eosIds: readonly number[];
}

/** What a preset or a user writes: headDim may be left out (derived). */
export type LlamaConfigInput = Omit<LlamaConfig, "headDim"> & { readonly headDim?: number };

export class LlamaConfigError extends Error {
  override name = "LlamaConfigError";
}

const CONFIG_KEYS: readonly (keyof LlamaConfig)[] = [
  "dim",
  "layers",
  "heads",
  "kvHeads",
  "headDim",
  "ffn",
  "vocab",
  "normEps",
  "ropeTheta",
  "ropeScaling",
  "tiedEmbeddings",
  "maxPositions",
  "bosId",
  "eosIds",
];

// ---------------------------------------------------------------------------------------------------
// Validation

export type Field = keyof LlamaConfig | `ropeScaling.${string}`;

/**
 * How a field is named in an error: `at` gives the full location ("preset tiny: kvHeads",
 * "x/config.json: field num_key_value_heads"), `label` the bare name used inside a message.
 */
export interface FieldNamer {
  at(field: Field): string;
  label(field: Field): string;
}

const ourNames = (where: string): FieldNamer => ({ at: (field) => `${where}: ${field}`, label: (field) => field });

function fail(name: string, message: string): never {
  throw new LlamaConfigError(`${name} ${message}`);
}

function positiveInt(v: unknown, name: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) fail(name, `must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

export function positiveFinite(v: unknown, name: string): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) fail(name, `must be a positive finite number, got ${JSON.stringify(v)}`);
  return v;
}

function tokenId(v: unknown, vocab: number, name: string, label: FieldNamer["label"]): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v >= vocab) {
    fail(name, `must be a token id in [0, ${vocab}) (${label("vocab")}), got ${JSON.stringify(v)}`);
  }
  return v;
}

function validateRopeScaling(s: unknown, names: FieldNamer): RopeScaling | null {
  const name = names.at;
  if (s === null) return null;
  if (typeof s !== "object" || (s as { type?: unknown }).type !== "llama3") {
    fail(name("ropeScaling"), `must be null or { type: "llama3", ... }, got ${JSON.stringify(s)}`);
  }
  const r = s as Record<string, unknown>;
  for (const k of Object.keys(r)) {
    if (!["type", "factor", "lowFreqFactor", "highFreqFactor", "originalMaxPositions"].includes(k))
      fail(name(`ropeScaling.${k}`), "is not a field of the llama3 RoPE scaling");
  }
  const factor = positiveFinite(r.factor, name("ropeScaling.factor"));
  if (factor < 1) fail(name("ropeScaling.factor"), `must be >= 1 (it divides the low frequencies), got ${factor}`);
  const lowFreqFactor = positiveFinite(r.lowFreqFactor, name("ropeScaling.lowFreqFactor"));
  const highFreqFactor = positiveFinite(r.highFreqFactor, name("ropeScaling.highFreqFactor"));
  if (!(highFreqFactor > lowFreqFactor)) {
    fail(
      name("ropeScaling.highFreqFactor"),
      `must exceed ${names.label("ropeScaling.lowFreqFactor")} (${lowFreqFactor}) (the blend divides by their difference), got ${highFreqFactor}`,
    );
  }
  const originalMaxPositions = positiveInt(r.originalMaxPositions, name("ropeScaling.originalMaxPositions"));
  return { type: "llama3", factor, lowFreqFactor, highFreqFactor, originalMaxPositions };
}

/** Checks every field and derives headDim; `names` says how a field is called in an error. */
export function resolveLlamaConfig(input: LlamaConfigInput, names: FieldNamer): LlamaConfig {
  const { at: name, label } = names;
  const dim = positiveInt(input.dim, name("dim"));
  const layers = positiveInt(input.layers, name("layers"));
  const heads = positiveInt(input.heads, name("heads"));
  const kvHeads = positiveInt(input.kvHeads, name("kvHeads"));
  if (heads % kvHeads !== 0)
    fail(name("kvHeads"), `(${kvHeads}) must divide ${label("heads")} (${heads}): each K/V head serves a whole group of query heads`);
  let headDim: number;
  if (input.headDim === undefined) {
    if (dim % heads !== 0) fail(name("heads"), `(${heads}) must divide ${label("dim")} (${dim}) when ${label("headDim")} is not given`);
    headDim = dim / heads;
  } else {
    headDim = positiveInt(input.headDim, name("headDim"));
  }
  if (headDim % 2 !== 0) fail(name("headDim"), `must be even (rotate-half RoPE pairs its two halves), got ${headDim}`);
  const ffn = positiveInt(input.ffn, name("ffn"));
  const vocab = positiveInt(input.vocab, name("vocab"));
  const normEps = positiveFinite(input.normEps, name("normEps"));
  const ropeTheta = positiveFinite(input.ropeTheta, name("ropeTheta"));
  if (ropeTheta <= 1) fail(name("ropeTheta"), `must exceed 1 (frequencies theta^(-2j/D) must fall), got ${ropeTheta}`);
  const ropeScaling = validateRopeScaling(input.ropeScaling, names);
  if (typeof input.tiedEmbeddings !== "boolean")
    fail(name("tiedEmbeddings"), `must be true or false, got ${JSON.stringify(input.tiedEmbeddings)}`);
  const maxPositions = positiveInt(input.maxPositions, name("maxPositions"));
  const bosId = input.bosId === null ? null : tokenId(input.bosId, vocab, name("bosId"), label);
  if (!Array.isArray(input.eosIds)) fail(name("eosIds"), `must be a list of token ids, got ${JSON.stringify(input.eosIds)}`);
  const eosIds = Object.freeze(input.eosIds.map((id) => tokenId(id, vocab, name("eosIds"), label)));
  return Object.freeze({
    dim,
    layers,
    heads,
    kvHeads,
    headDim,
    ffn,
    vocab,
    normEps,
    ropeTheta,
    ropeScaling: ropeScaling === null ? null : Object.freeze(ropeScaling),
    tiedEmbeddings: input.tiedEmbeddings,
    maxPositions,
    bosId,
    eosIds,
  });
}

/** Validates a full config input (headDim optional) and returns the frozen, resolved config. */
export function makeLlamaConfig(input: LlamaConfigInput, where = "LlamaConfig"): LlamaConfig {
  if (typeof input !== "object" || input === null) throw new LlamaConfigError(`${where}: expected an object, got ${JSON.stringify(input)}`);
  for (const k of Object.keys(input)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) {
      throw new LlamaConfigError(`${where}: unknown field ${JSON.stringify(k)}; the fields are ${CONFIG_KEYS.join(", ")}`);
    }
  }
  return resolveLlamaConfig(input, ourNames(where));
}

// ---------------------------------------------------------------------------------------------------
// Presets

const LLAMA3_SCALING_8B: Llama3RopeScaling = { type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };
const LLAMA3_SCALING_3_2: Llama3RopeScaling = {
  type: "llama3",
  factor: 32,
  lowFreqFactor: 1,
  highFreqFactor: 4,
  originalMaxPositions: 8192,
};

const PRESETS = {
  /**
   * Trains on 2 CPU cores: ~1.2M layer parameters, the Llama-2 tokenizer's 32000-token vocabulary
   * (the LM head GEMM dominates its step), GQA with 2 query heads per K/V head. Heads of 64: the GPU
   * attention kernels (ours and cuDNN) take head sizes 64 and 128, so the same preset runs on a GPU.
   */
  tiny: {
    dim: 256,
    layers: 4,
    heads: 4,
    kvHeads: 2,
    ffn: 768,
    vocab: 32000,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tiedEmbeddings: false,
    maxPositions: 4096,
    bosId: 1,
    eosIds: [2],
  },
  /** TinyLlama-1.1B: Llama-2 architecture and tokenizer, GQA 32/4; 1.10B parameters. */
  "tinyllama-1.1b": {
    dim: 2048,
    layers: 22,
    heads: 32,
    kvHeads: 4,
    ffn: 5632,
    vocab: 32000,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tiedEmbeddings: false,
    maxPositions: 2048,
    bosId: 1,
    eosIds: [2],
  },
  /** meta-llama/Llama-3.2-1B: 1.24B parameters, tied embeddings. */
  "llama3.2-1b": {
    dim: 2048,
    layers: 16,
    heads: 32,
    kvHeads: 8,
    headDim: 64,
    ffn: 8192,
    vocab: 128256,
    normEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: LLAMA3_SCALING_3_2,
    tiedEmbeddings: true,
    maxPositions: 131072,
    bosId: 128000,
    eosIds: [128001],
  },
  /** meta-llama/Llama-3.2-3B: 3.21B parameters, tied embeddings. */
  "llama3.2-3b": {
    dim: 3072,
    layers: 28,
    heads: 24,
    kvHeads: 8,
    headDim: 128,
    ffn: 8192,
    vocab: 128256,
    normEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: LLAMA3_SCALING_3_2,
    tiedEmbeddings: true,
    maxPositions: 131072,
    bosId: 128000,
    eosIds: [128001],
  },
  /** meta-llama/Llama-2-7b-hf: 6.74B parameters. */
  "llama2-7b": {
    dim: 4096,
    layers: 32,
    heads: 32,
    kvHeads: 32,
    ffn: 11008,
    vocab: 32000,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tiedEmbeddings: false,
    maxPositions: 4096,
    bosId: 1,
    eosIds: [2],
  },
  /** meta-llama/Llama-3.1-8B: 8.03B parameters, Llama-3 RoPE scaling to 128K positions. */
  "llama3-8b": {
    dim: 4096,
    layers: 32,
    heads: 32,
    kvHeads: 8,
    ffn: 14336,
    vocab: 128256,
    normEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: LLAMA3_SCALING_8B,
    tiedEmbeddings: false,
    maxPositions: 131072,
    bosId: 128000,
    eosIds: [128001],
  },
} as const satisfies Record<string, LlamaConfigInput>;

export type LlamaPresetName = keyof typeof PRESETS;
export const LLAMA_PRESETS: readonly LlamaPresetName[] = Object.keys(PRESETS) as LlamaPresetName[];

/**
 * A named preset with optional overrides (unknown keys and unknown presets are errors). headDim is
 * re-derived from the overridden dim/heads unless the preset or the override states it.
 */
export function llamaPreset(name: string, overrides: Partial<LlamaConfigInput> = {}): LlamaConfig {
  if (!Object.hasOwn(PRESETS, name)) {
    throw new LlamaConfigError(`unknown Llama preset ${JSON.stringify(name)}; the presets are ${LLAMA_PRESETS.join(", ")}`);
  }
  const base: LlamaConfigInput = PRESETS[name as LlamaPresetName];
  for (const k of Object.keys(overrides)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) {
      throw new LlamaConfigError(`preset ${name} override: unknown field ${JSON.stringify(k)}; the fields are ${CONFIG_KEYS.join(", ")}`);
    }
  }
  return makeLlamaConfig({ ...base, ...overrides } as LlamaConfigInput, `preset ${name}`);
}

// ---------------------------------------------------------------------------------------------------
// Parameter count

export interface LlamaParamCount {
  /** embed [V, C]. */
  readonly embed: number;
  /** One decoder layer: attnNorm + wq + wk + wv + wo + mlpNorm + wGate + wUp + wDown. */
  readonly perLayer: number;
  readonly finalNorm: number;
  /** head [V, C]; 0 when tied. */
  readonly head: number;
  readonly total: number;
}

export function llamaParamCount(cfg: LlamaConfig): LlamaParamCount {
  const { dim: C, heads: Hq, kvHeads: Hkv, headDim: D, ffn: F, vocab: V } = cfg;
  const attention = Hq * D * C + 2 * Hkv * D * C + C * Hq * D;
  const mlp = 3 * F * C;
  const perLayer = 2 * C + attention + mlp;
  const embed = V * C;
  const head = cfg.tiedEmbeddings ? 0 : V * C;
  return { embed, perLayer, finalNorm: C, head, total: embed + cfg.layers * perLayer + C + head };
}
