// One Llama decoder layer with explicit forward and backward (no autograd tape). x, y [T, C]:
//
//   A  attention in:   rstd1, xn = rmsnorm(x, attnNorm); qkv = xn @ wqkv^T; q, k, v = rope(qkv)
//   B  attention core: o, lse = attention(q, k, v)                  (DistAttn: communication here)
//   C  MLP in:         h = x + o @ wo^T; rstd2, hn = rmsnorm(h, mlpNorm) (one fused pass); gu = hn @ wGateUp^T; a = swiglu(gu)
//   D  out:            y = h + a @ wDown^T
//
// Tiled MLP (`mlpChunkTokens`, DESIGN.md section 6): gu [T, 2F] and a [T, F] then exist one chunk of
// tokens at a time, in the forward (gu, a, y per chunk) and in the backward (gu and a recomputed per
// chunk from hn, their gradients per chunk, the weight gradients accumulated chunk by chunk), so no
// policy keeps them: the MLP's working memory no longer grows with F * T.
//
// The saved tensors are named (checkpointing/src/policy.ts); the forward keeps those of the policy and
// the backward recomputes a stage (A, B or C) whenever one of its tensors was not kept: `none`
// recomputes nothing, `remat-aware` recomputes A and C (never attention), `full` A, B and C. A layer
// sees only its own kind: a mixed policy is resolved per layer by the model. `skip` keeps nothing, not
// even x: the model re-runs the earlier layers' forward (layerForward without a store) to get x back and
// hands it to layerBackward, which then recomputes A, B and C as `full` does.
// The forward frees each stage's tensors that are not kept as soon as the next stage has run (A after
// attention, B and x after C), so a forward that keeps nothing (evaluation, a skip layer's re-run in
// the backward) holds at most two stages at once (estimator.ts reforwardPhase).
// Weight gradients are accumulated (+=) into the f32 views the gradient sink gives. The residual
// branches' gradients are added inside the RMSNorm backwards (their `residual` option).

