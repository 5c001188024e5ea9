// The trainer's configuration: one typed object, built from a run preset, then an optional JSON config
// file, then command-line flags (each layer overrides the one before). Every key is described once in
// FIELDS (type, flag, help); the config file and the flags are checked against that one table, so an
// unknown key or a value of the wrong type is an error naming the key and what was expected.
//
// Model names belong to @lightseq/llama (packages/llama/src/config.ts): here a model is a string that
// `resolveConfig` hands to the `validateModel` hook, which the training loop wires to that module.

import { parsePolicy } from "@lightseq/checkpointing";

export const POLICIES = ["auto", "none", "full", "remat-aware"] as const;
/**
 * Activation checkpointing policy (DESIGN.md section 6): `auto` lets the memory estimator choose, a
 * name gives every layer that policy, and a mix gives runs of layers their own, layer 0 first
 * (`remat-aware*8,none*24`: @lightseq/checkpointing parsePolicy; its total is checked against the model).
 */
export type Policy = string;

export const OPTIMIZERS = ["auto", "device", "host"] as const;
/**
 * Where the fp32 master weights and AdamW moments live on a GPU: sharded in device memory, or in
 * pinned host memory streamed through the GPU (issue 14); `auto` takes the device when the memory
 * estimator says they fit beside the activations. CPU ranks keep them in their own memory.
 */
export type OptimizerPlace = (typeof OPTIMIZERS)[number];

export const ATTENTIONS = ["auto", "cudnn", "cuda"] as const;
/**
 * GPU ranks' attention blocks (@lightseq/attention selectAttentionBackend): `auto` takes cuDNN when it
 * is present (the fastest), `cudnn` insists on it, `cuda` runs our flash-attention kernels. By default
 * neither GPU backward is deterministic (dQ is accumulated with f32 atomics), so two GPU runs agree to
 * run-to-run noise, not to the bit; `deterministic` asks cuDNN for its deterministic backward (our
 * kernels have none: refused). CPU ranks use the reference, which is deterministic.
 */
export type AttentionChoice = (typeof ATTENTIONS)[number];

export const UPDATES = ["after-backward", "per-layer"] as const;
/**
 * When AdamW runs: after the whole backward (the clip uses this step's global gradient norm; every
 * gradient shard waits for it), or per layer, right after each layer's gradient is reduced (the
 * update overlaps the rest of the backward and no whole-model gradient is kept; the clip uses the
 * previous step's norm, step 1 is unclipped: AdamW's first update is scale-free). One sequence per
 * replica and step.
 */
export type UpdateMode = (typeof UPDATES)[number];

