// `bun run apps/trainer [--flag value ...]`: parse the command line, print the resolved config, check
// what every rank would trip on (the run folder, a resume's snapshot, an --init-from folder, the
// data), tokenize the data once (cached), write DIR/train-config.json, then start the ranks through
// @lightseq/comm's launch(): one per GPU, or --nprocs CPU processes without a GPU. Each runs
// src/train/rank.ts. Started under a launcher that sets RANK, this process is one rank itself.
//
// The launcher forwards SIGINT/SIGTERM to the ranks, which write a snapshot and exit 0; it SIGKILLs a
// rank only GRACE_MS later, longer than a snapshot write. A rank that dies makes the launcher stop the
// others and exit non-zero, naming it.

import { join } from "node:path";
import { parsePolicy } from "@lightseq/checkpointing";
import { launch } from "@lightseq/comm";
import { probeGpus } from "@lightseq/cuda";
import { LlamaConfigError, llamaPreset } from "@lightseq/llama";
import { loadHfCheckpoint } from "@lightseq/llama/hf";
import { runCli } from "./src/cli.ts";
import { ConfigError, formatConfig, type TrainConfig } from "./src/config.ts";
import { formatProgress, prepareCorpus } from "./src/data/corpus.ts";
import { PackedSequences } from "./src/data/sequences.ts";
import { DataError } from "./src/data/tokenizer.ts";
import { checkFreshRunDir, resumePoint, writeRunConfig } from "./src/run.ts";

/** SIGTERM -> SIGKILL delay of the ranks: a snapshot of a 1B model's state (16 GB) writes in well under this. */
const GRACE_MS = 300_000;
const RANK_SCRIPT = join(import.meta.dir, "src/train/rank.ts");

const machine = { gpus: probeGpus().count };
const asRank = process.env.RANK !== undefined;
const r = await runCli(process.argv.slice(2), machine, (name) => {
  try {
    llamaPreset(name);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
});
if (r.exit !== null) process.exit(r.exit);
const cfg: TrainConfig = r.config;
const lead = !asRank || process.env.RANK === "0";
if (lead) console.log(`config (preset ${cfg.preset}):\n${formatConfig(cfg)}`);

let tokenPath: string;
try {
  const model = llamaPreset(cfg.model);
  if (cfg.policy !== "auto") {
    try {
      parsePolicy(cfg.policy, model.layers);
    } catch (e) {
      throw new ConfigError(`--policy: ${(e as Error).message}`);
    }
  }
  if (machine.gpus === 0 && cfg.attention !== "auto")
    throw new ConfigError(`--attention ${cfg.attention} needs a GPU; CPU ranks run the reference attention (leave --attention auto)`);
  if (lead) {
    checkFreshRunDir(cfg);
    if (cfg.resume) {
      const { info, state } = resumePoint(cfg);
      console.log(`resume: ${info.dir} (step ${state.step})`);
    }
    if (cfg.initFrom !== null) {
      // loadHfCheckpoint checks config.json and every tensor's name, shape and dtype before it hands
      // over the first one: stop there, the ranks read the values.
      const checked = new Error("checked");
      await loadHfCheckpoint(cfg.initFrom, model, () => {
        throw checked;
      }).catch((e) => {
        if (e !== checked) throw e;
      });
    }
  }
  const corpus = await prepareCorpus({
    data: cfg.data,
    tokenizer: cfg.tokenizer,
    onProgress: (p) => (lead ? console.log(formatProgress(p)) : undefined),
  });
  const seqs = new PackedSequences(corpus.file, cfg.seq, corpus.source.name);
  if (corpus.tokenizer.vocabSize > model.vocab)
    throw new DataError(
      `the tokenizer ${corpus.tokenizer.name} has ${corpus.tokenizer.vocabSize} tokens, more than the vocabulary of --model ${cfg.model} (${model.vocab})`,
    );
  if (lead)
    console.log(
      `data: ${corpus.source.name}, ${corpus.file.docStarts.length} documents, ${corpus.file.tokens.length} tokens ` +
        `(${corpus.tokenizer.name}, vocab ${corpus.tokenizer.vocabSize}) -> ${seqs.count} sequences of ${cfg.seq}` +
        `${corpus.built ? "" : " (cached)"}: ${corpus.file.path}`,
    );
  tokenPath = corpus.file.path;
} catch (e) {
  if (!(e instanceof DataError || e instanceof ConfigError || e instanceof LlamaConfigError || (e as Error).name === "SafetensorsError"))
    throw e;
  console.error(`trainer: ${(e as Error).message}`);
  process.exit(2);
}

const paths = writeRunConfig(cfg);
const device = machine.gpus > 0 ? "cuda" : "cpu";
if (asRank) {
  // One rank of an outside launcher: run the rank's program in this process.
  process.env.LIGHTSEQ_TRAIN_DEVICE = device;
  process.argv = [process.argv[0] as string, RANK_SCRIPT, paths.config, tokenPath];
  await import(RANK_SCRIPT);
} else {
  const res = await launch({
    nprocs: cfg.nprocs,
    script: RANK_SCRIPT,
    args: [paths.config, tokenPath],
    env: { LIGHTSEQ_TRAIN_DEVICE: device },
    gracePeriodMs: GRACE_MS,
    gpus: machine.gpus,
    onLine: (rank, stream, line) => {
      // Rank 0 speaks for the run; the others only when something goes wrong.
      if (rank === 0 && stream === "stdout") process.stdout.write(`${line}\n`);
      else process.stderr.write(`[rank ${rank}] ${line}\n`);
    },
  });
  process.exit(res.exitCode);
}
