// Model parameters: one flat buffer per decoder layer (what ZeRO shards and gathers), typed views
// into it, the non-layer parameters, and the seeded initialization.
//
// A layer's flat buffer, in this order (llama-contract.md; weights [out, in] as HF stores them):
//   attnNorm [C] | wq [Hq*D, C] | wk [Hkv*D, C] | wv [Hkv*D, C] | wo [C, Hq*D] | mlpNorm [C] |
//   wGate [F, C] | wUp [F, C] | wDown [C, F]
// so wq|wk|wv is one [(Hq + 2 Hkv) D, C] matrix (one QKV GEMM) and wGate|wUp one [2F, C] (one GEMM).
// Non-layer: embed [V, C], finalNorm [C], head [V, C] (absent when the embeddings are tied).
//
// Initialization (Hugging Face's Llama init: normal(0, 0.02) for every matrix, norms at 1) draws from
// the counter-based generator (tensor/src/rng.ts) with a fixed counter range per parameter, laid out
// as if every parameter sat in one global buffer:
//   embed | layer 0 | layer 1 | ... | layer L-1 | finalNorm | head
// Element e of that buffer uses counter e, so the values do not depend on the device (CPU and CUDA
// give identical bits), on the number of ranks, or on which rank generates which part; and a layer's
// weights do not depend on how many layers follow it. Norm elements keep their counters unused.

import { type DeviceLike, type DType, empty, fill, fromArray, randn, type Tensor, TensorError, zeros } from "@lightseq/tensor";
import type { LlamaConfig } from "./config.ts";

export const LAYER_PARAMS = ["attnNorm", "wq", "wk", "wv", "wo", "mlpNorm", "wGate", "wUp", "wDown"] as const;
export type LayerParamName = (typeof LAYER_PARAMS)[number];

export interface ParamEntry {
  name: LayerParamName;
  shape: readonly number[];
  /** First element inside the layer's flat buffer. */
  offset: number;
  numel: number;
  /** Norm weights start at 1, matrices at normal(0, std). */
  init: "ones" | "normal";
}

export interface LayerLayout {
  entries: readonly ParamEntry[];
  /** Elements of one layer's flat buffer. */
  numel: number;
}

/** Where each parameter of a layer sits in its flat buffer. */
export function layerLayout(cfg: LlamaConfig): LayerLayout {
  const { dim: C, heads: Hq, kvHeads: Hkv, headDim: D, ffn: F } = cfg;
  const shapes: [LayerParamName, number[]][] = [
    ["attnNorm", [C]],
    ["wq", [Hq * D, C]],
    ["wk", [Hkv * D, C]],
    ["wv", [Hkv * D, C]],
    ["wo", [C, Hq * D]],
    ["mlpNorm", [C]],
    ["wGate", [F, C]],
    ["wUp", [F, C]],
    ["wDown", [C, F]],
  ];
  let offset = 0;
  const entries = shapes.map(([name, shape]) => {
    const numel = shape.reduce((a, b) => a * b, 1);
    const e: ParamEntry = { name, shape, offset, numel, init: shape.length === 1 ? "ones" : "normal" };
    offset += numel;
    return e;
  });
  return { entries, numel: offset };
}

/** Views of one layer's weights (or gradients); wqkv and wGateUp cover their parts' rows. */
export interface LayerWeights {
  attnNorm: Tensor;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  /** [(Hq + 2 Hkv) D, C]: rows q | k | v. */
  wqkv: Tensor;
  wo: Tensor;
  mlpNorm: Tensor;
  wGate: Tensor;
  wUp: Tensor;
  /** [2F, C]: rows gate | up. */
  wGateUp: Tensor;
  wDown: Tensor;
}

export interface NonLayerWeights {
  embed: Tensor;
  finalNorm: Tensor;
  /** The LM head [V, C]; the embedding tensor itself when tied. */
  head: Tensor;
}

/** elements [offset, offset + numel(shape)) of a 1-D tensor, as `shape`. */
function viewOf(flat: Tensor, offset: number, shape: readonly number[]): Tensor {
  const n = flat.narrow(
    offset,
    shape.reduce((a, b) => a * b, 1),
  );
  const v = n.reshape(shape);
  n.dispose();
  return v;
}