export interface TrainConfig {
  /** Run preset the other values started from. */
  preset: string;
  /** Model preset name, owned by @lightseq/llama (tiny, llama2-7b, llama3-8b, ...). */
  model: string;
  /** Tokens per sequence. */
  seq: number;
  /** Optimizer steps to reach (a resumed run continues up to this step). */
  steps: number;
  /** Sequence-parallel degree; the other nprocs / cp ranks are data-parallel replicas. */
  cp: number;
  /** Ranks in all (one per GPU on a GPU machine, CPU processes otherwise). */
  nprocs: number;
  /** Sequences per optimizer step (global batch), reached by gradient accumulation. */
  batch: number;
  /** Peak learning rate, reached after `warmup` steps, then cosine decay to `minLr` at `steps`. */
  lr: number;
  warmup: number;
  minLr: number;
  /**
   * Steps of the warmup + cosine schedule: the preset's run length. `--steps` only says where this run
   * stops, so a run split in parts (`--steps 20`, then `--resume --steps 30`) follows the same schedule
   * as the run in one go; past decaySteps the rate stays at minLr.
   */
  decaySteps: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Global gradient-norm clip; 0 disables clipping. */
  gradClip: number;
  policy: Policy;
  optimizer: OptimizerPlace;
  attention: AttentionChoice;
  /** GPU ranks: cuDNN's deterministic attention backward, so runs repeat to the bit (not with attention cuda). */
  deterministic: boolean;
  update: UpdateMode;
  /** Text, JSONL or parquet files or a folder of them; null: the shipped Brown corpus. */
  data: string | null;
  /** A tokenizer.json; null: the shipped Llama-2 tokenizer. */
  tokenizer: string | null;
  /** Run folder: metrics.jsonl, loss.png, snapshots/, hf/. */
  out: string;
  /** Continue from the newest complete snapshot in out/snapshots. */
  resume: boolean;
  /** A Hugging Face checkpoint folder (config.json + safetensors) to start from. */
  initFrom: string | null;
  seed: number;
  /** Write a snapshot every this many steps (and at the end); 0: only at the end. */
  snapshotEvery: number;
  /** Snapshots kept; older ones are deleted once a newer one is complete. */
  keepSnapshots: number;
  /** Write snapshots at all (a 7B state is 108 GB: more than some disks hold). */
  snapshots: boolean;
  /** Write DIR/hf (Hugging Face config.json + safetensors) at the end. */
  export: boolean;
  /** Time every step's phases and layers (src/profile.ts): a block after each step line, DIR/profile.jsonl. */
  profile: boolean;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

type Kind =
  | { t: "int"; min: number }
  | { t: "number"; min: number; max?: number }
  | { t: "string" }
  | { t: "path?" }
  | { t: "bool" }
  | { t: "enum"; values: readonly string[] }
  | { t: "policy" };

/** The kinds a key of TypeScript type V may have (a boolean key cannot be given an integer kind, ...). */
type KindFor<V> = [V] extends [boolean]
  ? Extract<Kind, { t: "bool" }>
  : [V] extends [number]
    ? Extract<Kind, { t: "int" | "number" }>
    : [V] extends [number | null]
      ? Extract<Kind, { t: "int?" }>
      : [V] extends [string]
        ? Extract<Kind, { t: "string" | "enum" | "policy" }>
        : [V] extends [string | null]
          ? Extract<Kind, { t: "path?" }>
          : never;

interface Field<V = unknown> {
  kind: KindFor<V>;
  /** Command-line flag, without the leading dashes. */
  flag: string;
  help: string;
  /** The name --help shows for the flag's value (e.g. N, PATH). */
  meta?: string;
}

export const FIELDS: { readonly [K in keyof TrainConfig]: Field<TrainConfig[K]> } = {
  preset: { kind: { t: "string" }, flag: "preset", meta: "NAME", help: "run preset (its values are the defaults shown)" },
  model: { kind: { t: "string" }, flag: "model", meta: "NAME", help: "model preset of @lightseq/llama (tiny, llama2-7b, llama3-8b, ...)" },
  seq: { kind: { t: "int", min: 2 }, flag: "seq", meta: "N", help: "tokens per sequence (suffix K = 1024: 32K)" },
  steps: { kind: { t: "int", min: 1 }, flag: "steps", meta: "N", help: "optimizer steps" },
  cp: { kind: { t: "int", min: 1 }, flag: "cp", meta: "N", help: "sequence-parallel degree (nprocs / cp ranks are data-parallel)" },
  nprocs: { kind: { t: "int", min: 1 }, flag: "nprocs", meta: "N", help: "ranks (one per GPU; CPU processes without a GPU)" },
  batch: { kind: { t: "int", min: 1 }, flag: "batch", meta: "N", help: "sequences per step (gradient accumulation)" },
  lr: { kind: { t: "number", min: 0 }, flag: "lr", meta: "X", help: "peak learning rate" },
  warmup: { kind: { t: "int", min: 0 }, flag: "warmup", meta: "N", help: "linear warmup steps" },
  minLr: { kind: { t: "number", min: 0 }, flag: "min-lr", meta: "X", help: "learning rate at the end of the cosine decay" },
  decaySteps: {
    kind: { t: "int", min: 1 },
    flag: "decay-steps",
    meta: "N",
    help: "steps of the warmup + cosine schedule (--steps only says where to stop)",
  },
  weightDecay: {
    kind: { t: "number", min: 0 },
    flag: "weight-decay",
    meta: "X",
    help: "AdamW decoupled weight decay (not on norms, embeddings)",
  },
  beta1: { kind: { t: "number", min: 0, max: 0.999999 }, flag: "beta1", meta: "X", help: "AdamW beta1" },
  beta2: { kind: { t: "number", min: 0, max: 0.999999 }, flag: "beta2", meta: "X", help: "AdamW beta2" },
  eps: { kind: { t: "number", min: 0 }, flag: "eps", meta: "X", help: "AdamW epsilon" },
  gradClip: { kind: { t: "number", min: 0 }, flag: "grad-clip", meta: "X", help: "clip the global gradient norm to this (0: off)" },
  policy: {
    kind: { t: "policy" },
    flag: "policy",
    meta: "NAME",
    help: `activation checkpointing (${POLICIES.join(", ")}, or per layer: remat-aware*8,none*24; skip keeps nothing, not on layer 0: "(full,skip)*16")`,
  },
  attention: {
    kind: { t: "enum", values: ATTENTIONS },
    flag: "attention",
    meta: "BACKEND",
    help: "GPU attention blocks: auto (cuDNN when present), cudnn, or cuda (our kernels)",
  },
  deterministic: {
    kind: { t: "bool" },
    flag: "deterministic",
    help: "GPU: cuDNN's deterministic attention backward, so runs repeat to the bit (slower; not with --attention cuda); CPU ranks are deterministic already",
  },
  optimizer: {
    kind: { t: "enum", values: OPTIMIZERS },
    flag: "optimizer",
    meta: "WHERE",
    help: "GPU: AdamW state on the device or in pinned host memory (auto: the estimator decides)",
  },
  update: {
    kind: { t: "enum", values: UPDATES },
    flag: "update",
    meta: "WHEN",
    help: "AdamW after the whole backward (clip by this step's norm) or per layer during it (clip by the previous step's norm)",
  },
  data: { kind: { t: "path?" }, flag: "data", meta: "PATH", help: "text/JSONL/parquet file or folder (default: the shipped Brown corpus)" },
  tokenizer: {
    kind: { t: "path?" },
    flag: "tokenizer",
    meta: "PATH",
    help: "tokenizer.json, or a folder with one (default: the shipped Llama-2 tokenizer)",
  },
  out: { kind: { t: "string" }, flag: "out", meta: "DIR", help: "run folder (metrics.jsonl, loss.png, snapshots/, hf/)" },
  resume: { kind: { t: "bool" }, flag: "resume", help: "continue from the newest complete snapshot in DIR/snapshots" },
  initFrom: { kind: { t: "path?" }, flag: "init-from", meta: "DIR", help: "start from a Hugging Face checkpoint folder" },
  seed: { kind: { t: "int", min: 0 }, flag: "seed", meta: "N", help: "seed of the initialization and the data order" },
  snapshotEvery: {
    kind: { t: "int", min: 0 },
    flag: "snapshot-every",
    meta: "N",
    help: "snapshot every N steps and at the end (0: end only)",
  },
  keepSnapshots: { kind: { t: "int", min: 1 }, flag: "keep-snapshots", meta: "N", help: "complete snapshots kept" },
  snapshots: {
    kind: { t: "bool" },
    flag: "snapshots",
    help: "write snapshots (every --snapshot-every steps, at the end, on SIGINT/SIGTERM); --snapshots=false: none",
  },
  export: { kind: { t: "bool" }, flag: "export", help: "write DIR/hf (Hugging Face config.json + safetensors) at the end" },
  profile: {
    kind: { t: "bool" },
    flag: "profile",
    help: "time each step's phases and layers (CUDA events on GPUs, host clock on CPUs): a block per step, DIR/profile.jsonl",
  },
};

export const CONFIG_KEYS = Object.keys(FIELDS) as (keyof TrainConfig)[];

/** What the defaults depend on: the machine. */
export interface Machine {
  gpus: number;
}

/** A run preset: a function of the machine returning a complete config. */
export type Preset = (m: Machine) => TrainConfig;

const common = {
  warmup: 10,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  gradClip: 1.0,
  policy: "auto",
  optimizer: "auto",
  attention: "auto",
  deterministic: false,
  update: "after-backward",
  data: null,
  tokenizer: null,
  resume: false,
  initFrom: null,
  seed: 1234,
  keepSnapshots: 2,
  snapshots: true,
  export: true,
  profile: false,
} as const satisfies Partial<TrainConfig>;

export const PRESETS: Readonly<Record<string, Preset>> = {
  /** The default: a small Llama on the shipped corpus; 2 CPU ranks (cp=2) without a GPU, one rank per GPU otherwise. */
  tiny: (m) => ({
    ...common,
    preset: "tiny",
    model: "tiny",
    seq: 256,
    steps: 150,
    decaySteps: 150,
    cp: m.gpus > 0 ? m.gpus : 2,
    nprocs: m.gpus > 0 ? m.gpus : 2,
    batch: 1,
    lr: 3e-3,
    warmup: 10,
    minLr: 3e-4,
    out: "runs/tiny",
    snapshotEvery: 50,
  }),
  /** Llama-2-7B at 32K tokens, one rank per GPU, all sequence-parallel. */
  "llama2-7b-32k": (m) => ({
    ...common,
    preset: "llama2-7b-32k",
    model: "llama2-7b",
    update: "per-layer",
    warmup: 5,
    seq: 32768,
    steps: 20,
    decaySteps: 20,
    cp: Math.max(m.gpus, 1),
    nprocs: Math.max(m.gpus, 1),
    batch: 1,
    lr: 3e-4,
    minLr: 3e-5,
    out: "runs/llama2-7b-32k",
    snapshotEvery: 0,
    keepSnapshots: 1,
  }),
  /** Llama-3-8B at 32K tokens (GQA, 128K vocabulary), one rank per GPU. */
  "llama3-8b-32k": (m) => ({
    ...common,
    preset: "llama3-8b-32k",
    model: "llama3-8b",
    update: "per-layer",
    warmup: 5,
    seq: 32768,
    steps: 20,
    decaySteps: 20,
    cp: Math.max(m.gpus, 1),
    nprocs: Math.max(m.gpus, 1),
    batch: 1,
    lr: 3e-4,
    minLr: 3e-5,
    out: "runs/llama3-8b-32k",
    snapshotEvery: 0,
    keepSnapshots: 1,
  }),
};

export function defaultPreset(_m: Machine): string {
  return "tiny";
}

const SUFFIX: Record<string, number> = { k: 1024, K: 1024, m: 1024 * 1024, M: 1024 * 1024 };

function expected(k: Kind): string {
  switch (k.t) {
    case "int":
      return `an integer >= ${k.min}`;
    case "number":
      return k.max === undefined ? `a number >= ${k.min}` : `a number in [${k.min}, ${k.max}]`;
    case "string":
      return "a non-empty string";
    case "path?":
      return "a path (or null)";
    case "bool":
      return "true or false";
    case "enum":
      return `one of ${k.values.join(", ")}`;
    case "policy":
      return `auto, ${POLICIES.slice(1).join(", ")} or runs of them (remat-aware*8,none*24)`;
  }
}

/** Checks a value from a config file (JSON types) against the key's kind; `where` names the source. */
export function checkValue(key: keyof TrainConfig, v: unknown, where: string): unknown {
  const { kind } = FIELDS[key];
  const bad = () => new ConfigError(`${where}: "${key}" must be ${expected(kind)}, got ${JSON.stringify(v)}`);
  switch (kind.t) {
    case "int":
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < kind.min) throw bad();
      return v;
    case "number":
      if (typeof v !== "number" || !Number.isFinite(v) || v < kind.min || (kind.max !== undefined && v > kind.max)) throw bad();
      return v;
    case "string":
      if (typeof v !== "string" || v === "") throw bad();
      return v;
    case "path?":
      if (v !== null && (typeof v !== "string" || v === "")) throw bad();
      return v;
    case "bool":
      if (typeof v !== "boolean") throw bad();
      return v;
    case "enum":
      if (typeof v !== "string" || !kind.values.includes(v)) throw bad();
      return v;
    case "policy":
      if (typeof v !== "string") throw bad();
      if (v !== "auto") {
        try {
          parsePolicy(v);
        } catch (e) {
          throw new ConfigError(`${where}: "${key}": ${(e as Error).message}`);
        }
      }
      return v;
  }
}

