// The order sequences are read in: epoch e is a permutation of [0, count) drawn from (seed, e), so the
// whole order is a function of the seed, and the position in it is four numbers a snapshot stores.
// Every rank advances the same order by the global batch each step; a data-parallel replica takes its
// slice of that batch (sequencesForStep).

import { DataError } from "./tokenizer.ts";

/** Where the reader is: serializable as JSON, enough to continue exactly. */
export interface OrderState {
  seed: number;
  /** Sequences in the corpus the order was made for. */
  count: number;
  epoch: number;
  /** Next position within the epoch's permutation. */
  next: number;
}

// sfc32 (Chris Doty-Humphrey's small fast counting generator), seeded from (seed, epoch) through a
// splitmix32 mix: 32-bit integer arithmetic only, so every platform draws the same permutation.
function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function sfc32(a: number, b: number, c: number, d: number): () => number {
  return () => {
    a |= 0;
    b |= 0;
    c |= 0;
    d |= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
}

/** Permutation of [0, count) for (seed, epoch): Fisher-Yates with 53-bit uniform draws. */
export function permutation(count: number, seed: number, epoch: number): Uint32Array {
  const s0 = splitmix32(seed ^ 0x5eed);
  const s1 = splitmix32(s0 ^ epoch);
  const s2 = splitmix32(s1 ^ Math.floor(seed / 2 ** 32));
  const s3 = splitmix32(s2 ^ Math.floor(epoch / 2 ** 32));
  const next = sfc32(s0, s1, s2, s3);
  for (let i = 0; i < 12; i++) next(); // leave the seeding's correlations behind
  const p = new Uint32Array(count);
  for (let i = 0; i < count; i++) p[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const u = (next() * 2 ** 21 + (next() >>> 11)) / 2 ** 53; // [0, 1) with 53 bits
    const j = Math.floor(u * (i + 1));
    const t = p[i] as number;
    p[i] = p[j] as number;
    p[j] = t;
  }
  return p;
}

export class SequenceOrder {
  private perm: Uint32Array;
  private st: OrderState;

  constructor(count: number, seed: number, state?: OrderState) {
    if (count < 1) throw new DataError("the data order needs at least one sequence");
    if (state && (state.count !== count || state.seed !== seed))
      throw new DataError(
        `the snapshot's data order is over ${state.count} sequences with seed ${state.seed}, this run has ${count} with seed ${seed}: ` +
          "resume with the same --data, --tokenizer, --seq and --seed",
      );
    this.st = state ? { ...state } : { seed, count, epoch: 0, next: 0 };
    this.perm = permutation(count, seed, this.st.epoch);
  }

  /** The next n sequence indices (crossing into the next epoch's permutation when one ends). */
  take(n: number): number[] {
    const out: number[] = [];
    while (out.length < n) {
      if (this.st.next === this.st.count) {
        this.st.epoch++;
        this.st.next = 0;
        this.perm = permutation(this.st.count, this.st.seed, this.st.epoch);
      }
      out.push(this.perm[this.st.next++] as number);
    }
    return out;
  }

  state(): OrderState {
    return { ...this.st };
  }
}

/** This replica's sequences of the next step: the global batch is taken from `order` (every rank does), replica r gets its contiguous slice. */
export function sequencesForStep(order: SequenceOrder, batch: number, dp: number, replica: number): number[] {
  if (batch % dp !== 0) throw new DataError(`batch ${batch} is not a multiple of the data-parallel degree ${dp}`);
  const all = order.take(batch);
  const per = batch / dp;
  return all.slice(replica * per, (replica + 1) * per);
}
