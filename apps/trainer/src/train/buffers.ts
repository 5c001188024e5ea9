// The model's parameters as the optimizer's flat buffers (DESIGN.md section 4): one per decoder layer
// ("layer0" ... in @lightseq/llama's LAYER_PARAMS order, what the gradient sink hands over), then
// "embed", "finalNorm" and "head" (absent when the embeddings are tied), each a buffer of one
// parameter. decayed() (optim/shard.ts) skips the norms and the embedding; the head is decayed.

import { initLayer, initOffsets, LAYER_PARAMS, type LlamaConfig, layerLayout } from "@lightseq/llama";
import type { HfTensorRef } from "@lightseq/llama/hf";
import { full, randn, type Tensor } from "@lightseq/tensor";
import type { BufferSpec } from "../optim/sharded.ts";

export type NonLayerName = "embed" | "finalNorm" | "head";

/** Hugging Face's initializer_range, weights.ts's default. */
const INIT_STD = 0.02;

export const layerBuffer = (i: number): string => `layer${i}`;

/** Every buffer of the model, in the order the optimizer and the snapshots keep them. */
export function bufferSpecs(cfg: LlamaConfig): BufferSpec[] {
  const layer = layerLayout(cfg).entries.map(({ name, numel }) => ({ name, numel }));
  const VC = cfg.vocab * cfg.dim;
  const specs: BufferSpec[] = Array.from({ length: cfg.layers }, (_, i) => ({ name: layerBuffer(i), params: layer }));
  specs.push({ name: "embed", params: [{ name: "embed", numel: VC }] });
  specs.push({ name: "finalNorm", params: [{ name: "finalNorm", numel: cfg.dim }] });
  if (!cfg.tiedEmbeddings) specs.push({ name: "head", params: [{ name: "head", numel: VC }] });
  return specs;
}

/** The seeded initial values of one buffer (weights.ts's init: identical for every device and mesh), drawn on `device`. */
export function initialTensor(cfg: LlamaConfig, name: string, seed: number, device: "cpu" | "cuda:0" = "cpu"): Tensor {
  const m = /^layer(\d+)$/.exec(name);
  if (m) return initLayer(cfg, Number(m[1]), { seed, device });
  const VC = cfg.vocab * cfg.dim;
  const at = initOffsets(cfg);
  if (name === "embed") return randn([VC], { seed, std: INIT_STD, offset: at.embed, device });
  if (name === "finalNorm") return full([cfg.dim], 1, { device });
  if (name === "head") return randn([VC], { seed, std: INIT_STD, offset: at.head, device });
  throw new RangeError(`no buffer "${name}" in a Llama model`);
}

/** Where a Hugging Face tensor sits: its buffer and the element offset inside it. */
export function bufferOf(cfg: LlamaConfig, ref: HfTensorRef): { buffer: string; offset: number } {
  if (ref.layer === null) return { buffer: ref.field, offset: 0 };
  const e = layerLayout(cfg).entries.find((x) => x.name === ref.field);
  if (!e) throw new RangeError(`unknown layer parameter ${ref.field} (known: ${LAYER_PARAMS.join(", ")})`);
  return { buffer: layerBuffer(ref.layer), offset: e.offset };
}
