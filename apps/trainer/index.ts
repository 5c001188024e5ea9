// `bun run apps/trainer`: parse the command line, print the resolved config, and tokenize the data
// (once, cached) in this process before any rank starts.
import { probeGpus } from "@lightseq/cuda";
import { runCli } from "./src/cli.ts";
import { formatConfig } from "./src/config.ts";
import { formatProgress, prepareCorpus } from "./src/data/corpus.ts";
import { PackedSequences } from "./src/data/sequences.ts";
import { DataError } from "./src/data/tokenizer.ts";

const machine = { gpus: probeGpus().count };
const r = await runCli(process.argv.slice(2), machine);
if (r.exit !== null) process.exit(r.exit);
const cfg = r.config;
console.log(`config (preset ${cfg.preset}):\n${formatConfig(cfg)}`);

try {
  const corpus = await prepareCorpus({ data: cfg.data, tokenizer: cfg.tokenizer, onProgress: (p) => console.log(formatProgress(p)) });
  const seqs = new PackedSequences(corpus.file, cfg.seq, corpus.source.name);
  console.log(
    `data: ${corpus.source.name}, ${corpus.file.docStarts.length} documents, ${corpus.file.tokens.length} tokens ` +
      `(${corpus.tokenizer.name}, vocab ${corpus.tokenizer.vocabSize}) -> ${seqs.count} sequences of ${cfg.seq}` +
      `${corpus.built ? "" : " (cached)"}: ${corpus.file.path}`,
  );
} catch (e) {
  if (!(e instanceof DataError)) throw e;
  console.error(`trainer: ${e.message}`);
  process.exit(2);
}
