// What a layer holds per local token (the estimator's terms are built from these): the bytes of each
// saved tensor, and what is alive beyond the kept tensors in a layer's backward, in a skip layer's
// re-forward, and in DistAttn's calls on one rank. Each follows the code it counts (packages/llama
// layer.ts, packages/attention distattn.ts and its cuDNN backend); estimator.ts says how they add up.

import type { SavedName } from "./policy.ts";

/** The [T, ffn]-wide saved tensors: gate|up and SwiGLU. */
export const MLP_WIDE: readonly SavedName[] = ["gu", "a"];

/** The model shape the estimate needs (a LlamaConfig is one). */
export interface ModelShape {
  readonly dim: number;
  readonly layers: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly ffn: number;
  readonly vocab: number;
  readonly tiedEmbeddings: boolean;
}

/** Bytes per local token of each saved tensor of one layer (activations bf16, rstd and lse f32). */
export function savedBytesPerToken(m: ModelShape, name: SavedName): number {
  const C = m.dim;
  const q = m.heads * m.headDim;
  const kv = m.kvHeads * m.headDim;
  switch (name) {
    case "x":
    case "xn":
    case "h":
    case "hn":
      return 2 * C;
    case "rstd1":
    case "rstd2":
      return 4;
    case "q":
    case "o":
      return 2 * q;
    case "k":
    case "v":
      return 2 * kv;
    case "lse":
      return 4 * m.heads;
    case "gu":
      return 2 * 2 * m.ffn;
    case "a":
      return 2 * m.ffn;
  }
}

/**
 * Bytes alive beyond the kept tensors during a layer's backward, in its two phases (layer.ts's order),
 * for T local tokens, the [T, ffn] tensors existing for `wide` tokens at a time (T when untiled):
 *   MLP backward:       dy, the recomputed attention inputs (full only) and attention output,
 *                       the recomputed MLP inputs, dgu and max(da, dhn) (tiled: da and dgu per chunk,
 *                       dhn whole);
 *   attention backward: dh, the recomputed attention inputs and output, and the larger of dO beside dq,
 *                       dk, dv (the attention call) and dq, dk, dv beside dqkv (RoPE's backward);
 * and in both the layer input x when it was not kept (skip: re-run from an earlier layer).
 */
export function layerBackwardPhases(
  m: ModelShape,
  kept: readonly SavedName[],
  T: number,
  wide: number,
): { mlp: { bytes: number; detail: string }; attention: { bytes: number; detail: string } } {
  const b = (n: SavedName) => (kept.includes(n) ? 0 : savedBytesPerToken(m, n));
  const sum = (ns: readonly SavedName[]) => ns.reduce((s, n) => s + b(n), 0);
  const C2 = 2 * m.dim;
  const q = 2 * m.heads * m.headDim;
  const kv = 2 * m.kvHeads * m.headDim;
  const da = 2 * m.ffn;
  const dgu = 4 * m.ffn;
  const attnIn = sum(["rstd1", "xn", "q", "k", "v"]);
  const attnOut = sum(["o", "lse"]);
  const attnInDuringMlp = attnOut > 0 ? attnIn : 0; // recomputed first only when attention itself is
  const tiled = wide < T;
  const x = b("x");
  const narrow = C2 + x + attnInDuringMlp + attnOut + sum(["h", "rstd2", "hn"]) + (tiled ? C2 : 0);
  const wideBytes = sum(MLP_WIDE) + dgu + (tiled ? da : Math.max(da, C2));
  const mlp = narrow * T + wideBytes * wide;
  const attention = (C2 + x + attnIn + attnOut + 2 * (q + 2 * kv)) * T;
  return {
    mlp: {
      bytes: mlp,
      detail: tiled
        ? `${KiB(narrow)} per token + ${KiB(wideBytes)} per token of a ${wide}-token MLP tile (recomputed MLP inputs, gradients)`
        : `${KiB(narrow + wideBytes)} per token (recomputed MLP inputs, gradients)`,
    },
    attention: {
      bytes: attention,
      detail: `${KiB(attention / T)} per token (dh, ${x > 0 ? "the re-run input x, " : ""}recomputed attention inputs, dq, dk, dv beside dqkv)`,
    },
  };
}

