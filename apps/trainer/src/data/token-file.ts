// The tokenized corpus on disk: every document as BOS, its tokens, EOS, back to back (the packed
// stream), with the stream offset where each document begins. Written once per (data, tokenizer) under
// a name that is the hash of both, atomically (a temp file, fsync, rename), then memory-mapped.
//
// BOS/EOS: Llama's tokenizers put BOS before every sequence they encode and the models were trained on
// documents that begin with BOS; we keep both per document (BOS doc EOS), so a sequence cut from the
// stream shows the model the same document boundaries whatever the cut.
//
// Layout (little endian), 64-byte header then two arrays:
//   0  magic "LSTOKv1\n"        8  u32 token bytes (2: u16 tokens when vocab <= 65536, else 4: u32)
//   12 u32 0                    16 u64 tokens        24 u64 documents
//   32 u32 bos   36 u32 eos     40 u32 vocab size    44..63 zero
//   64 tokens[tokens] (u16 or u32), padded to 8 bytes; then u64 docStart[documents]

import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { DataError } from "./tokenizer.ts";

const MAGIC = "LSTOKv1\n";
const HEADER = 64;

export interface TokenFile {
  path: string;
  tokens: Uint16Array | Uint32Array;
  /** Stream offset of each document's BOS. */
  docStarts: Float64Array;
  bos: number;
  eos: number;
  vocabSize: number;
}

const pad8 = (n: number) => Math.ceil(n / 8) * 8;

/** Streams documents' tokens into `path` (via `path.tmp-PID`); the file appears whole or not at all. */
export class TokenFileWriter {
  private readonly tmp: string;
  private readonly fd: number;
  private readonly tokenBytes: 2 | 4;
  private buf: Uint16Array | Uint32Array;
  private fill = 0;
  private written = 0; // tokens flushed
  private readonly starts: number[] = [];

  constructor(
    readonly path: string,
    readonly bos: number,
    readonly eos: number,
    readonly vocabSize: number,
  ) {
    mkdirSync(dirname(path), { recursive: true });
    this.tmp = `${path}.tmp-${process.pid}`;
    this.fd = openSync(this.tmp, "w");
    this.tokenBytes = vocabSize <= 65536 ? 2 : 4;
    this.buf = this.tokenBytes === 2 ? new Uint16Array(1 << 20) : new Uint32Array(1 << 20);
  }

  get tokens(): number {
    return this.written + this.fill;
  }
  get documents(): number {
    return this.starts.length;
  }

  /** Appends BOS, ids, EOS. An empty document is skipped. */
  addDocument(ids: ArrayLike<number>): void {
    if (ids.length === 0) return;
    this.starts.push(this.tokens);
    this.push(this.bos);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i] as number;
      if (id < 0 || id >= this.vocabSize) throw new DataError(`token id ${id} outside the vocabulary of ${this.vocabSize}`);
      this.push(id);
    }
    this.push(this.eos);
  }

  private push(id: number): void {
    if (this.fill === this.buf.length) this.flush();
    this.buf[this.fill++] = id;
  }

  private flush(): void {
    if (this.fill === 0) return;
    const bytes = new Uint8Array(this.buf.buffer, 0, this.fill * this.tokenBytes);
    writeSync(this.fd, bytes, 0, bytes.length, HEADER + this.written * this.tokenBytes);
    this.written += this.fill;
    this.fill = 0;
  }

  /** Writes the index and header, fsyncs, renames into place; returns the number of tokens. */
  finish(): number {
    this.flush();
    const n = this.written;
    const startsAt = pad8(HEADER + n * this.tokenBytes);
    const starts = new BigUint64Array(this.starts.map((s) => BigInt(s)));
    writeSync(this.fd, new Uint8Array(starts.buffer), 0, starts.byteLength, startsAt);
    const h = new DataView(new ArrayBuffer(HEADER));
    for (let i = 0; i < MAGIC.length; i++) h.setUint8(i, MAGIC.charCodeAt(i));
    h.setUint32(8, this.tokenBytes, true);
    h.setBigUint64(16, BigInt(n), true);
    h.setBigUint64(24, BigInt(this.starts.length), true);
    h.setUint32(32, this.bos, true);
    h.setUint32(36, this.eos, true);
    h.setUint32(40, this.vocabSize, true);
    writeSync(this.fd, new Uint8Array(h.buffer), 0, HEADER, 0);
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.tmp, this.path);
    const dfd = openSync(dirname(this.path), "r");
    fsyncSync(dfd);
    closeSync(dfd);
    return n;
  }

  abort(): void {
    try {
      closeSync(this.fd);
    } catch {}
    rmSync(this.tmp, { force: true });
  }
}

/** Maps a token file; a truncated or foreign file is a DataError (delete it to rebuild). */
export function openTokenFile(path: string): TokenFile {
  const size = statSync(path).size;
  const bad = (why: string) => new DataError(`token file ${path}: ${why}; delete it to tokenize again`);
  if (size < HEADER) throw bad("shorter than its header");
  const bytes = Bun.mmap(path, { shared: false });
  const h = new DataView(bytes.buffer, bytes.byteOffset, HEADER);
  const magic = String.fromCharCode(...bytes.subarray(0, MAGIC.length));
  if (magic !== MAGIC) throw bad("not a token file (bad magic)");
  const tokenBytes = h.getUint32(8, true);
  if (tokenBytes !== 2 && tokenBytes !== 4) throw bad(`token width ${tokenBytes}`);
  const n = Number(h.getBigUint64(16, true));
  const docs = Number(h.getBigUint64(24, true));
  const startsAt = pad8(HEADER + n * tokenBytes);
  if (size !== startsAt + docs * 8) throw bad(`${size} bytes where the header implies ${startsAt + docs * 8}`);
  const tokens =
    tokenBytes === 2
      ? new Uint16Array(bytes.buffer, bytes.byteOffset + HEADER, n)
      : new Uint32Array(bytes.buffer, bytes.byteOffset + HEADER, n);
  // The index is small (8 bytes a document): copied into exact doubles, easier to use than bigints.
  const docStarts = Float64Array.from(new BigUint64Array(bytes.buffer, bytes.byteOffset + startsAt, docs), (v) => Number(v));
  return { path, tokens, docStarts, bos: h.getUint32(32, true), eos: h.getUint32(36, true), vocabSize: h.getUint32(40, true) };
}
