// safetensors reading (format: safetensors-format.ts and shared/reference/llama.md section 2), one file
// or shards with model.safetensors.index.json; writing is in safetensors-write.ts.
//
// Reading goes through a file descriptor at explicit offsets: one tensor at a time, into a buffer the
// caller gives (or a new one), so a 13 GB checkpoint never sits whole in the JavaScript heap. The header
// is validated completely when a file is opened (length within the file, JSON, dtypes, shapes, offsets
// within the buffer, sizes equal to numel * dtype size, no overlaps), so no later read can go beyond the
// file's end.

import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { join } from "node:path";
import { decodeBf16, encodeBf16, f32ToBf16Bits } from "@lightseq/tensor";
import { decodeF16, f16BitsToF32 } from "./f16.ts";
import {
  CONVERT_ELEMS,
  DTYPE_BYTES,
  fail,
  INDEX_FILE,
  IO_CHUNK,
  isRecord,
  MAX_HEADER_BYTES,
  numelOf,
  SAFETENSORS_DTYPES,
  type SafetensorsDtype,
  SINGLE_FILE,
} from "./safetensors-format.ts";

export {
  dtypeBytes,
  INDEX_FILE,
  SAFETENSORS_DTYPES,
  type SafetensorsDtype,
  SafetensorsError,
  SINGLE_FILE,
} from "./safetensors-format.ts";

export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** Element count (product of shape). */
  readonly numel: number;
  /** The file it lives in. */
  readonly file: string;
  /** Byte offset of its first byte in that file (header included). */
  readonly fileOffset: number;
  readonly byteLength: number;
}

/** What both a single file and a sharded checkpoint offer. Reads are synchronous positional reads. */
export interface TensorReader {
  names(): string[];
  has(name: string): boolean;
  /** Throws naming the tensor (and where it looked) when absent. */
  info(name: string): TensorInfo;
  /** The stored bytes, exactly. */
  readBytes(name: string, out?: Uint8Array): Uint8Array;
  /** As f32: F32 as stored, BF16 and F16 widened exactly. */
  readF32(name: string, out?: Float32Array): Float32Array;
  /** As bf16 bits: BF16 as stored, F32 and F16 rounded to nearest even. */
  readBf16(name: string, out?: Uint16Array): Uint16Array;
  readI32(name: string, out?: Int32Array): Int32Array;
  close(): void;
}

/** One .safetensors file, header parsed and validated at open. */
export class SafetensorsFile implements TensorReader {
  readonly path: string;
  readonly fileBytes: number;
  /** Where the data buffer starts (8 + header length). */
  readonly dataStart: number;
  readonly metadata: Readonly<Record<string, string>> | null;
  private readonly tensors: Map<string, TensorInfo>;
  private fd: number | null;

  private constructor(
    path: string,
    fd: number,
    fileBytes: number,
    dataStart: number,
    tensors: Map<string, TensorInfo>,
    metadata: Record<string, string> | null,
  ) {
    this.path = path;
    this.fd = fd;
    this.fileBytes = fileBytes;
    this.dataStart = dataStart;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsFile {
    if (!existsSync(path)) fail(path, null, "no such file");
    const fd = openSync(path, "r");
    try {
      const size = fstatSync(fd).size;
      if (size < 8) fail(path, null, `truncated: ${size} bytes, but a safetensors file starts with an 8-byte header length`);
      const lenBytes = new Uint8Array(8);
      readFully(fd, lenBytes, 0, path, null);
      const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (n > BigInt(size - 8))
        fail(path, null, `header length ${n} lies beyond the file (${size} bytes): truncated or not a safetensors file`);
      if (n > BigInt(MAX_HEADER_BYTES)) fail(path, null, `header length ${n} exceeds the format's ${MAX_HEADER_BYTES}-byte limit`);
      const headerBytes = Number(n);
      const raw = new Uint8Array(headerBytes);
      readFully(fd, raw, 8, path, null);
      let header: unknown;
      try {
        header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
      } catch (e) {
        fail(path, null, `header JSON invalid (${(e as Error).message})`);
      }
      const dataStart = 8 + headerBytes;
      const { tensors, metadata } = parseHeader(header, path, dataStart, size - dataStart);
      return new SafetensorsFile(path, fd, size, dataStart, tensors, metadata);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) fail(this.path, name, "missing (not in the header)");
    return t;
  }

  private descriptor(name: string): number {
    if (this.fd === null) fail(this.path, name, "read after close()");
    return this.fd;
  }

  readBytes(name: string, out?: Uint8Array): Uint8Array {
    const t = this.info(name);
    const dst = out ?? new Uint8Array(t.byteLength);
    if (dst.byteLength !== t.byteLength) fail(this.path, name, `output buffer has ${dst.byteLength} bytes, the tensor ${t.byteLength}`);
    readFully(this.descriptor(name), dst, t.fileOffset, this.path, name);
    return dst;
  }

  readF32(name: string, out?: Float32Array): Float32Array {
    const t = this.info(name);
    const dst = checkOut(out, Float32Array, t, this.path);
    if (t.dtype === "F32") {
      this.readBytes(name, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength));
    } else if (t.dtype === "BF16" || t.dtype === "F16") {
      const decode = t.dtype === "BF16" ? decodeBf16 : decodeF16;
      this.convertChunks(t, (bits, at) => decode(bits, dst.subarray(at, at + bits.length)));
    } else {
      fail(this.path, name, `is ${t.dtype}; read it with readI32`);
    }
    return dst;
  }

