// The SDPA operation graphs (forward and backward) in the patterns cuDNN's fused flash-attention engines
// recognise, in the order cudnn-frontend's composite SDPA nodes lower them
// (node/scaled_dot_product_flash_attention.h, node/softmax.h, node/diagonal_band_mask.h; read to learn
// the pattern, written here from scratch):
//   forward:  S = Q K^T; S *= scale; [causal mask]; M = rowmax S; E = exp(S - M); Z = rowsum E;
//             Stats = M + log Z; P = E / Z (bf16); O = P V
//   backward: Delta = rowsum(dO * O) * 1; S = Q K^T * scale - Stats; [mask]; P = exp S;
//             dV = P^T dO; dS = (dO V^T - Delta) * P * scale; dK = dS^T Q; dQacc = dS K (f32); dQ = dQacc
//   deterministic backward: dQ = dS K written straight into dQ, no f32 accumulator. That is all
//             cudnn-frontend's SDPA_backward_attributes::set_deterministic_algorithm(true) changes in
//             the graph off Blackwell (CompositeSDPABackwardNode forces its "dP workspace" lowering, the
//             one dBias also needs; the graph's shape is what tells cuDNN's engine which kernel to run).
//             On compute capability 10.x the frontend also forces an engine and knobs, which we do not
//             (plans.ts refuses there). plans.ts also skips engines noted NONDETERMINISTIC.
//   GQA:      K/V keep Hkv heads (cuDNN broadcasts them over Hq / Hkv query heads); dK, dV are computed
//             per query head (virtual bf16) and reduced onto the kv heads by an ADD reduction.
//   mask:     keep key j for query i iff i + (Tk - Tq) >= j (bottom-right, layout.ts): GEN_INDEX rows and
//             columns, (rows + Tk - Tq) >= cols, BINARY_SELECT(S, -inf, keep). With Tq == Tk the shift
//             ops are left out (the plain causal graph).
// Delta and dQacc (not in the deterministic graph) are non-virtual scratch (f32) that we allocate next
// to the plan's workspace.
//
// Our tensors seen as cuDNN's BHSD with B = 1 (no data moves):
//   q, o, dO, dq  dims [1, Hq, Tq, D]   strides [Tq*Hq*D, D, Hq*D, 1]
//   k, dk         dims [1, Hkv, Tk, D]  strides [Tk*Hkv*D, D, Hkv*D, 1]  (k enters the graph as K^T: last two swapped)
//   v, dv         like k                                                (v enters the backward as V^T)
//   lse           dims [1, Hq, Tq, 1]   strides [Hq*Tq, Tq, 1, 1]       ("Stats": exactly our [Hq, Tq])

import { CUDNN_ABI as C } from "./abi.ts";
import type { GraphBuilder, TensorRef } from "./graph.ts";

/** Unique ids of the tensors bound at execution; virtual tensors count up from VIRTUAL_UID. */
export const UID = {
  q: 1,
  k: 2,
  v: 3,
  o: 4,
  stats: 5,
  dO: 6,
  dq: 7,
  dk: 8,
  dv: 9,
  delta: 10,
  dqAccum: 11,
  scale: 20,
  negInf: 21,
  sKv: 22,
  sQ: 23,
  one: 24,
} as const;

/** Byte offsets of the by-value scalars in a plan's host scalar block (read by cuDNN at execution). */
export const SCALAR = { scale: 0, negInf: 4, sKv: 8, sQ: 12, one: 16, bytes: 32 } as const;

/** Sizes of one plan (Tq: the query rows cuDNN sees, after any empty causal rows are cut off). */
export interface PlanShape {
  Tq: number;
  Tk: number;
  Hq: number;
  Hkv: number;
  D: number;
  causal: boolean;
  /** Backward: the deterministic graph (no f32 dQ accumulator; top of this file). Forward plans: false. */
  deterministic: boolean;
}

const BF16 = C.CUDNN_DATA_BFLOAT16;
const F32 = C.CUDNN_DATA_FLOAT;

/** q-like [1, Hq, T, D] over our [T, Hq, D]. */
const headsView = (T: number, H: number, D: number) => ({ dims: [1, H, T, D], strides: [T * H * D, D, H * D, 1] });
/** Its transpose [1, H, D, T] (K^T, V^T) over the same memory. */
const headsViewT = (T: number, H: number, D: number) => ({ dims: [1, H, D, T], strides: [T * H * D, D, 1, H * D] });

/** Scores [1, Hq, Tq, Tk], row vectors [1, Hq, Tq, 1] and transposed scores [1, Hq, Tk, Tq] (virtual). */
function scoreLayouts(s: PlanShape) {
  const { Tq, Tk, Hq } = s;
  return {
    score: { dims: [1, Hq, Tq, Tk], strides: [Hq * Tq * Tk, Tq * Tk, Tk, 1] },
    row: { dims: [1, Hq, Tq, 1], strides: [Hq * Tq, Tq, 1, 1] },
    scoreT: { dims: [1, Hq, Tk, Tq], strides: [Hq * Tq * Tk, Tq * Tk, 1, Tk] },
  };
}

