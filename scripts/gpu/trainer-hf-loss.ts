// Our loss on a held-out sequence of a trainer run, computed from the run's Hugging Face export, for
// scripts/gpu/trainer-hf-loss.py to compare with transformers' loss on the same tokens.
//   bun scripts/gpu/trainer-hf-loss.ts RUN_DIR LEN OUT_JSON
// The sequence: the first one of the run's data order that its steps never reached (the order is
// seeded, data/order.ts), its first LEN tokens. The model: the exported folder read in f32 on the CPU
// (OpenBLAS matmul, reference attention: exact f32 arithmetic with no GPU kernel involved).

import { referenceBackend } from "@lightseq/attention";
import { parsePolicy } from "@lightseq/checkpointing";
import { localModel, paramsFromTensors, sequenceBatch } from "@lightseq/llama";
import { hfTensorName, loadHfCheckpoint } from "@lightseq/llama/hf";
import { setCpuMatmul } from "@lightseq/tensor";
import type { TrainConfig } from "../../apps/trainer/src/config.ts";
import { prepareCorpus } from "../../apps/trainer/src/data/corpus.ts";
import { SequenceOrder } from "../../apps/trainer/src/data/order.ts";
import { PackedSequences } from "../../apps/trainer/src/data/sequences.ts";
import { openTokenFile } from "../../apps/trainer/src/data/token-file.ts";

const [runDir, lenText, outPath] = process.argv.slice(2);
if (!runDir || !lenText || !outPath) throw new Error("usage: bun scripts/gpu/trainer-hf-loss.ts RUN_DIR LEN OUT_JSON");
const cfg = (await Bun.file(`${runDir}/train-config.json`).json()) as TrainConfig;
const corpus = await prepareCorpus({ data: cfg.data, tokenizer: cfg.tokenizer });
const seqs = new PackedSequences(openTokenFile(corpus.file.path), cfg.seq);
const trained = new Set(new SequenceOrder(seqs.count, cfg.seed).take(cfg.steps * cfg.batch));
let held = 0;
while (trained.has(held)) held++;
const tokens = Int32Array.from(seqs.sequence(held).subarray(0, Number(lenText)));

setCpuMatmul("blas", { threads: 8 });
const tensors = new Map<string, Float32Array>();
const config = await loadHfCheckpoint(`${runDir}/hf`, null, (ref, data) => {
  tensors.set(hfTensorName(ref), data as Float32Array);
});
const params = paramsFromTensors(config, (ref) => tensors.get(hfTensorName(ref)) as Float32Array);
const model = localModel(params, { policy: parsePolicy("none"), backend: referenceBackend });
const r = await model.loss(sequenceBatch(tokens));
const loss = r.lossSum / r.count;
await Bun.write(outPath, JSON.stringify({ sequence: held, tokens: Array.from(tokens), loss, count: r.count }));
console.log(`ours: held-out sequence ${held}, ${tokens.length} tokens, loss ${loss.toFixed(6)} over ${r.count} labels`);