  readBf16(name: string, out?: Uint16Array): Uint16Array {
    const t = this.info(name);
    const dst = checkOut(out, Uint16Array, t, this.path);
    if (t.dtype === "BF16") {
      this.readBytes(name, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength));
    } else if (t.dtype === "F16") {
      // f16 -> f32 is exact, so this rounds once, as torch's .to(bfloat16) from half does.
      this.convertChunks(t, (bits, at) => {
        for (let i = 0; i < bits.length; i++) dst[at + i] = f32ToBf16Bits(f16BitsToF32(bits[i] as number));
      });
    } else if (t.dtype === "F32") {
      const chunk = new Float32Array(Math.min(t.numel, CONVERT_ELEMS));
      for (let at = 0; at < t.numel; at += chunk.length) {
        const part = chunk.subarray(0, Math.min(chunk.length, t.numel - at));
        readFully(this.descriptor(name), new Uint8Array(part.buffer, 0, part.byteLength), t.fileOffset + at * 4, this.path, name);
        encodeBf16(part, dst.subarray(at, at + part.length));
      }
    } else {
      fail(this.path, name, `is ${t.dtype}; read it with readI32`);
    }
    return dst;
  }

  readI32(name: string, out?: Int32Array): Int32Array {
    const t = this.info(name);
    if (t.dtype !== "I32") fail(this.path, name, `is ${t.dtype}, not I32`);
    const dst = checkOut(out, Int32Array, t, this.path);
    this.readBytes(name, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength));
    return dst;
  }

  /** Reads a 16-bit tensor in bounded chunks and hands each chunk (with its element offset) to `use`. */
  private convertChunks(t: TensorInfo, use: (bits: Uint16Array, at: number) => void): void {
    const chunk = new Uint16Array(Math.min(t.numel, CONVERT_ELEMS));
    for (let at = 0; at < t.numel; at += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, t.numel - at));
      readFully(this.descriptor(t.name), new Uint8Array(part.buffer, 0, part.byteLength), t.fileOffset + at * 2, this.path, t.name);
      use(part, at);
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

type TypedCtor<A> = { new (n: number): A; readonly name: string };

function checkOut<A extends { length: number }>(out: A | undefined, ctor: TypedCtor<A>, t: TensorInfo, file: string): A {
  if (out === undefined) return new ctor(t.numel);
  if (!(out instanceof (ctor as unknown as typeof Object))) fail(file, t.name, `output must be a ${ctor.name}`);
  if (out.length !== t.numel)
    fail(file, t.name, `output has ${out.length} elements, the tensor ${t.numel} (shape [${t.shape.join(", ")}])`);
  return out;
}

/** Reads exactly dst.byteLength bytes at `position`; a short read (file shrank since open) is an error. */
function readFully(fd: number, dst: Uint8Array, position: number, file: string, tensor: string | null): void {
  let done = 0;
  while (done < dst.byteLength) {
    const want = Math.min(IO_CHUNK, dst.byteLength - done);
    const got = readSync(fd, dst, done, want, position + done);
    if (got === 0)
      fail(file, tensor, `truncated: the file ended at byte ${position + done} while reading ${dst.byteLength} bytes at ${position}`);
    done += got;
  }
}

