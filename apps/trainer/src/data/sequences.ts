// Sequences of `seq` tokens cut from the packed stream (sequence i is stream[i*seq, (i+1)*seq); the
// tail shorter than one sequence is not used), and one rank's share of a sequence: the tokens, next-
// token labels and global positions of its chunks, given as global [start, len) ranges in local order
// (what the attention package's localRanges returns). A chunk's last label is the first token of the
// global position after it, wherever that chunk lives; the sequence's last position has no label
// (IGNORE_INDEX), as each sequence is trained on alone.

import type { TokenFile } from "./token-file.ts";
import { DataError } from "./tokenizer.ts";

/** Label of a position that has no next token (PyTorch's cross-entropy ignore_index). */
export const IGNORE_INDEX = -100;

export interface RankBatch {
  tokens: Int32Array;
  labels: Int32Array;
  /** Global position of each local token (RoPE). */
  positions: Int32Array;
}

export class PackedSequences {
  readonly count: number;

  constructor(
    readonly file: TokenFile,
    readonly seq: number,
    name = file.path,
  ) {
    const n = file.tokens.length;
    this.count = Math.floor(n / seq);
    if (this.count < 1)
      throw new DataError(`${name}: ${n} tokens, shorter than one sequence of --seq ${seq}: give more text or a smaller --seq`);
  }

  /** The whole sequence i (a view into the mapped file). */
  sequence(i: number): Uint16Array | Uint32Array {
    this.check(i);
    return this.file.tokens.subarray(i * this.seq, (i + 1) * this.seq);
  }

  /** Tokens, labels and positions of sequence i at `ranges` (global [start, len) of each local chunk). */
  chunks(i: number, ranges: readonly (readonly [number, number])[]): RankBatch {
    const s = this.sequence(i);
    const total = ranges.reduce((a, [, len]) => a + len, 0);
    const tokens = new Int32Array(total);
    const labels = new Int32Array(total);
    const positions = new Int32Array(total);
    let k = 0;
    for (const [start, len] of ranges) {
      if (start < 0 || len < 0 || start + len > this.seq)
        throw new DataError(`chunk [${start}, ${start + len}) outside a sequence of ${this.seq}`);
      for (let p = start; p < start + len; p++, k++) {
        tokens[k] = s[p] as number;
        labels[k] = p + 1 < this.seq ? (s[p + 1] as number) : IGNORE_INDEX;
        positions[k] = p;
      }
    }
    return { tokens, labels, positions };
  }

  private check(i: number): void {
    if (!Number.isSafeInteger(i) || i < 0 || i >= this.count) throw new DataError(`sequence ${i} outside [0, ${this.count})`);
  }
}
