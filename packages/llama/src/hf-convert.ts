// Rewrites a Hugging Face Llama checkpoint folder through our loader and writer: another dtype
// (bf16 / f32) or shard size. One tensor at a time is held in memory.
//
//   bun packages/llama/src/hf-convert.ts IN_DIR OUT_DIR [--dtype bf16|f32] [--shard-bytes N]
//
// It is also how a GPU run checks that transformers loads what saveHfCheckpoint writes
// (scripts/gpu/llama-hf-fixture.sh).

import { type HfDataType, type HfTensorData, hfTensorName, loadHfCheckpoint, saveHfCheckpoint } from "./hf.ts";
import { SafetensorsCheckpoint } from "./safetensors.ts";

const USAGE = "usage: bun packages/llama/src/hf-convert.ts IN_DIR OUT_DIR [--dtype bf16|f32] [--shard-bytes N]";

export async function convertHfCheckpoint(input: string, output: string, dtype: HfDataType, shardBytes?: number): Promise<string[]> {
  // First pass: validate everything (config, names, shapes) without keeping data.
  const cfg = await loadHfCheckpoint(input, null, () => {});
  const ck = SafetensorsCheckpoint.open(input);
  try {
    return await saveHfCheckpoint(
      output,
      cfg,
      (ref): HfTensorData => (dtype === "f32" ? ck.readF32(hfTensorName(ref)) : ck.readBf16(hfTensorName(ref))),
      { dtype, ...(shardBytes === undefined ? {} : { shardBytes }) },
    );
  } finally {
    ck.close();
  }
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const positional: string[] = [];
  let dtype: HfDataType = "bf16";
  let shardBytes: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--dtype") {
      const v = args[++i];
      if (v !== "bf16" && v !== "f32") throw new Error(`--dtype must be bf16 or f32, got ${v}\n${USAGE}`);
      dtype = v;
    } else if (a === "--shard-bytes") {
      shardBytes = Number(args[++i]);
      if (!Number.isSafeInteger(shardBytes) || shardBytes <= 0) throw new Error(`--shard-bytes must be a positive integer\n${USAGE}`);
    } else if (a.startsWith("--")) {
      throw new Error(`unknown option ${a}\n${USAGE}`);
    } else {
      positional.push(a);
    }
  }
  if (positional.length !== 2) throw new Error(USAGE);
  const files = await convertHfCheckpoint(positional[0]!, positional[1]!, dtype, shardBytes);
  console.log(`wrote ${files.length} files (${dtype}) to ${positional[1]}`);
}
