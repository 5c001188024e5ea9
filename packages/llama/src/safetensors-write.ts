// safetensors writing (format: safetensors-format.ts), one file or a sharded checkpoint folder as
// transformers writes it; reading is in safetensors.ts. Writing streams tensor by tensor: the header
// (with every offset, padded with spaces to a multiple of 8 bytes) goes first, then each tensor in
// order, into a temporary file renamed at the end, so only one tensor's bytes need exist at once.

import { closeSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { encodeBf16 } from "@lightseq/tensor";
import { encodeF16 } from "./f16.ts";
import {
  DTYPE_BYTES,
  fail,
  INDEX_FILE,
  IO_CHUNK,
  numelOf,
  type SafetensorsDtype,
  SafetensorsError,
  SINGLE_FILE,
} from "./safetensors-format.ts";

export interface TensorSpec {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
}

/**
 * Tensor data to write: a Float32Array is converted to the spec's dtype (F32 as is, BF16/F16 rounded to
 * nearest even); a Uint16Array is taken as the raw bits of a BF16/F16 spec; an Int32Array for I32;
 * a Uint8Array as the exact bytes of any dtype.
 */
export type TensorData = Float32Array | Uint16Array | Int32Array | Uint8Array;

function toBytes(spec: TensorSpec, data: TensorData, file: string): Uint8Array {
  const numel = numelOf(spec.shape);
  const bytes = numel * DTYPE_BYTES[spec.dtype];
  const view = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let out: Uint8Array;
  if (data instanceof Uint8Array) out = data;
  else if (data instanceof Float32Array) {
    if (data.length !== numel) fail(file, spec.name, `data has ${data.length} elements, shape [${spec.shape.join(", ")}] has ${numel}`);
    if (spec.dtype === "F32") out = view(data);
    else if (spec.dtype === "BF16") out = view(encodeBf16(data));
    else if (spec.dtype === "F16") out = view(encodeF16(data));
    else fail(file, spec.name, "an I32 tensor takes an Int32Array, not a Float32Array");
  } else if (data instanceof Uint16Array) {
    if (spec.dtype !== "BF16" && spec.dtype !== "F16")
      fail(file, spec.name, `a Uint16Array holds BF16/F16 bits, but the tensor is ${spec.dtype}`);
    out = view(data);
  } else {
    if (spec.dtype !== "I32") fail(file, spec.name, `an Int32Array is data for I32, but the tensor is ${spec.dtype}`);
    out = view(data);
  }
  if (out.byteLength !== bytes)
    fail(file, spec.name, `data has ${out.byteLength} bytes, shape [${spec.shape.join(", ")}] of ${spec.dtype} needs ${bytes}`);
  return out;
}

/**
 * Streams one safetensors file: the header (every offset known from the specs) is written at
 * construction, then `write` takes each tensor in spec order; `finish` renames the temporary file to
 * `path`. `abort` removes the temporary file.
 */
export class SafetensorsWriter {
  readonly path: string;
  private readonly tmp: string;
  private readonly specs: readonly TensorSpec[];
  private fd: number | null;
  private next = 0;
  private position: number;

  constructor(path: string, specs: readonly TensorSpec[], metadata?: Record<string, string>) {
    const seen = new Set<string>();
    for (const s of specs) {
      if (s.name === "__metadata__" || s.name.length === 0) fail(path, s.name, "reserved or empty tensor name");
      if (seen.has(s.name)) fail(path, s.name, "listed twice");
      seen.add(s.name);
      if (!Object.hasOwn(DTYPE_BYTES, s.dtype)) fail(path, s.name, `unsupported dtype ${JSON.stringify(s.dtype)}`);
      if (!s.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(path, s.name, `bad shape ${JSON.stringify(s.shape)}`);
    }
    const header: Record<string, unknown> = {};
    if (metadata !== undefined) header.__metadata__ = metadata;
    let offset = 0;
    for (const s of specs) {
      const bytes = numelOf(s.shape) * DTYPE_BYTES[s.dtype];
      header[s.name] = { dtype: s.dtype, shape: [...s.shape], data_offsets: [offset, offset + bytes] };
      offset += bytes;
    }
    let json = new TextEncoder().encode(JSON.stringify(header));
    const padded = Math.ceil((8 + json.byteLength) / 8) * 8 - 8;
    if (padded !== json.byteLength) {
      const p = new Uint8Array(padded).fill(0x20);
      p.set(json);
      json = p;
    }
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(json.byteLength), true);
    this.path = path;
    this.tmp = `${path}.partial`;
    this.specs = specs;
    this.fd = openSync(this.tmp, "w");
    this.position = 0;
    this.append(prefix);
    this.append(json);
  }

  private append(bytes: Uint8Array): void {
    if (this.fd === null) fail(this.path, null, "write after finish() or abort()");
    let done = 0;
    while (done < bytes.byteLength) {
      const n = writeSync(this.fd, bytes, done, Math.min(IO_CHUNK, bytes.byteLength - done), this.position + done);
      done += n;
    }
    this.position += bytes.byteLength;
  }

  /** Writes the next tensor; its name must be the next spec's (the header fixed the order). */
  write(name: string, data: TensorData): void {
    const spec = this.specs[this.next];
    if (spec === undefined) fail(this.path, name, "one tensor more than the header lists");
    if (spec.name !== name) fail(this.path, name, `written out of order: the header places ${JSON.stringify(spec.name)} next`);
    this.append(toBytes(spec, data, this.path));
    this.next++;
  }

  finish(): void {
    if (this.next !== this.specs.length) {
      const missing = this.specs[this.next]!.name;
      this.abort();
      fail(this.path, missing, `never written (${this.specs.length - this.next} of ${this.specs.length} tensors missing)`);
    }
    closeSync(this.fd!);
    this.fd = null;
    renameSync(this.tmp, this.path);
  }

  abort(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    rmSync(this.tmp, { force: true });
  }
}

/** Writes one file from specs with their data. */
export function writeSafetensors(
  path: string,
  tensors: readonly (TensorSpec & { data: TensorData })[],
  metadata?: Record<string, string>,
): void {
  const w = new SafetensorsWriter(path, tensors, metadata);
  try {
    for (const t of tensors) w.write(t.name, t.data);
  } catch (e) {
    w.abort();
    throw e;
  }
  w.finish();
}

export interface ShardedWriteOptions {
  /** Upper bound of a shard's data bytes; a single larger tensor gets a shard of its own. */
  shardBytes: number;
  metadata?: Record<string, string>;
}

/** Splits specs, in order, into shards of at most shardBytes data bytes each. */
export function planShards(specs: readonly TensorSpec[], shardBytes: number): TensorSpec[][] {
  if (!Number.isSafeInteger(shardBytes) || shardBytes <= 0)
    throw new SafetensorsError(`shardBytes must be a positive integer, got ${shardBytes}`);
  const shards: TensorSpec[][] = [];
  let cur: TensorSpec[] = [];
  let bytes = 0;
  for (const s of specs) {
    const b = numelOf(s.shape) * DTYPE_BYTES[s.dtype];
    if (cur.length > 0 && bytes + b > shardBytes) {
      shards.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(s);
    bytes += b;
  }
  if (cur.length > 0) shards.push(cur);
  return shards;
}

/**
 * Writes a checkpoint folder as transformers does: one shard -> model.safetensors; several ->
 * model-0000i-of-0000n.safetensors + model.safetensors.index.json. `data(spec)` is asked for one tensor
 * at a time, in spec order, so only one tensor's bytes need exist at once. Returns the files written.
 */
export async function writeShardedSafetensors(
  dir: string,
  specs: readonly TensorSpec[],
  data: (spec: TensorSpec) => TensorData | Promise<TensorData>,
  o: ShardedWriteOptions,
): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const shards = planShards(specs, o.shardBytes);
  const n = shards.length;
  const fileName = (i: number) =>
    n === 1 ? SINGLE_FILE : `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;
  const weightMap: Record<string, string> = {};
  let total = 0;
  const written: string[] = [];
  for (let i = 0; i < n; i++) {
    const shard = shards[i]!;
    const path = join(dir, fileName(i));
    const w = new SafetensorsWriter(path, shard, { format: "pt", ...o.metadata });
    try {
      for (const s of shard) {
        w.write(s.name, await data(s));
        weightMap[s.name] = fileName(i);
        total += numelOf(s.shape) * DTYPE_BYTES[s.dtype];
      }
    } catch (e) {
      w.abort();
      throw e;
    }
    w.finish();
    written.push(path);
  }
  const indexPath = join(dir, INDEX_FILE);
  if (n > 1) {
    await Bun.write(indexPath, `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
    written.push(indexPath);
  } else {
    rmSync(indexPath, { force: true }); // a stale index from an earlier sharded save would shadow model.safetensors
  }
  return written;
}