function parseHeader(
  header: unknown,
  file: string,
  dataStart: number,
  dataBytes: number,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> | null } {
  if (!isRecord(header)) fail(file, null, "header JSON must be an object of tensor entries");
  let metadata: Record<string, string> | null = null;
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (!isRecord(entry) || !Object.values(entry).every((v) => typeof v === "string"))
        fail(file, null, "__metadata__ must map strings to strings");
      metadata = entry as Record<string, string>;
      continue;
    }
    if (!isRecord(entry)) fail(file, name, "header entry must be an object { dtype, shape, data_offsets }");
    for (const k of Object.keys(entry))
      if (!["dtype", "shape", "data_offsets"].includes(k)) fail(file, name, `unknown header field ${JSON.stringify(k)}`);
    const dtype = entry.dtype;
    if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_BYTES, dtype)) {
      fail(file, name, `unsupported dtype ${JSON.stringify(dtype)} (supported: ${SAFETENSORS_DTYPES.join(", ")})`);
    }
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(file, name, `shape must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    const offsets = entry.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      fail(file, name, `data_offsets must be [begin, end] of non-negative integers, got ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(file, name, `data_offsets [${begin}, ${end}]: end before begin`);
    if (end > dataBytes)
      fail(file, name, `data_offsets [${begin}, ${end}] lie beyond the data buffer (${dataBytes} bytes): truncated file or bad header`);
    const numel = numelOf(shape as number[]);
    const bytes = numel * DTYPE_BYTES[dtype as SafetensorsDtype];
    if (end - begin !== bytes) {
      fail(
        file,
        name,
        `data_offsets [${begin}, ${end}] hold ${end - begin} bytes, but shape [${shape.join(", ")}] of ${dtype} needs ${bytes}`,
      );
    }
    tensors.set(name, {
      name,
      dtype: dtype as SafetensorsDtype,
      shape: Object.freeze([...(shape as number[])]),
      numel,
      file,
      fileOffset: dataStart + begin,
      byteLength: bytes,
    });
    spans.push({ name, begin, end });
  }
  // Sorted by begin, a non-empty span overlaps an earlier one iff it starts before the furthest end so far.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let furthest: { name: string; begin: number; end: number } | null = null;
  for (const cur of spans) {
    if (cur.end === cur.begin) continue; // an empty tensor occupies no bytes
    if (furthest !== null && cur.begin < furthest.end) {
      fail(
        file,
        cur.name,
        `data_offsets [${cur.begin}, ${cur.end}] overlap tensor ${JSON.stringify(furthest.name)} [${furthest.begin}, ${furthest.end}]`,
      );
    }
    if (furthest === null || cur.end > furthest.end) furthest = cur;
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------------------------------
// Sharded checkpoints

/** A checkpoint folder: model.safetensors.index.json + shards, or a single model.safetensors. */
export class SafetensorsCheckpoint implements TensorReader {
  readonly dir: string;
  /** The index file when sharded, else the single file. */
  readonly source: string;
  private readonly files: SafetensorsFile[];
  private readonly where: Map<string, SafetensorsFile>;

  private constructor(dir: string, source: string, files: SafetensorsFile[], where: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.source = source;
    this.files = files;
    this.where = where;
  }

  static open(dir: string): SafetensorsCheckpoint {
    const indexPath = join(dir, INDEX_FILE);
    const singlePath = join(dir, SINGLE_FILE);
    if (!existsSync(indexPath)) {
      if (!existsSync(singlePath)) fail(dir, null, `no ${INDEX_FILE} and no ${SINGLE_FILE}: not a safetensors checkpoint folder`);
      const f = SafetensorsFile.open(singlePath);
      return new SafetensorsCheckpoint(dir, singlePath, [f], new Map(f.names().map((n) => [n, f])));
    }
    let index: unknown;
    try {
      index = JSON.parse(readFileSync(indexPath, "utf8"));
    } catch (e) {
      fail(indexPath, null, `index JSON invalid (${(e as Error).message})`);
    }
    if (!isRecord(index) || !isRecord(index.weight_map))
      fail(indexPath, null, 'must be { "metadata": {...}, "weight_map": { tensor: file } }');
    const byFile = new Map<string, string[]>();
    for (const [name, f] of Object.entries(index.weight_map)) {
      if (typeof f !== "string" || f.includes("/") || f.includes("\\"))
        fail(indexPath, name, `weight_map entry must be a file name in the folder, got ${JSON.stringify(f)}`);
      byFile.set(f, [...(byFile.get(f) ?? []), name]);
    }
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    try {
      for (const [fname, listed] of byFile) {
        const path = join(dir, fname);
        if (!existsSync(path)) fail(indexPath, listed[0]!, `its shard ${fname} does not exist`);
        const f = SafetensorsFile.open(path);
        files.push(f);
        for (const name of listed) if (!f.has(name)) fail(path, name, `missing (${INDEX_FILE} places it in this shard)`);
        for (const name of f.names()) {
          if (index.weight_map[name] !== fname)
            fail(path, name, `in this shard but ${INDEX_FILE} maps it to ${JSON.stringify(index.weight_map[name] ?? null)}`);
          where.set(name, f);
        }
      }
      const total = isRecord(index.metadata) ? index.metadata.total_size : undefined;
      if (total !== undefined) {
        let sum = 0;
        for (const f of files) for (const n of f.names()) sum += f.info(n).byteLength;
        // transformers writes the sum of tensor bytes; some tools count the dtype size differently, so
        // only a larger claim than what exists is an error (something would be missing).
        if (typeof total !== "number" || total > sum)
          fail(indexPath, null, `metadata.total_size ${JSON.stringify(total)} exceeds the ${sum} tensor bytes in the shards`);
      }
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    return new SafetensorsCheckpoint(dir, indexPath, files, where);
  }

  private file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (f === undefined) fail(this.source, name, "missing from the checkpoint");
    return f;
  }

  names(): string[] {
    return [...this.where.keys()];
  }
  has(name: string): boolean {
    return this.where.has(name);
  }
  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }
  readBytes(name: string, out?: Uint8Array): Uint8Array {
    return this.file(name).readBytes(name, out);
  }
  readF32(name: string, out?: Float32Array): Float32Array {
    return this.file(name).readF32(name, out);
  }
  readBf16(name: string, out?: Uint16Array): Uint16Array {
    return this.file(name).readBf16(name, out);
  }
  readI32(name: string, out?: Int32Array): Int32Array {
    return this.file(name).readI32(name, out);
  }
  close(): void {
    for (const f of this.files) f.close();
  }
}