/**
 * Bytes alive beyond the kept tensors while a skip layer's backward re-runs an earlier layer's forward
 * keeping nothing (layer.ts frees each stage's tensors once the next stage has run), for T local
 * tokens, the MLP's [T, ffn] tensors `wide` tokens at a time: dy, the re-run layer's input when it is
 * itself re-run (`ownInput`: a run of skips; else it is the kept x) and the largest of its stages:
 *   QKV:        xn, rstd1, the qkv GEMM output and q, k, v after RoPE;
 *   attention:  xn, rstd1, q, k, v, o, lse;
 *   MLP in:     o, lse, h, rstd2, hn and the o-proj output (untiled: gu and a instead, the larger);
 *   MLP out:    h, rstd2, hn, gu, a, the down GEMM output and y (tiled: gu, a, down per chunk).
 */
export function reforwardPhase(m: ModelShape, T: number, wide: number, ownInput: boolean): { bytes: number; detail: string } {
  const s = (ns: readonly SavedName[]) => ns.reduce((n, k) => n + savedBytesPerToken(m, k), 0);
  const C2 = 2 * m.dim;
  const qkv = s(["q", "k", "v"]);
  const tiled = wide < T;
  const input = ownInput ? C2 : 0;
  const mlpNarrow = s(["h", "rstd2", "hn"]);
  const stages = [
    (input + s(["xn", "rstd1"]) + 2 * qkv) * T,
    (input + s(["xn", "rstd1", "q", "k", "v", "o", "lse"])) * T,
    (input + s(["o", "lse"]) + mlpNarrow) * T + (tiled ? C2 * T : Math.max(C2, s(MLP_WIDE)) * T),
    tiled ? (mlpNarrow + C2) * T + (s(MLP_WIDE) + C2) * wide : (mlpNarrow + s(MLP_WIDE) + 2 * C2) * T,
  ];
  const peak = C2 * T + Math.max(...stages);
  return {
    bytes: peak,
    detail: `${KiB(peak / T)} per token (dy beside the forward of the layer before a skip layer, keeping nothing${ownInput ? ", its input re-run too" : ""})`,
  };
}
export const KiB = (b: number) => `${(b / 1024).toFixed(1)} KiB`;

/**
 * What DistAttn holds on one rank (attention/src/distattn.ts, the zigzag schedule over one rank: two
 * chunks of T/2 rows, three blocks computed one after the other) beyond what the layer's terms count,
 * for T local tokens, with the cuDNN backend (the CUDA one accumulates in place and needs less):
 *   backward: dq, dk, dv accumulated in f32 over the blocks [T], beside one block's bf16 gradients
 *             (cuDNN writes bf16; they are widened and added) and cuDNN's dQ accumulator and Delta (f32)
 *             for the block's T/2 query rows, while the layer holds dO; less the layer's attention
 *             term's dq, dk, dv beside dqkv (layerBackwardPhases), which come after;
 *   forward:  the f32 partial o and lse of both chunks beside one block's f32 o and lse and its bf16 o
 *             (cuDNN's output, widened), less the final o and lse the stage counts (reforwardPhase).
 */
export function distAttnOneRank(m: ModelShape, T: number): { backward: number; forward: number } {
  const Q = m.heads * m.headDim;
  const K = m.kvHeads * m.headDim;
  const H = m.heads;
  const block = Math.ceil(T / 2);
  const backward = 4 * (Q + 2 * K) * T + 2 * (Q + 2 * K) * block + 4 * (Q + H) * block + 2 * Q * T - 4 * (Q + 2 * K) * T;
  const forward = 4 * (Q + H) * T + 4 * (Q + H) * block + 2 * Q * block - (2 * Q + 4 * H) * T;
  return { backward: Math.max(0, backward), forward: Math.max(0, forward) };
}
