// Saves a model as a Hugging Face checkpoint folder (config.json, bf16 safetensors shards and their
// index: what transformers' LlamaForCausalLM.from_pretrained reads), loads it back and checks it: the
// config read back is the one saved, every tensor is the bf16 rounding of ours (exactly), and the
// loaded model's loss on a sequence is the original's to within the rounding (1e-3).
// The same loadHfCheckpoint reads a downloaded checkpoint (meta-llama/Llama-2-7b-hf, ...): pass null
// as the config to take the checkpoint's. Everything here runs on the CPU; to train on a GPU, copy
// the loaded f32 parameters there (T.to, T.cast to bf16).
//   bun hf-checkpoint.ts [DIR]        DIR: where to write (default: a temporary folder, removed after)
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { selectAttentionBackend } from "@lightseq/attention";
import {
  disposeLayerViews,
  initParams,
  llamaPreset,
  localModel,
  type ModelParams,
  type ParamRef,
  paramLayerViews,
  paramsFromTensors,
  sequenceBatch,
} from "@lightseq/llama";
import { type HfTensorData, hfTensorName, loadHfCheckpoint, saveHfCheckpoint } from "@lightseq/llama/hf";
import * as T from "@lightseq/tensor";

/** One parameter's values (f32), by the reference the checkpoint functions use. */
function valuesOf(p: ModelParams, ref: ParamRef): Float32Array {
  if (ref.layer === null) return T.toFloat32Array(ref.field === "head" ? (p.head ?? p.embed) : p[ref.field]);
  const views = paramLayerViews(p, ref.layer);
  try {
    return T.toFloat32Array(views[ref.field]);
  } finally {
    disposeLayerViews(views);
  }
}

const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), "hf-tiny-"));
T.setCpuMatmul("blas"); // OpenBLAS: apt-get install libopenblas0-pthread
const config = llamaPreset("tiny");
using params = initParams(config, { seed: 1 });

// bf16 (transformers' usual), in shards of at most 16 MB to show the index; the default is 5 GB.
const written = await saveHfCheckpoint(dir, config, (ref) => valuesOf(params, ref), { dtype: "bf16", shardBytes: 16e6 });
console.log(`saved ${written.length} files to ${dir}: ${readdirSync(dir).sort().join(", ")}`);

const loadedTensors = new Map<string, HfTensorData>();
const read = await loadHfCheckpoint(dir, null, (ref, data) => void loadedTensors.set(hfTensorName(ref), data)); // f32 values
if (JSON.stringify(read) !== JSON.stringify(config))
  throw new Error(`config read back differs:\n${JSON.stringify(read)}\n${JSON.stringify(config)}`);
using loaded = paramsFromTensors(read, (ref) => loadedTensors.get(hfTensorName(ref)) as Float32Array);

const [saved, back] = [params.all(), loaded.all()]; // embed, layers 0..L-1 (flat), finalNorm, head
saved.forEach((t, i) => {
  using rounded = T.cast(t, "bf16");
  const want = T.toFloat32Array(rounded);
  if (!T.toFloat32Array(back[i] as T.Tensor).every((v, j) => v === want[j]))
    throw new Error(`parameter tensor ${i}: the loaded values are not the bf16 rounding of the saved ones`);
});

const { backend } = selectAttentionBackend("auto", "cpu");
const batch = sequenceBatch(Int32Array.from({ length: 64 }, (_, i) => (i * 7919 + 13) % config.vocab));
const before = await localModel(params, { policy: { kind: "none" }, backend }).loss(batch);
const after = await localModel(loaded, { policy: { kind: "none" }, backend }).loss(batch);
const [a, b] = [before.lossSum / before.count, after.lossSum / after.count];
if (!(Math.abs(a - b) < 1e-3)) throw new Error(`the loaded model's loss ${b} differs from the saved model's ${a} by more than 1e-3`);
console.log(
  `loaded ${loadedTensors.size} tensors: config equal, every tensor the bf16 rounding of ours; loss ${a.toFixed(5)} -> ${b.toFixed(5)}`,
);
if (process.argv[2] === undefined) rmSync(dir, { recursive: true, force: true });
