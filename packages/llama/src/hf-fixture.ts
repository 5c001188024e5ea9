// Reads the Hugging Face reference fixture that fixtures/make_hf_fixture.py builds with transformers
// (fixtures/hf-tiny/: config.json, model.safetensors, expected.safetensors): the config, the weights
// and the gradients per parameter, the token batch, the labels already shifted the way our model takes
// them, the logits, the loss and the per-layer hidden states. Used by the model-vs-transformers test.
//
// Labels: transformers' LlamaForCausalLM scores logits[b, t] against labels[b, t + 1] and averages
// over the labels that are not -100 across the whole batch. Our model takes the label of each token
// already shifted: targets[b][t] = labels[b][t + 1], and -100 for the last token of each sequence.

import { existsSync } from "node:fs";
import { join } from "node:path";
import type { LlamaConfig } from "./config.ts";
import { type HfTensorRef, hfTensorEntries, hfTensorName, loadHfCheckpoint } from "./hf.ts";
import { SafetensorsError, SafetensorsFile } from "./safetensors.ts";

export const HF_TINY_FIXTURE = join(import.meta.dir, "..", "fixtures", "hf-tiny");
export const IGNORE_LABEL = -100;

export interface HfFixture {
  readonly dir: string;
  readonly config: LlamaConfig;
  readonly batch: number;
  readonly seqLen: number;
  /** Per sequence: the token ids [seqLen]. */
  readonly tokens: readonly Int32Array[];
  /** Per sequence: labels as given to transformers (unshifted, -100 = ignored) [seqLen]. */
  readonly labels: readonly Int32Array[];
  /** Per sequence: targets[t] = labels[t + 1], IGNORE_LABEL at the last position [seqLen]. */
  readonly targets: readonly Int32Array[];
  /** Number of targets that are not IGNORE_LABEL over the batch (the loss's denominator). */
  readonly labelCount: number;
  /** transformers' loss: mean of -log p over the valid targets of the whole batch. */
  readonly loss: number;
  /** Per sequence: logits [seqLen, vocab], row-major. */
  readonly logits: readonly Float32Array[];
  /** transformers' outputs.hidden_states: per entry, per sequence [seqLen, dim]. */
  readonly hidden: readonly (readonly Float32Array[])[];
  /** The scaled RoPE frequencies transformers used [headDim / 2]. */
  readonly invFreq: Float32Array;
  /** The weights (f32), one entry per parameter, in hfTensorEntries order. */
  readonly params: readonly { readonly ref: HfTensorRef; readonly data: Float32Array }[];
  /** d(loss)/d(parameter), f32, same order and shapes as params. */
  readonly grads: readonly { readonly ref: HfTensorRef; readonly data: Float32Array }[];
}

export function hfFixtureExists(dir = HF_TINY_FIXTURE): boolean {
  return ["config.json", "model.safetensors", "expected.safetensors"].every((f) => existsSync(join(dir, f)));
}

/** Loads the fixture, checking every tensor's presence and shape; errors name the file and the tensor. */
export async function loadHfFixture(dir = HF_TINY_FIXTURE): Promise<HfFixture> {
  const params: { ref: HfTensorRef; data: Float32Array }[] = [];
  const config = await loadHfCheckpoint(dir, null, (ref, data) => void params.push({ ref, data: data as Float32Array }), { as: "f32" });
  const path = join(dir, "expected.safetensors");
  const f = SafetensorsFile.open(path);
  try {
    const shapeOf = (name: string, want: readonly number[]) => {
      const got = f.info(name).shape;
      if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
        throw new SafetensorsError(`${path}: tensor ${JSON.stringify(name)}: shape [${got.join(", ")}], expected [${want.join(", ")}]`);
      }
    };
    const ids = f.info("input_ids").shape;
    if (ids.length !== 2) throw new SafetensorsError(`${path}: tensor "input_ids": expected [batch, seqLen], got [${ids.join(", ")}]`);
    const [batch, seqLen] = ids as [number, number];
    const { vocab: V, dim: C } = config;
    shapeOf("labels", [batch, seqLen]);
    shapeOf("logits", [batch, seqLen, V]);
    shapeOf("loss", []);
    shapeOf("inv_freq", [config.headDim / 2]);
    const rows = <A extends Int32Array | Float32Array>(all: A, width: number): A[] =>
      Array.from({ length: batch }, (_, b) => all.subarray(b * seqLen * width, (b + 1) * seqLen * width) as A);
    const tokens = rows(f.readI32("input_ids"), 1);
    const labels = rows(f.readI32("labels"), 1);
    const targets = labels.map((l) => {
      const t = new Int32Array(seqLen).fill(IGNORE_LABEL);
      t.set(l.subarray(1));
      return t;
    });
    const labelCount = targets.reduce((n, t) => n + t.filter((x) => x !== IGNORE_LABEL).length, 0);
    const hidden: Float32Array[][] = [];
    for (let i = 0; f.has(`hidden.${i}`); i++) {
      shapeOf(`hidden.${i}`, [batch, seqLen, C]);
      hidden.push(rows(f.readF32(`hidden.${i}`), C));
    }
    const grads = hfTensorEntries(config).map((e) => {
      if (!f.has(e.name)) throw new SafetensorsError(`${path}: tensor ${JSON.stringify(e.name)}: its gradient is missing`);
      shapeOf(e.name, e.shape);
      return { ref: e.ref, data: f.readF32(e.name) };
    });
    return {
      dir,
      config,
      batch,
      seqLen,
      tokens,
      labels,
      targets,
      labelCount,
      loss: f.readF32("loss")[0]!,
      logits: rows(f.readF32("logits"), V),
      hidden,
      invFreq: f.readF32("inv_freq"),
      params,
      grads,
    };
  } finally {
    f.close();
  }
}

/** The entry of `list` (params or grads) for one parameter. */
export function fixtureTensor(list: HfFixture["params"], ref: HfTensorRef): Float32Array {
  const name = hfTensorName(ref);
  const e = list.find((x) => hfTensorName(x.ref) === name);
  if (e === undefined) throw new SafetensorsError(`fixture: no tensor ${name}`);
  return e.data;
}