/** S with every key j > i + (Tk - Tq) of query row i replaced by -inf. */
function causalMask(g: GraphBuilder, s: TensorRef, shape: PlanShape): TensorRef {
  const I32 = C.CUDNN_DATA_INT32;
  const BOOL = C.CUDNN_DATA_BOOLEAN;
  let row = g.pointwise("row index", C.CUDNN_POINTWISE_GEN_INDEX, s, { axis: 2, yType: I32 });
  const col = g.pointwise("column index", C.CUDNN_POINTWISE_GEN_INDEX, s, { axis: 3, yType: I32 });
  if (shape.Tq !== shape.Tk) {
    const add = { compute: I32, yType: I32 };
    row = g.pointwise("row + Tk", C.CUDNN_POINTWISE_ADD, row, { b: g.scalar(UID.sKv, I32), ...add });
    row = g.pointwise("row + Tk - Tq", C.CUDNN_POINTWISE_SUB, row, { b: g.scalar(UID.sQ, I32), ...add });
  }
  const keep = g.pointwise("row >= column", C.CUDNN_POINTWISE_CMP_GE, row, { b: col, compute: BOOL, yType: BOOL });
  return g.pointwise("causal select", C.CUDNN_POINTWISE_BINARY_SELECT, s, { b: g.scalar(UID.negInf, F32), t: keep });
}

/** Forward graph; returns the uids bound at execution. */
export function buildForward(g: GraphBuilder, shape: PlanShape): number[] {
  const { Tq, Tk, Hq, Hkv, D } = shape;
  const L = scoreLayouts(shape);
  const qv = headsView(Tq, Hq, D);
  const q = g.tensor(UID.q, qv.dims, qv.strides, BF16, "real");
  const kt = headsViewT(Tk, Hkv, D);
  const kT = g.tensor(UID.k, kt.dims, kt.strides, BF16, "real");
  const vv = headsView(Tk, Hkv, D);
  const v = g.tensor(UID.v, vv.dims, vv.strides, BF16, "real");
  const o = g.tensor(UID.o, qv.dims, qv.strides, BF16, "real");
  const stats = g.tensor(UID.stats, L.row.dims, L.row.strides, F32, "real");
  const scale = g.scalar(UID.scale, F32);

  let s = g.matmul("S = Q K^T", q, kT, g.virtual(L.score.dims, L.score.strides, F32));
  s = g.pointwise("S * scale", C.CUDNN_POINTWISE_MUL, s, { b: scale });
  if (shape.causal) s = causalMask(g, s, shape);
  const m = g.reduction("M = rowmax S", C.CUDNN_REDUCE_TENSOR_MAX, s, g.virtual(L.row.dims, L.row.strides, F32));
  const centred = g.pointwise("S - M", C.CUDNN_POINTWISE_SUB, s, { b: m });
  const e = g.pointwise("E = exp(S - M)", C.CUDNN_POINTWISE_EXP, centred);
  const z = g.reduction("Z = rowsum E", C.CUDNN_REDUCE_TENSOR_ADD, e, g.virtual(L.row.dims, L.row.strides, F32));
  const logZ = g.pointwise("log Z", C.CUDNN_POINTWISE_LOG, z);
  g.pointwise("Stats = M + log Z", C.CUDNN_POINTWISE_ADD, m, { b: logZ, y: stats });
  const p = g.pointwise("P = E / Z", C.CUDNN_POINTWISE_DIV, e, { b: z, y: g.virtual(L.score.dims, L.score.strides, BF16) });
  g.matmul("O = P V", p, v, o);
  const uids: number[] = [UID.q, UID.k, UID.v, UID.o, UID.stats, UID.scale];
  if (shape.causal) uids.push(UID.negInf, ...(Tq !== Tk ? [UID.sKv, UID.sQ] : []));
  return uids;
}