/** Typed views into one layer's flat buffer (1-D, layerLayout(cfg).numel elements). Dispose with disposeLayerViews. */
export function layerViews(flat: Tensor, cfg: LlamaConfig): LayerWeights {
  const layout = layerLayout(cfg);
  if (flat.rank !== 1 || flat.numel !== layout.numel) {
    throw new TensorError(`layer weights: expected a flat [${layout.numel}] buffer for this config, got ${flat.describe()}`);
  }
  const at = Object.fromEntries(layout.entries.map((e) => [e.name, e])) as Record<LayerParamName, ParamEntry>;
  const v = (name: LayerParamName) => viewOf(flat, at[name].offset, at[name].shape);
  const { dim: C, heads: Hq, kvHeads: Hkv, headDim: D, ffn: F } = cfg;
  return {
    attnNorm: v("attnNorm"),
    wq: v("wq"),
    wk: v("wk"),
    wv: v("wv"),
    wqkv: viewOf(flat, at.wq.offset, [(Hq + 2 * Hkv) * D, C]),
    wo: v("wo"),
    mlpNorm: v("mlpNorm"),
    wGate: v("wGate"),
    wUp: v("wUp"),
    wGateUp: viewOf(flat, at.wGate.offset, [2 * F, C]),
    wDown: v("wDown"),
  };
}

export function disposeLayerViews(w: LayerWeights): void {
  for (const t of Object.values(w)) t.dispose();
}

/** Every parameter of a model (or every gradient: the same shapes in f32). */
export class ModelParams implements Disposable {
  constructor(
    readonly config: LlamaConfig,
    /** One flat 1-D buffer per layer (layerLayout). */
    readonly layers: Tensor[],
    readonly embed: Tensor,
    readonly finalNorm: Tensor,
    /** Absent when the embeddings are tied. */
    readonly head: Tensor | null,
  ) {
    const C = config.dim;
    const numel = layerLayout(config).numel;
    const want: [string, Tensor | null, number[]][] = [
      ["embed", embed, [config.vocab, C]],
      ["finalNorm", finalNorm, [C]],
      ...layers.map((t, i): [string, Tensor, number[]] => [`layers[${i}]`, t, [numel]]),
    ];
    if (!config.tiedEmbeddings) want.push(["head", head, [config.vocab, C]]);
    else if (head !== null)
      throw new TensorError("model params: head must be null when the embeddings are tied (the head is the embedding)");
    if (layers.length !== config.layers) throw new TensorError(`model params: expected ${config.layers} layers, got ${layers.length}`);
    for (const [name, t, shape] of want) {
      if (t === null) throw new TensorError(`model params: ${name} is missing (the embeddings are not tied)`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new TensorError(`model params: ${name}: expected shape [${shape.join(", ")}], got ${t.describe()}`);
      }
      if (t.dtype !== embed.dtype) throw new TensorError(`model params: ${name}: expected dtype ${embed.dtype} (as embed), got ${t.dtype}`);
    }
  }

  get dtype(): DType {
    return this.embed.dtype;
  }

  /** Every tensor, in the global order of the init (embed, layers, finalNorm, head). */
  all(): Tensor[] {
    return [this.embed, ...this.layers, this.finalNorm, ...(this.head ? [this.head] : [])];
  }