/** Parses a flag's text into the key's type (`32K` = 32768 for integers), then checks it. */
export function parseFlagValue(key: keyof TrainConfig, text: string): unknown {
  const { kind, flag } = FIELDS[key];
  const where = `--${flag}`;
  switch (kind.t) {
    case "int": {
      const m = /^(\d+)([kKmM]?)$/.exec(text);
      const v = m ? Number(m[1]) * (m[2] ? (SUFFIX[m[2]] as number) : 1) : Number.NaN;
      if (!m) throw new ConfigError(`${where}: expected ${expected(kind)}, got "${text}"`);
      return checkFlag(key, v, text);
    }
    case "number": {
      const v = text.trim() === "" ? Number.NaN : Number(text);
      if (!Number.isFinite(v)) throw new ConfigError(`${where}: expected ${expected(kind)}, got "${text}"`);
      return checkFlag(key, v, text);
    }
    case "bool":
      if (text === "true") return true;
      if (text === "false") return false;
      throw new ConfigError(`${where}: expected true or false, got "${text}"`);
    case "path?":
      return text === "" ? null : text;
    case "policy":
      if (text === "auto") return text;
      try {
        parsePolicy(text);
      } catch (e) {
        throw new ConfigError(`${where}: ${(e as Error).message}`);
      }
      return text;
    default:
      return checkFlag(key, text, text);
  }
}