/** Backward graph; returns the uids bound at execution. */
export function buildBackward(g: GraphBuilder, shape: PlanShape): number[] {
  const { Tq, Tk, Hq, Hkv, D } = shape;
  const L = scoreLayouts(shape);
  const qv = headsView(Tq, Hq, D);
  const kvv = headsView(Tk, Hkv, D);
  const kvt = headsViewT(Tk, Hkv, D);
  const q = g.tensor(UID.q, qv.dims, qv.strides, BF16, "real");
  const kT = g.tensor(UID.k, kvt.dims, kvt.strides, BF16, "real");
  const vT = g.tensor(UID.v, kvt.dims, kvt.strides, BF16, "real");
  const o = g.tensor(UID.o, qv.dims, qv.strides, BF16, "real");
  const dO = g.tensor(UID.dO, qv.dims, qv.strides, BF16, "real");
  const stats = g.tensor(UID.stats, L.row.dims, L.row.strides, F32, "real");
  const dq = g.tensor(UID.dq, qv.dims, qv.strides, BF16, "real");
  const dk = g.tensor(UID.dk, kvv.dims, kvv.strides, BF16, "real");
  const dv = g.tensor(UID.dv, kvv.dims, kvv.strides, BF16, "real");
  // Our scratch: Delta [1, Hq, Tq, 1] and (not deterministic) the f32 dq accumulator [1, Hq, Tq, D] (head-major).
  const delta = g.tensor(UID.delta, L.row.dims, L.row.strides, F32, "real");
  const scale = g.scalar(UID.scale, F32);
  const one = g.scalar(UID.one, F32);
  const gqa = Hq !== Hkv;
  const perQueryHead = { dims: [1, Hq, Tk, D], strides: [Hq * Tk * D, Tk * D, D, 1] };

  // Delta = rowsum(dO * O): the product laid out [b, h, s, d] with strides of a [s, h, d] tensor.
  const dOo = g.pointwise("dO * O", C.CUDNN_POINTWISE_MUL, dO, {
    b: o,
    y: g.virtual([1, Hq, Tq, D], [Hq * Tq * D, Tq * D, Hq * D, 1], F32),
  });
  const rowsum = g.reduction("rowsum(dO * O)", C.CUDNN_REDUCE_TENSOR_ADD, dOo, g.virtual(L.row.dims, L.row.strides, F32));
  g.pointwise("Delta = rowsum * 1", C.CUDNN_POINTWISE_MUL, rowsum, { b: one, y: delta });

  // P = exp(S * scale - Stats), masked
  let s = g.matmul("S = Q K^T", q, kT, g.virtual(L.score.dims, L.score.strides, F32));
  s = g.pointwise("S * scale", C.CUDNN_POINTWISE_MUL, s, { b: scale });
  s = g.pointwise("S - Stats", C.CUDNN_POINTWISE_SUB, s, { b: stats });
  if (shape.causal) s = causalMask(g, s, shape);
  const p = g.pointwise("P = exp", C.CUDNN_POINTWISE_EXP, s);

  // dV = P^T dO (per query head, then summed onto kv heads for GQA)
  const pT = g.reshape("P^T", p, g.virtual(L.scoreT.dims, L.scoreT.strides, BF16));
  if (!gqa) g.matmul("dV = P^T dO", pT, dO, dv);
  else {
    const full = g.matmul("dV per query head", pT, dO, g.virtual(perQueryHead.dims, perQueryHead.strides, BF16));
    g.reduction("dV = sum over the group", C.CUDNN_REDUCE_TENSOR_ADD, full, dv);
  }

  // dS = (dO V^T - Delta) * P * scale
  let ds = g.matmul("dP = dO V^T", dO, vT, g.virtual(L.score.dims, L.score.strides, F32));
  ds = g.pointwise("dP - Delta", C.CUDNN_POINTWISE_SUB, ds, { b: delta });
  ds = g.pointwise("* P", C.CUDNN_POINTWISE_MUL, ds, { b: p });
  ds = g.pointwise("dS = * scale", C.CUDNN_POINTWISE_MUL, ds, { b: scale });

  // dK = dS^T Q
  const dsT = g.reshape("dS^T", ds, g.virtual(L.scoreT.dims, L.scoreT.strides, BF16));
  if (!gqa) g.matmul("dK = dS^T Q", dsT, q, dk);
  else {
    const full = g.matmul("dK per query head", dsT, q, g.virtual(perQueryHead.dims, perQueryHead.strides, BF16));
    g.reduction("dK = sum over the group", C.CUDNN_REDUCE_TENSOR_ADD, full, dk);
  }

  // dQ = dS K: straight into dq (deterministic), or accumulated in f32, then written in bf16
  const k = g.reshape("K = (K^T)^T", kT, g.virtual(kvv.dims, kvv.strides, F32));
  if (shape.deterministic) g.matmul("dQ = dS K", ds, k, dq);
  else {
    const dqAccum = g.tensor(UID.dqAccum, [1, Hq, Tq, D], [Hq * Tq * D, Tq * D, D, 1], F32, "real");
    g.matmul("dQacc = dS K", ds, k, dqAccum);
    g.pointwise("dQ = dQacc", C.CUDNN_POINTWISE_IDENTITY, dqAccum, { y: dq });
  }

  const uids: number[] = [
    UID.q,
    UID.k,
    UID.v,
    UID.o,
    UID.dO,
    UID.stats,
    UID.dq,
    UID.dk,
    UID.dv,
    UID.delta,
    ...(shape.deterministic ? [] : [UID.dqAccum]),
    UID.scale,
    UID.one,
  ];
  if (shape.causal) uids.push(UID.negInf, ...(Tq !== Tk ? [UID.sKv, UID.sQ] : []));
  return uids;
}
