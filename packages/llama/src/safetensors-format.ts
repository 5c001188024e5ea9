// The safetensors format as both the reader (safetensors.ts) and the writer (safetensors-write.ts) see
// it (shared/reference/llama.md section 2): u64 LE header length N | N bytes of JSON header | data
// buffer, the header mapping a tensor name to { dtype, shape, data_offsets: [begin, end] } (relative to
// the buffer) plus an optional "__metadata__": { string: string }. Here: the dtypes and their sizes, the
// file names of a checkpoint folder, the error type and its one-line message shape, and the I/O chunk
// sizes. safetensors.ts re-exports the public names; this module is not meant to be imported elsewhere.

export type SafetensorsDtype = "BF16" | "F16" | "F32" | "I32";

export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = { BF16: 2, F16: 2, F32: 4, I32: 4 };
export const SAFETENSORS_DTYPES = Object.keys(DTYPE_BYTES) as readonly SafetensorsDtype[];

export function dtypeBytes(dtype: SafetensorsDtype): number {
  return DTYPE_BYTES[dtype];
}

/** The safetensors format caps the header at 100 MB; a larger length is a corrupt file. */
export const MAX_HEADER_BYTES = 100_000_000;
/** Bytes per readSync/writeSync call (the calls take 32-bit lengths) and per conversion chunk. */
export const IO_CHUNK = 1 << 30;
export const CONVERT_ELEMS = 1 << 22;
export const INDEX_FILE = "model.safetensors.index.json";
export const SINGLE_FILE = "model.safetensors";

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("safetensors.ts assumes a little-endian host (safetensors data is little-endian)");
}

export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

export function fail(file: string, tensor: string | null, message: string): never {
  throw new SafetensorsError(tensor === null ? `${file}: ${message}` : `${file}: tensor ${JSON.stringify(tensor)}: ${message}`);
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