function checkFlag(key: keyof TrainConfig, v: unknown, text: string): unknown {
  try {
    return checkValue(key, v, "flags");
  } catch {
    throw new ConfigError(`--${FIELDS[key].flag}: expected ${expected(FIELDS[key].kind)}, got "${text}"`);
  }
}

/** A config file's object: every key must be a TrainConfig key with a value of its type. */
export function parseConfigObject(obj: unknown, where: string): Partial<TrainConfig> {
  if (typeof obj !== "object" || obj === null || Array.isArray(obj))
    throw new ConfigError(`${where}: expected a JSON object of config keys`);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    if (!(k in FIELDS)) throw new ConfigError(`${where}: unknown key "${k}" (known: ${CONFIG_KEYS.join(", ")})`);
    out[k] = checkValue(k as keyof TrainConfig, v, where);
  }
  return out as Partial<TrainConfig>;
}

/** Reads a JSON config file; a missing file or bad JSON is one line naming the file. */
export async function readConfigFile(path: string): Promise<Partial<TrainConfig>> {
  const f = Bun.file(path);
  if (!(await f.exists())) throw new ConfigError(`config file ${path}: not found`);
  let obj: unknown;
  try {
    obj = JSON.parse(await f.text());
  } catch (e) {
    throw new ConfigError(`config file ${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseConfigObject(obj, `config file ${path}`);
}

/** The hook that checks a model name against @lightseq/llama's presets (wired by the training loop). */
export type ModelValidator = (name: string) => void;

export interface Sources {
  machine: Machine;
  /** From the config file, already checked. */
  file?: Partial<TrainConfig>;
  /** From the flags, already checked. */
  flags?: Partial<TrainConfig>;
  validateModel?: ModelValidator;
}

/** Preset, then file, then flags; then the checks between keys. */
export function resolveConfig(s: Sources): TrainConfig {
  const presetName = s.flags?.preset ?? s.file?.preset ?? defaultPreset(s.machine);
  const preset = PRESETS[presetName];
  if (!preset) throw new ConfigError(`unknown preset "${presetName}" (known: ${Object.keys(PRESETS).join(", ")})`);
  const cfg: TrainConfig = { ...preset(s.machine), ...s.file, ...s.flags, preset: presetName };
  checkConsistency(cfg, s.machine);
  s.validateModel?.(cfg.model);
  return cfg;
}

/** Data-parallel replicas and micro-batches per replica of a config. */
export function meshOf(cfg: TrainConfig): { cp: number; dp: number; microBatches: number } {
  const dp = cfg.nprocs / cfg.cp;
  return { cp: cfg.cp, dp, microBatches: cfg.batch / dp };
}

export function checkConsistency(cfg: TrainConfig, m: Machine): void {
  if (cfg.nprocs % cfg.cp !== 0)
    throw new ConfigError(`--cp ${cfg.cp} must divide --nprocs ${cfg.nprocs} (the other ranks are data-parallel)`);
  const dp = cfg.nprocs / cfg.cp;
  if (cfg.batch % dp !== 0)
    throw new ConfigError(
      `--batch ${cfg.batch} must be a multiple of the data-parallel degree ${dp} (nprocs ${cfg.nprocs} / cp ${cfg.cp})`,
    );
  if (cfg.seq < 2 * cfg.cp)
    throw new ConfigError(`--seq ${cfg.seq} is too short for --cp ${cfg.cp}: each rank needs 2 chunks of at least 1 token`);
  if (m.gpus > 0 && cfg.nprocs > m.gpus) throw new ConfigError(`--nprocs ${cfg.nprocs} is more than the ${m.gpus} GPUs of this machine`);
  if (cfg.update === "per-layer" && cfg.batch !== dp)
    throw new ConfigError(
      `--update per-layer updates each layer from one sequence per replica: --batch must be ${dp} (the data-parallel degree), got ${cfg.batch}; use --update after-backward to accumulate`,
    );
  if (cfg.minLr > cfg.lr) throw new ConfigError(`--min-lr ${cfg.minLr} is above --lr ${cfg.lr}`);
  if (cfg.warmup > cfg.decaySteps)
    throw new ConfigError(`--warmup ${cfg.warmup} is longer than the schedule (--decay-steps ${cfg.decaySteps})`);
  if (cfg.deterministic && cfg.attention === "cuda")
    throw new ConfigError(
      "--deterministic with --attention cuda: our flash-attention kernels sum dQ with f32 atomics (kernels/src/attention_kernels.cuh), so their backward is not deterministic; use --attention cudnn or auto",
    );
  if (cfg.resume && cfg.initFrom !== null)
    throw new ConfigError("--resume and --init-from exclude each other: a snapshot already holds the weights");
}

/** The resolved config as aligned `key  value` lines, with the mesh it implies. */
export function formatConfig(cfg: TrainConfig): string {
  const { dp, microBatches } = meshOf(cfg);
  const rows: [string, string][] = CONFIG_KEYS.map((k) => [k, JSON.stringify(cfg[k])]);
  rows.push(["mesh", `cp ${cfg.cp} x dp ${dp}, ${microBatches} micro-batch(es) per rank and step`]);
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join("\n");
}
