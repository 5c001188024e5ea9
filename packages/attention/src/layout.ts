// Attention layouts, in one place. Every backend (reference, CUDA, cuDNN), the merge and DistAttn use these.
//
//   q  [Tq, Hq, D]    o  [Tq, Hq, D]  (dtype of q)    lse [Hq, Tq] f32, natural log
//   k  [Tk, Hkv, D]   v  [Tk, Hkv, D]
//   dO like o;  dq like q;  dk, dv like k, v.
//   Row-major and contiguous; q, k, v, o, dO, dq, dk, dv share one dtype (f32 or bf16); lse is always f32.
//   Exceptions for fp32 accumulation (block.ts): forward may write o in f32 (outDtype), and backward may
//   add into f32 dq/dk/dv (accumulate). The o given to backward is always in q's dtype.
//
// Why tokens outermost for q/k/v/o: it is what the QKV projection writes ([T, C] with C = H*D), so no
// transpose sits between the GEMMs and attention, and a contiguous run of tokens (a DistAttn chunk, or
// one of the K/V blocks a rank receives) is a plain `narrow` view.
// Why lse [Hq, Tq]: a flash kernel's thread block owns (head, run of query rows) and writes its rows'
// lse contiguously, and the backward reads it the same way; FA2 and LightSeq both keep [b*h, s]. The cost:
// a run of query rows is not a view of lse, so a caller holding several query chunks (zigzag) keeps one
// lse tensor per chunk.
//
// GQA/MQA: Hq is a multiple of Hkv; query head h reads kv head floor(h / (Hq / Hkv)) (consecutive query
// heads share a kv head, as in Llama). Hkv = Hq is MHA, Hkv = 1 is MQA. K/V are never repeated in memory.
//
// Causal masking is bottom-right aligned (as FlashAttention-2): key j is visible to query i iff
// j <= i + (Tk - Tq). With Tq == Tk this is the usual j <= i. With Tq < Tk the queries are the LAST Tq
// positions of the key sequence, which is exactly DistAttn's case: query chunk c against the keys of
// chunks 0..c concatenated is global causal attention for that chunk. With Tq > Tk the first Tq - Tk
// rows see no key. `causal: false` makes every key visible to every query.
//
// A row with no visible key has o = 0, lse = -Infinity and zero gradient contributions (never NaN):
// an empty softmax sums to 0, so log(0) = -Infinity, and the merge gives such a partial weight 0.
//
// scale defaults to 1/sqrt(D). The reference accepts any D >= 1; fast paths take D in FAST_HEAD_DIMS.

import { TensorError } from "@lightseq/tensor";

/** Errors from attention argument checks; messages name the argument, what was expected and what came. */
export class AttentionError extends TensorError {
  override name = "AttentionError";
}

/** Head dims the CUDA block kernels are built for. */
export const FAST_HEAD_DIMS: readonly number[] = Object.freeze([64, 128]);

/** Sizes of one block call. */
export interface AttentionDims {
  /** query rows */
  Tq: number;
  /** key/value rows */
  Tk: number;
  /** query heads */
  Hq: number;
  /** key/value heads; divides Hq */
  Hkv: number;
  /** head dim */
  D: number;
}

/** The kv head read by query head h. */
export function kvHeadOf(h: number, Hq: number, Hkv: number): number {
  return Math.floor(h / (Hq / Hkv));
}

/** How many keys query row i sees: keys 0 .. n-1 (bottom-right causal, or all Tk when not causal). */
export function visibleKeys(i: number, Tq: number, Tk: number, causal: boolean): number {
  if (!causal) return Tk;
  return Math.max(0, Math.min(Tk, i + (Tk - Tq) + 1));
}

/** The default softmax scale, 1/sqrt(D). */
export function defaultScale(D: number): number {
  return 1 / Math.sqrt(D);
}
