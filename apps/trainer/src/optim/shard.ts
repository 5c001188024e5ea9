// ZeRO-3 sharding arithmetic (DESIGN.md section 4): each layer's parameters are one flat buffer of
// `numel` elements, padded to R equal shards; rank r owns padded elements [r * shardLen, (r+1) * shardLen)
// (its fp32 master weights, AdamW moments and gradient shard), the padding being zeros that nothing
// reads. The all-gather of R shards is the padded buffer; the reduce-scatter of a padded gradient buffer
// gives each rank its shard. shardLen is rounded up to a multiple of SHARD_ALIGN elements so every
// shard of every dtype begins 16-byte aligned (8 bf16 = 16 bytes) and the vector paths of the kernels
// apply to every shard.

export const SHARD_ALIGN = 8;

export interface ShardLayout {
  /** Real elements of the flat buffer. */
  numel: number;
  ranks: number;
  /** Elements per shard (padding included). */
  shardLen: number;
  /** ranks * shardLen >= numel. */
  padded: number;
}

export function shardLayout(numel: number, ranks: number, align = SHARD_ALIGN): ShardLayout {
  if (!Number.isSafeInteger(numel) || numel < 0) throw new RangeError(`shardLayout: numel must be a non-negative integer, got ${numel}`);
  if (!Number.isSafeInteger(ranks) || ranks < 1) throw new RangeError(`shardLayout: ranks must be an integer >= 1, got ${ranks}`);
  const shardLen = Math.ceil(Math.ceil(numel / ranks) / align) * align;
  return { numel, ranks, shardLen, padded: shardLen * ranks };
}

/** Rank r's range of the flat buffer: [start, start + len) real elements (len < shardLen at the end, possibly 0). */
export function ownedRange(l: ShardLayout, rank: number): { start: number; len: number } {
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= l.ranks) throw new RangeError(`ownedRange: rank ${rank} outside [0, ${l.ranks})`);
  const start = rank * l.shardLen;
  return { start, len: Math.max(0, Math.min(l.shardLen, l.numel - start)) };
}

/** The rank owning flat element `index`. */
export function ownerOf(l: ShardLayout, index: number): number {
  if (!Number.isSafeInteger(index) || index < 0 || index >= l.numel)
    throw new RangeError(`ownerOf: index ${index} outside [0, ${l.numel})`);
  return Math.floor(index / l.shardLen);
}

/** A named parameter's place in its layer's flat buffer. */
export interface ParamRange {
  name: string;
  start: number;
  numel: number;
  /** Whether AdamW's weight decay applies (not on norms and embeddings). */
  decay: boolean;
}

/** Parameters laid out back to back in the given order (the order the model's gradient sink uses). */
export function flatLayout(params: readonly { name: string; numel: number }[], decays: (name: string) => boolean = decayed): ParamRange[] {
  let start = 0;
  return params.map(({ name, numel }) => {
    const r = { name, start, numel, decay: decays(name) };
    start += numel;
    return r;
  });
}

/** Norm weights and embeddings are not decayed (the usual practice for Llama training); matrices are. */
export function decayed(name: string): boolean {
  return !/norm/i.test(name) && !/^embed/i.test(name);
}

/** A piece of a rank's shard with one decay setting: shard-local [offset, offset + len). */
export interface ShardSegment {
  offset: number;
  len: number;
  decay: boolean;
  name: string;
}

/** The parameter ranges that fall inside rank r's shard, cut to it, in order (the AdamW launches). */
export function shardSegments(l: ShardLayout, params: readonly ParamRange[], rank: number): ShardSegment[] {
  const { start, len } = ownedRange(l, rank);
  const end = start + len;
  const out: ShardSegment[] = [];
  for (const p of params) {
    const a = Math.max(start, p.start);
    const b = Math.min(end, p.start + p.numel);
    if (a < b) out.push({ offset: a - start, len: b - a, decay: p.decay, name: p.name });
  }
  return out;
}