import { keptTensors, type LayerPolicy, type SavedName } from "@lightseq/checkpointing";
import type { Stream } from "@lightseq/cuda";
import { empty, type Tensor, TensorError } from "@lightseq/tensor";
import type { LlamaConfig } from "./config.ts";
import type { ActivationStore, AttentionFn, SavedValue } from "./interfaces.ts";
import { linearBackwardInput, linearBackwardWeight, linearForward } from "./ops/linear.ts";
import { residualAdd } from "./ops/residual.ts";
import { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "./ops/rmsnorm.ts";
import { type RopeTable, ropeQkvBackward, ropeQkvForward } from "./ops/rope.ts";
import { swigluBackward, swigluForward } from "./ops/swiglu.ts";
import type { LayerWeights } from "./weights.ts";

/** How often the layers ran each part; the checkpointing tests read them. */
export interface LayerCounters {
  attentionForward: number;
  attentionBackward: number;
  /** Stages recomputed in the backward. */
  recomputeAttnIn: number;
  recomputeMlpIn: number;
  /** Layer forwards re-run in the backward to give a skip layer its input (model.ts). */
  reforward: number;
}

export function newCounters(): LayerCounters {
  return { attentionForward: 0, attentionBackward: 0, recomputeAttnIn: 0, recomputeMlpIn: 0, reforward: 0 };
}

export interface LayerContext {
  cfg: LlamaConfig;
  attention: AttentionFn;
  /** cos/sin at this rank's global positions, shared by every layer. */
  rope: RopeTable;
  /** This layer's kind (the model resolves a mixed policy to one per layer). */
  policy: LayerPolicy;
  counters: LayerCounters;
  stream?: Stream;
  /** Tiled MLP: tokens per chunk (a positive integer); undefined runs the MLP over all T at once. */
  mlpChunkTokens?: number;
}

interface AttnIn {
  rstd1: Tensor;
  xn: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

interface AttnCore {
  o: Tensor;
  lse: Tensor[];
}

interface MlpIn {
  h: Tensor;
  rstd2: Tensor;
  hn: Tensor;
  /** Absent with the tiled MLP (they exist per chunk only). */
  gu?: Tensor;
  a?: Tensor;
}

const STAGE_A = ["rstd1", "xn", "q", "k", "v"] as const;
const STAGE_B = ["o", "lse"] as const;
const STAGE_C = ["h", "rstd2", "hn", "gu", "a"] as const;
const STAGE_C_TILED = ["h", "rstd2", "hn"] as const;

/** Rows per MLP chunk for T tokens: T (untiled) or the context's mlpChunkTokens. */
function mlpChunk(ctx: LayerContext, T: number): number {
  const c = ctx.mlpChunkTokens;
  if (c === undefined) return T;
  if (!Number.isSafeInteger(c) || c <= 0)
    throw new TensorError(`layer: mlpChunkTokens must be a positive integer (tokens per MLP chunk), got ${c}`);
  return Math.min(c, T);
}

/** [start, length) of each chunk of `chunk` rows over T rows. */
function chunks(T: number, chunk: number): [number, number][] {
  const out: [number, number][] = [];
  for (let s = 0; s < T; s += chunk) out.push([s, Math.min(chunk, T - s)]);
  return out;
}

function dims(cfg: LlamaConfig): { Hq: number; Hkv: number; D: number } {
  return { Hq: cfg.heads, Hkv: cfg.kvHeads, D: cfg.headDim };
}

/** [T, H, D] as [T, H*D] (a view). */
function flat2(t: Tensor): Tensor {
  return t.reshape([t.shape[0] as number, -1]);
}

function attnIn(x: Tensor, w: LayerWeights, ctx: LayerContext): AttnIn {
  const o = { stream: ctx.stream };
  const { y: xn, rstd: rstd1 } = rmsnormForward(x, w.attnNorm, ctx.cfg.normEps, o);
  const qkv = linearForward(xn, w.wqkv, o);
  const { q, k, v } = ropeQkvForward(qkv, ctx.rope, dims(ctx.cfg), o);
  qkv.dispose();
  return { rstd1, xn, q, k, v };
}

async function attnCore(a: { q: Tensor; k: Tensor; v: Tensor }, ctx: LayerContext): Promise<AttnCore> {
  ctx.counters.attentionForward++;
  return ctx.attention.forward(a.q, a.k, a.v);
}

/** Stage C: h, rstd2, hn; gu and a too when the MLP runs untiled. */
function mlpIn(x: Tensor, attnOut: Tensor, w: LayerWeights, ctx: LayerContext): MlpIn {
  const o = { stream: ctx.stream };
  using o2 = flat2(attnOut);
  const proj = linearForward(o2, w.wo, o);
  const { h, y: hn, rstd: rstd2 } = residualRmsnormForward(x, proj, w.mlpNorm, ctx.cfg.normEps, o);
  proj.dispose();
  if (mlpChunk(ctx, x.shape[0] as number) < (x.shape[0] as number)) return { h, rstd2, hn };
  const gu = linearForward(hn, w.wGateUp, o);
  const a = swigluForward(gu, o);
  return { h, rstd2, hn, gu, a };
}

/** Stage D: y = h + swiglu(hn @ wGateUp^T) @ wDown^T, whole or one chunk of rows at a time. */
function mlpOut(C: MlpIn, w: LayerWeights, ctx: LayerContext): Tensor {
  const o = { stream: ctx.stream };
  if (C.a !== undefined) {
    const m = linearForward(C.a, w.wDown, o);
    const y = residualAdd(C.h, m, o);
    m.dispose();
    return y;
  }
  const T = C.h.shape[0] as number;
  const y = empty(C.h.shape, { dtype: C.h.dtype, device: C.h.device, stream: ctx.stream });
  for (const [s, n] of chunks(T, mlpChunk(ctx, T))) {
    using hn = C.hn.narrow(s, n);
    using h = C.h.narrow(s, n);
    using yc = y.narrow(s, n);
    using gu = linearForward(hn, w.wGateUp, o);
    using a = swigluForward(gu, o);
    using m = linearForward(a, w.wDown, o);
    residualAdd(h, m, { ...o, out: yc }).dispose();
  }
  return y;
}

/** Backward of stage D and of gu, a: adds into g.wDown and g.wGateUp, returns d(hn). */
function mlpBackward(C: MlpIn, dy: Tensor, w: LayerWeights, g: LayerWeights, ctx: LayerContext): Tensor {
  const o = { stream: ctx.stream };
  const step = (hn: Tensor, gu: Tensor, a: Tensor, dyc: Tensor, out?: Tensor): Tensor => {
    linearBackwardWeight(dyc, a, g.wDown, o);
    const da = linearBackwardInput(dyc, w.wDown, o);
    const dgu = swigluBackward(gu, da, o);
    da.dispose();
    linearBackwardWeight(dgu, hn, g.wGateUp, o);
    const dhn = linearBackwardInput(dgu, w.wGateUp, { ...o, out });
    dgu.dispose();
    return dhn;
  };
  if (C.gu !== undefined && C.a !== undefined) return step(C.hn, C.gu, C.a, dy);
  const T = C.h.shape[0] as number;
  const dhn = empty(C.hn.shape, { dtype: C.hn.dtype, device: C.hn.device, stream: ctx.stream });
  for (const [s, n] of chunks(T, mlpChunk(ctx, T))) {
    using hn = C.hn.narrow(s, n);
    using dyc = dy.narrow(s, n);
    using out = dhn.narrow(s, n);
    using gu = linearForward(hn, w.wGateUp, o);
    using a = swigluForward(gu, o);
    step(hn, gu, a, dyc, out).dispose();
  }
  return dhn;
}

function disposeAll(ts: Iterable<Tensor | Tensor[]>): void {
  for (const t of ts) for (const x of Array.isArray(t) ? t : [t]) x.dispose();
}

/**
 * Layer i forward. Takes ownership of x; returns y (the caller's). With a store (training) the
 * policy's tensors are kept there for layerBackward; without one (evaluation) nothing is kept.
 */
export async function layerForward(
  i: number,
  x: Tensor,
  w: LayerWeights,
  ctx: LayerContext,
  store: ActivationStore | null,
): Promise<Tensor> {
  const kept = new Set(store === null ? [] : keptTensors(ctx.policy));
  const keepOrFree = (stage: Partial<{ [K in SavedName]: SavedValue<K> }>) => {
    for (const [name, t] of Object.entries(stage) as [SavedName, Tensor | Tensor[]][]) {
      if (kept.has(name)) (store as ActivationStore).put(i, name, t as never);
      else disposeAll([t]);
    }
  };
  const A = attnIn(x, w, ctx);
  const B = await attnCore(A, ctx);
  keepOrFree(A);
  const C = mlpIn(x, B.o, w, ctx);
  keepOrFree({ x, ...B });
  const y = mlpOut(C, w, ctx);
  keepOrFree(C);
  return y;
}

/** The kept tensors of `names`, or null when any of them was not kept (the stage is recomputed). */
function keptStage<K extends SavedName>(store: ActivationStore, i: number, names: readonly K[]): { [N in K]: SavedValue<N> } | null {
  const out = {} as { [N in K]: SavedValue<N> };
  for (const n of names) {
    const t = store.get(i, n);
    if (t === undefined) return null;
    out[n] = t;
  }
  return out;
}

/** Layer i's input for its backward: the kept x, or (skip) `input`, re-run by the caller and owned by the backward. */
function inputOf(i: number, ctx: LayerContext, store: ActivationStore, input: Tensor | undefined): Tensor {
  if (ctx.policy.kind === "skip") {
    if (input === undefined)
      throw new TensorError(`layer ${i} backward: a skip layer keeps nothing; its input x must be re-run and given (the model does)`);
    return input;
  }
  if (input !== undefined)
    throw new TensorError(`layer ${i} backward: an input was given to a ${ctx.policy.kind} layer, which keeps its own`);
  const x = store.get(i, "x");
  if (x === undefined)
    throw new TensorError(
      `layer ${i} backward: the layer input x was not kept (every policy but skip keeps it; was the forward run with a store?)`,
    );
  return x;
}

/**
 * Layer i backward: takes ownership of dy (and of `input`, a skip layer's re-run input), returns dx;
 * adds the weight gradients into `g`; releases the layer's saved tensors.
 */
export async function layerBackward(
  i: number,
  dy: Tensor,
  w: LayerWeights,
  g: LayerWeights,
  ctx: LayerContext,
  store: ActivationStore,
  input?: Tensor,
): Promise<Tensor> {
  const o = { stream: ctx.stream };
  const temps: (Tensor | Tensor[])[] = [dy];
  if (input !== undefined) temps.push(input);
  const mlpTemps: Tensor[] = [];
  try {
    const x = inputOf(i, ctx, store, input);
    // Recompute in the order that keeps the least alive: attention's inputs only when attention
    // itself must be recomputed (full), then the MLP's inputs, freed right after the MLP backward,
    // then the attention's inputs (remat-aware), needed by the attention backward.
    let A = keptStage(store, i, STAGE_A);
    const recomputeA = (): AttnIn => {
      ctx.counters.recomputeAttnIn++;
      const a = attnIn(x, w, ctx);
      temps.push(...Object.values(a));
      return a;
    };
    let B = keptStage(store, i, STAGE_B);
    if (B === null) {
      A ??= recomputeA();
      B = await attnCore(A, ctx);
      temps.push(B.o, B.lse);
    }
    const tiled = mlpChunk(ctx, x.shape[0] as number) < (x.shape[0] as number);
    let C: MlpIn | null = keptStage(store, i, tiled ? STAGE_C_TILED : STAGE_C);
    if (C === null) {
      ctx.counters.recomputeMlpIn++;
      C = mlpIn(x, B.o, w, ctx);
      mlpTemps.push(...(Object.values(C) as Tensor[]));
    }

    // D and C: y = h + a @ wDown^T; a = swiglu(hn @ wGateUp^T); hn = rmsnorm(h)
    const dhn = mlpBackward(C, dy, w, g, ctx);
    const dh = rmsnormBackward(C.h, w.mlpNorm, C.rstd2, dhn, g.mlpNorm, { ...o, residual: dy });
    dhn.dispose();
    temps.push(dh);
    dy.dispose(); // (dispose is idempotent: the finally block's second call is a no-op)
    disposeAll(mlpTemps.splice(0));
    A ??= recomputeA();

    // h = x + o @ wo^T
    {
      using o2 = flat2(B.o);
      linearBackwardWeight(dh, o2, g.wo, o);
    }
    const dO2 = linearBackwardInput(dh, w.wo, o);
    const dO = dO2.reshape([x.shape[0] as number, ctx.cfg.heads, ctx.cfg.headDim]);
    dO2.dispose();
    temps.push(dO);

    // B: attention (its backward recomputes the softmax from o and lse)
    ctx.counters.attentionBackward++;
    const { dq, dk, dv } = await ctx.attention.backward({ q: A.q, k: A.k, v: A.v, o: B.o, lse: B.lse }, dO);
    dO.dispose();
    const dqkv = ropeQkvBackward(dq, dk, dv, ctx.rope, dims(ctx.cfg), o);
    disposeAll([dq, dk, dv]);

    // A: qkv = rmsnorm(x) @ wqkv^T
    linearBackwardWeight(dqkv, A.xn, g.wqkv, o);
    const dxn = linearBackwardInput(dqkv, w.wqkv, o);
    dqkv.dispose();
    const dx = rmsnormBackward(x, w.attnNorm, A.rstd1, dxn, g.attnNorm, { ...o, residual: dh });
    dxn.dispose();
    return dx;
  } finally {
    disposeAll([...mlpTemps, ...temps]);
    store.release(i);
  }
}