  dispose(): void {
    for (const t of this.all()) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Layer i's views of a ModelParams. */
export function paramLayerViews(p: ModelParams, i: number): LayerWeights {
  const flat = p.layers[i];
  if (flat === undefined) throw new TensorError(`layer ${i} out of range (the model has ${p.layers.length} layers)`);
  return layerViews(flat, p.config);
}

/** embed / finalNorm / head views (head: the embedding when tied). */
export function nonLayerViews(p: ModelParams): NonLayerWeights {
  return { embed: p.embed.view(), finalNorm: p.finalNorm.view(), head: (p.head ?? p.embed).view() };
}

export function disposeNonLayerViews(w: NonLayerWeights): void {
  for (const t of Object.values(w)) t.dispose();
}

/** Counter offsets of the init's global layout (see the top of this file). */
export function initOffsets(cfg: LlamaConfig): { embed: number; layer: (i: number) => number; finalNorm: number; head: number } {
  const ve = cfg.vocab * cfg.dim;
  const ln = layerLayout(cfg).numel;
  return { embed: 0, layer: (i) => ve + i * ln, finalNorm: ve + cfg.layers * ln, head: ve + cfg.layers * ln + cfg.dim };
}

export interface InitOptions {
  seed: number | bigint;
  dtype?: "f32" | "bf16";
  device?: DeviceLike;
  /** Standard deviation of the matrices (HF initializer_range); default 0.02. */
  std?: number;
}

/** Layer i's flat buffer as initParams makes it (benchmarks and sharded sources make one layer alone). */
export function initLayer(cfg: LlamaConfig, i: number, o: InitOptions): Tensor {
  const layout = layerLayout(cfg);
  const flat = randn([layout.numel], { ...placement(o), offset: initOffsets(cfg).layer(i) });
  for (const e of layout.entries) {
    if (e.init !== "ones") continue;
    using v = flat.narrow(e.offset, e.numel);
    fill(v, 1);
  }
  return flat;
}

function placement(o: InitOptions): { seed: number | bigint; dtype: "f32" | "bf16"; device?: DeviceLike; std: number } {
  const std = o.std ?? 0.02;
  if (!(std > 0) || !Number.isFinite(std)) throw new TensorError(`init: std must be a positive number, got ${std}`);
  return { seed: o.seed, dtype: o.dtype ?? "f32", device: o.device, std };
}

/** Seeded parameters: identical values on every device and for every rank count (see the top of this file). */
export function initParams(cfg: LlamaConfig, o: InitOptions): ModelParams {
  const place = placement(o);
  const at = initOffsets(cfg);
  const layers = Array.from({ length: cfg.layers }, (_, i) => initLayer(cfg, i, o));
  const embed = randn([cfg.vocab, cfg.dim], { ...place, offset: at.embed });
  const finalNorm = empty([cfg.dim], { dtype: place.dtype, device: o.device });
  fill(finalNorm, 1);
  const head = cfg.tiedEmbeddings ? null : randn([cfg.vocab, cfg.dim], { ...place, offset: at.head });
  return new ModelParams(cfg, layers, embed, finalNorm, head);
}

/** Zeros shaped like the model's parameters (f32 by default: gradients). */
export function zeroParams(cfg: LlamaConfig, o: { dtype?: "f32" | "bf16"; device?: DeviceLike } = {}): ModelParams {
  const p = { dtype: o.dtype ?? "f32", device: o.device };
  const numel = layerLayout(cfg).numel;
  return new ModelParams(
    cfg,
    Array.from({ length: cfg.layers }, () => zeros([numel], p)),
    zeros([cfg.vocab, cfg.dim], p),
    zeros([cfg.dim], p),
    cfg.tiedEmbeddings ? null : zeros([cfg.vocab, cfg.dim], p),
  );
}

/** Which parameter: a field of a layer, or a non-layer one (hf.ts's HfTensorRef has this shape). */
export type ParamRef =
  | { readonly layer: number; readonly field: LayerParamName }
  | { readonly layer: null; readonly field: "embed" | "finalNorm" | "head" };

/**
 * Parameters from per-tensor values (a loaded checkpoint, a fixture): `read(ref)` gives each tensor's
 * elements, row-major in its own shape; they are packed into the flat per-layer layout. f32 on the CPU.
 */
export function paramsFromTensors(cfg: LlamaConfig, read: (ref: ParamRef) => ArrayLike<number>): ModelParams {
  const layout = layerLayout(cfg);
  const take = (ref: ParamRef, numel: number): ArrayLike<number> => {
    const d = read(ref);
    const name = ref.layer === null ? ref.field : `layers.${ref.layer}.${ref.field}`;
    if (d.length !== numel) throw new TensorError(`params: ${name}: expected ${numel} values for this config, got ${d.length}`);
    return d;
  };
  const layers = Array.from({ length: cfg.layers }, (_, i) => {
    const flat = new Float32Array(layout.numel);
    for (const e of layout.entries) flat.set(take({ layer: i, field: e.name }, e.numel), e.offset);
    return fromArray(flat, [layout.numel]);
  });
  const VC = cfg.vocab * cfg.dim;
  const embed = fromArray(take({ layer: null, field: "embed" }, VC), [cfg.vocab, cfg.dim]);
  const finalNorm = fromArray(take({ layer: null, field: "finalNorm" }, cfg.dim), [cfg.dim]);
  const head = cfg.tiedEmbeddings ? null : fromArray(take({ layer: null, field: "head" }, VC), [cfg.vocab, cfg.dim]);
  return new ModelParams(cfg, layers, embed, finalNorm, head);
}
