// Hugging Face checkpoints in and out of the sharded state.
//   --init-from DIR: every rank reads the folder (config.json checked against the model preset by
//     loadHfCheckpoint), assembles each buffer whole and keeps its own shard.
//   DIR/hf at the end: every buffer's fp32 master shards are all-gathered (on the communicator's
//     device), rank 0 writes config.json and bf16 sharded safetensors: the weights the GPU computed
//     with (the bf16 rounding of the masters), which transformers loads as LlamaForCausalLM.

import type { Communicator } from "@lightseq/comm";
import { type LlamaConfig, layerLayout } from "@lightseq/llama";
import { loadHfCheckpoint, saveHfCheckpoint } from "@lightseq/llama/hf";
import { empty, fromArray, toFloat32Array } from "@lightseq/tensor";
import type { BufferSpec } from "../optim/sharded.ts";
import { bufferOf } from "./buffers.ts";
import type { ShardedState } from "./state.ts";

/** Sets every buffer's shard from a Hugging Face folder. */
export async function initFromHf(dir: string, cfg: LlamaConfig, specs: readonly BufferSpec[], state: ShardedState): Promise<void> {
  const sizes = new Map(specs.map((s) => [s.name, s.params.reduce((a, p) => a + p.numel, 0)]));
  const parts = new Map(specs.map((s) => [s.name, s.params.length]));
  const open = new Map<string, Float32Array>();
  await loadHfCheckpoint(dir, cfg, (ref, data) => {
    const { buffer, offset } = bufferOf(cfg, ref);
    let full = open.get(buffer);
    if (!full) {
      full = new Float32Array(sizes.get(buffer) as number);
      open.set(buffer, full);
    }
    full.set(data as Float32Array, offset);
    const left = (parts.get(buffer) as number) - 1;
    parts.set(buffer, left);
    if (left === 0) {
      state.initFromFull(buffer, full);
      open.delete(buffer);
    }
  });
  const missing = [...parts].filter(([, n]) => n !== 0).map(([b]) => b);
  if (missing.length > 0) throw new RangeError(`--init-from ${dir}: buffers left incomplete: ${missing.join(", ")}`);
}

/** All ranks: gathers the fp32 masters; rank 0 writes DIR (config.json + safetensors). Returns the files (rank 0). */
export async function exportHf(
  dir: string,
  cfg: LlamaConfig,
  specs: readonly BufferSpec[],
  state: ShardedState,
  comm: Communicator,
): Promise<string[]> {
  // One buffer's master shard at a time (never the whole rank's state in one array).
  const masters = state.snapshotArrays();
  const full = new Map<string, Float32Array>();
  for (const [i, s] of specs.entries()) {
    const l = state.layoutOf(s.name);
    using mine = fromArray(masters.shard("master", i), [l.shardLen], { device: comm.device });
    using all = empty([l.padded], { device: comm.device });
    await comm.allGather(mine, all);
    if (comm.rank === 0) full.set(s.name, toFloat32Array(all).subarray(0, l.numel));
  }
  if (comm.rank !== 0) return [];
  const layout = layerLayout(cfg);
  return saveHfCheckpoint(dir, cfg, (ref) => {
    const { buffer, offset } = bufferOf(cfg, ref);
    const data = full.get(buffer) as Float32Array;
    const numel = ref.layer === null ? data.length : (layout.entries.find((e) => e.name === ref.field)?.numel as number);
    return data.slice(offset, offset + numel);
  });
}
