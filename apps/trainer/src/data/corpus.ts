// Tokenize once: the documents of a data source, encoded by a tokenizer, cached as a token file whose
// name is the hash of the inputs (file contents) and the tokenizer. A second run with the same inputs
// maps the file and tokenizes nothing. Run it in one process (the launcher's parent) before the ranks
// start: the ranks then only open the file.

import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { type DataSource, hashSource, readDocuments, resolveSource } from "./sources.ts";
import { openTokenFile, type TokenFile, TokenFileWriter } from "./token-file.ts";
import { tokenizeInWorkers } from "./tokenize-pool.ts";
import { DataError, loadTokenizer, type TextTokenizer } from "./tokenizer.ts";

/** Bump when the token stream for the same inputs changes (packing, BOS/EOS, text cleanup). */
const STREAM_VERSION = 1;

export interface Progress {
  files: number;
  filesTotal: number;
  bytes: number;
  bytesTotal: number;
  documents: number;
  tokens: number;
  seconds: number;
}

export interface Corpus {
  source: DataSource;
  tokenizer: TextTokenizer;
  file: TokenFile;
  /** True when this call tokenized (no cached file). */
  built: boolean;
}

export function defaultCacheDir(): string {
  return process.env.LIGHTSEQ_CACHE ? join(process.env.LIGHTSEQ_CACHE, "tokens") : join(homedir(), ".cache", "lightseq", "tokens");
}

export async function cacheKey(source: DataSource, tokenizer: TextTokenizer): Promise<string> {
  return createHash("sha256")
    .update(`stream v${STREAM_VERSION}\0${await hashSource(source)}\0${tokenizer.fingerprint}`)
    .digest("hex");
}

export interface PrepareOptions {
  data: string | null;
  tokenizer: string | null;
  cacheDir?: string;
  /** Called about once a second while tokenizing, and once at the end. */
  onProgress?: (p: Progress) => void;
  /**
   * Tokenizer threads; default: one per core (at most 4) for inputs over 4 MB, else this thread (a
   * worker costs its tokenizer's load time). The token file is the same bytes either way.
   */
  workers?: number;
}

/** The corpus of `data` under `tokenizer`, from the cache or tokenized now. */
export async function prepareCorpus(o: PrepareOptions): Promise<Corpus> {
  const tokenizer = loadTokenizer(o.tokenizer);
  const source = resolveSource(o.data);
  const key = await cacheKey(source, tokenizer);
  const path = join(o.cacheDir ?? defaultCacheDir(), `${key.slice(0, 32)}.tokens`);
  if (existsSync(path)) return { source, tokenizer, file: openTokenFile(path), built: false };

  const w = new TokenFileWriter(path, tokenizer.bos, tokenizer.eos, tokenizer.vocabSize);
  const t0 = performance.now();
  const bytesTotal = source.files.reduce((a, f) => a + f.bytes, 0);
  let bytes = 0;
  let files = 0;
  let last = t0;
  const report = (force: boolean) => {
    const now = performance.now();
    if (!o.onProgress || (!force && now - last < 1000)) return;
    last = now;
    o.onProgress({
      files,
      filesTotal: source.files.length,
      bytes,
      bytesTotal,
      documents: w.documents,
      tokens: w.tokens,
      seconds: (now - t0) / 1000,
    });
  };
  const workers = o.workers ?? (bytesTotal > 4e6 ? Math.min(4, navigator.hardwareConcurrency) : 1);
  async function* documents(): AsyncGenerator<string> {
    for (const f of source.files) {
      yield* readDocuments(f);
      files++;
      bytes += f.bytes;
    }
  }
  async function* inThisThread(): AsyncGenerator<number[]> {
    for await (const d of documents()) yield tokenizer.encode(d);
  }
  try {
    for await (const ids of workers > 1 ? tokenizeInWorkers(o.tokenizer, documents(), { workers }) : inThisThread()) {
      w.addDocument(ids);
      report(false);
    }
    if (w.documents === 0) throw new DataError(`${source.name}: no text in its ${source.files.length} file(s)`);
    report(true);
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
  return { source, tokenizer, file: openTokenFile(path), built: true };
}

/** One progress line: "tokenizing: 3.1/9.9 MB (31%), 120/500 files, 1.2M tokens, 4 s". */
export function formatProgress(p: Progress): string {
  const mb = (b: number) => (b / 1e6).toFixed(1);
  const pct = p.bytesTotal > 0 ? Math.floor((100 * p.bytes) / p.bytesTotal) : 100;
  const tok = p.tokens >= 1e6 ? `${(p.tokens / 1e6).toFixed(1)}M` : `${(p.tokens / 1e3).toFixed(1)}K`;
  return `tokenizing: ${mb(p.bytes)}/${mb(p.bytesTotal)} MB (${pct}%), ${p.files}/${p.filesTotal} files, ${p.documents} documents, ${tok} tokens, ${p.seconds.toFixed(0)} s`;
}
