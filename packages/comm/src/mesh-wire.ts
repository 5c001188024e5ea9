// The CPU mesh's frames (mesh.ts moves them): their layout, their kinds and dtypes, and the checks a
// header must pass before anything is allocated for its payload. A frame is a 16-byte header, then
// the payload: u32 payload bytes (low), u32 payload bytes (high), u32 communicator tag, u8 kind,
// u8 dtype, u16 0. The tag (tagOf) lets sub-communicators (split) share the connections; frames of
// one (tag, peer) pair are received in the order they were sent, which is the matching rule of NCCL.
// From an identified peer, a header that disagrees with the receive posted for it (kind, dtype, size:
// mismatch), or that is absurd (unknown kind, a second hello, a payload no typed array could hold:
// headerProblem), fails the mesh with an error naming the peer; a connection not yet identified may
// send only a hello of at most MAX_HELLO_BYTES.

export const HEADER_BYTES = 16;
/** The largest typed array (JSC: 4 GiB): a payload is one, so no peer can have sent more. */
const MAX_PAYLOAD_BYTES = 2 ** 32;
/** A hello holds a rank, a size and a session id. */
export const MAX_HELLO_BYTES = 4096;
/** An abort holds one failure message (truncated to fit when sent). */
export const MAX_ABORT_BYTES = 64 * 1024;

export const FrameKind = {
  hello: 1,
  bye: 2,
  p2p: 3,
  allReduce: 4,
  allGather: 5,
  reduceScatter: 6,
  broadcast: 7,
  barrier: 8,
  split: 9,
  abort: 10,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
const KNOWN_KINDS = new Set<number>(Object.values(FrameKind));

export function frameKindName(k: number): string {
  for (const [name, v] of Object.entries(FrameKind)) if (v === k) return name;
  return `kind ${k}`;
}

/** The header's dtype byte of a data frame (0: no elements, e.g. barrier). */
export const DTYPE_CODE = { f32: 1, bf16: 2, i32: 3 } as const;

export function dtypeName(code: number): string {
  if (code === 0) return "none";
  for (const [name, v] of Object.entries(DTYPE_CODE)) if (v === code) return name;
  return `dtype ${code}`;
}

/** What a receive expects of its frame; a frame that differs fails the mesh. */
export interface Expected {
  kind: FrameKind;
  dtype: number;
  bytes: number;
  /** Where the payload lands, of `bytes` bytes (no intermediate buffer, no first-touch pages). */
  into?: Uint8Array;
}

export interface Header {
  bytes: number;
  tag: number;
  kind: number;
  dtype: number;
}

export interface Frame {
  readonly tag: number;
  readonly kind: number;
  readonly dtype: number;
  readonly payload: Uint8Array;
}

/** The header at the start of `bytes` (at least HEADER_BYTES of them). */
export function readHeader(bytes: Uint8Array): Header {
  const h = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  return {
    bytes: h.getUint32(0, true) + h.getUint32(4, true) * 2 ** 32,
    tag: h.getUint32(8, true),
    kind: h.getUint8(12),
    dtype: h.getUint8(13),
  };
}

/**
 * Why a header from identified `peer` cannot be right, or null; `want` is what the next receive
 * posted for its (tag, peer) pair expects, if one is posted.
 */
export function headerProblem(peer: number, h: Header, want: Expected | undefined): string | null {
  const corrupt = "the stream is corrupt or not from a lightseq rank";
  switch (h.kind) {
    case FrameKind.hello:
      return `rank ${peer} sent a second hello (${corrupt})`;
    case FrameKind.bye:
      return h.bytes === 0 ? null : `rank ${peer} sent a bye with a ${h.bytes}-byte payload (${corrupt})`;
    case FrameKind.abort:
      return h.bytes <= MAX_ABORT_BYTES ? null : `rank ${peer} sent an abort of ${h.bytes} bytes, over ${MAX_ABORT_BYTES} (${corrupt})`;
  }
  if (!KNOWN_KINDS.has(h.kind)) return `rank ${peer} sent a frame of unknown kind ${h.kind} (${corrupt})`;
  if (h.bytes > MAX_PAYLOAD_BYTES)
    return `rank ${peer} sent a frame header of ${h.bytes} bytes, more than any tensor holds (${MAX_PAYLOAD_BYTES}) (${corrupt})`;
  return want ? mismatch(peer, h, want) : null;
}

/** Why a data frame from `peer` is not the one a receive expects, or null. */
export function mismatch(peer: number, h: Header, want: Expected): string | null {
  if (h.kind === want.kind && h.dtype === want.dtype && h.bytes === want.bytes) return null;
  return `mismatched call from rank ${peer}: it sent ${frameKindName(h.kind)} data (${dtypeName(h.dtype)}, ${h.bytes} bytes) where this rank expected ${frameKindName(want.kind)} (${dtypeName(want.dtype)}, ${want.bytes} bytes); every rank must issue the same operations in the same order`;
}

export function frameBytes(tag: number, kind: number, dtype: number, payload: Uint8Array, withPayload = true): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + (withPayload ? payload.byteLength : 0));
  const h = new DataView(out.buffer);
  const n = payload.byteLength;
  h.setUint32(0, n % 2 ** 32, true);
  h.setUint32(4, Math.floor(n / 2 ** 32), true);
  h.setUint32(8, tag, true);
  h.setUint8(12, kind);
  h.setUint8(13, dtype);
  if (withPayload) out.set(payload, HEADER_BYTES);
  return out;
}

/** FNV-1a of a string: the tag of a sub-communicator, the same on every member. */
export function tagOf(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
