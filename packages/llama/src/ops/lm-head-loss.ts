// Fused LM head + cross-entropy over chunks of tokens: h[T,C], W[V,C], labels i32[T] (-100 = ignored)
// -> loss sum over valid labels (f64), their count, dh[T,C] and dW[V,C] (f32, +=), never holding the
// [T, V] logits. Per chunk of n tokens (rows [s, s+n)):
//   logits[n,V] = h_s @ W^T                       GEMM 1, f32 output (bf16 operands, f32 accumulator
//                                                 stored unrounded: a bf16 logit of ~20 would carry an
//                                                 error of ~0.06 into the loss and the softmax)
//   per row: m = max, lse = m + log sum exp(l - m), loss = lse - l[label],
//            dlogits = gradScale * (softmax - onehot(label)), 0 for an ignored row   one kernel
//   dh_s = dlogits @ W                            GEMM 2
//   dW  += dlogits^T @ h_s                        GEMM 3, f32 accumulate (beta = 1)
// gradScale is d(total loss)/d(one label's loss), e.g. 1 / (global label count): the caller knows the
// count over all ranks. The loss sum is formed on the host in f64 from per-row f32 losses, after the
// last chunk (the call synchronises its stream once, to return numbers).
//
// CPU: the same chunk loop with f64 softmax rows (reference). CUDA: GEMMs through cuBLASLt, the row
// kernel in kernels/src/llama_cross_entropy.cu (one block per row, logits read twice: the second read
// hits L2; dlogits bf16 for the two following GEMMs).

import type { Stream } from "@lightseq/cuda";
import { empty, fill, matmul, type Tensor, to } from "@lightseq/tensor";
import {
  type Cost,
  checkCudaDType,
  checkSameDevice,
  checkSameDType,
  checkTensor,
  fail,
  kernels,
  launch,
  output,
  type Pass,
  store,
  streamFor,
} from "./common.ts";

export const IGNORE_INDEX = -100;

export interface LmHeadLossOptions {
  /** d(total loss)/d(loss of one label), e.g. 1 / (global label count). */
  gradScale: number;
  /** Tokens per chunk (default: about 2^26 logits per chunk on the GPU, 64 tokens on the CPU). */
  chunkTokens?: number;
  /** [T,C] written (allocated and returned when absent and dW is given). */
  dh?: Tensor;
  /** f32 [V,C], += ; omit (with dh) for forward only. */
  dW?: Tensor;
  stream?: Stream;
}

export interface LmHeadLossResult {
  /** Sum of -log p(label) over the valid labels, in f64. */
  lossSum: number;
  /** Valid labels (not -100). */
  count: number;
  dh?: Tensor;
}

/**
 * Forward (eval): the logits GEMM and the row kernel. Backward (training, what lmHeadLoss with dW runs):
 * the three GEMMs; GEMM 1 writes f32 logits, the row kernel reads them and writes bf16 dlogits, GEMMs 2
 * and 3 read dlogits; each GEMM reads h and W; dW is read and written in f32 once per chunk (`chunks`).
 */
export function lmHeadLossCost(s: { T: number; C: number; V: number; elemBytes?: number; chunks?: number }, pass: Pass = "backward"): Cost {
  const e = s.elemBytes ?? 2;
  const TV = s.T * s.V;
  if (pass === "forward") return { flops: 2 * TV * s.C + 6 * TV, bytes: TV * 8 + (s.T + s.V) * s.C * e };
  const chunks = s.chunks ?? 1;
  return {
    flops: 3 * 2 * TV * s.C + 6 * TV,
    bytes: TV * (4 + 4 + e + 2 * e) + 3 * (s.T + s.V) * s.C * e + chunks * 2 * s.V * s.C * 4 + s.T * s.C * e,
  };
}

/** The row kernel alone (read f32 logits, write bf16 dlogits and the row loss): the memory-bound part. */
export function crossEntropyRowsCost(s: { T: number; V: number }): Cost {
  return { flops: 6 * s.T * s.V, bytes: s.T * s.V * (4 + 2) + s.T * 8 };
}

/** Default tokens per chunk: ~2^26 f32 logits (256 MiB) on the GPU, a multiple of 64. */
export function defaultChunkTokens(V: number, device: "cpu" | "cuda"): number {
  if (device === "cpu") return 64;
  return Math.max(64, Math.floor(2 ** 26 / V / 64) * 64);
}

// --- f64 reference core for one row ---

/** Loss of one row and, if `dlogits` is given, gradScale * (softmax - onehot) written into it. */
export function crossEntropyRowF64(logits: ArrayLike<number>, label: number, gradScale: number, dlogits?: Float64Array): number {
  const V = logits.length;
  let m = Number.NEGATIVE_INFINITY;
  for (let j = 0; j < V; j++) m = Math.max(m, logits[j] as number);
  let sum = 0;
  for (let j = 0; j < V; j++) sum += Math.exp((logits[j] as number) - m);
  const lse = m + Math.log(sum);
  if (dlogits !== undefined) {
    for (let j = 0; j < V; j++) dlogits[j] = gradScale * Math.exp((logits[j] as number) - lse);
    dlogits[label] = (dlogits[label] as number) - gradScale;
  }
  return lse - (logits[label] as number);
}

/**
 * The CUDA row kernel alone: row loss (f32 [n]) and, when `dlogits` (bf16 [n, V]) is given,
 * gradScale * (softmax - onehot) from f32 logits [n, V]. Labels are not checked here (lmHeadLoss does).
 */
export function crossEntropyRows(
  logits: Tensor,
  labels: Tensor,
  gradScale: number,
  dlogits: Tensor | undefined,
  rowLoss: Tensor,
  stream?: Stream,
): void {
  const op = "crossEntropyRows";
  checkTensor(op, logits, "logits", ["f32"], [-1, -1]);
  const [n, V] = logits.shape as [number, number];
  checkTensor(op, labels, "labels", ["i32"], [n]);
  checkTensor(op, rowLoss, "rowLoss", ["f32"], [n]);
  if (dlogits !== undefined) checkTensor(op, dlogits, "dlogits", ["bf16"], [n, V]);
  if (logits.device.kind !== "cuda") fail(op, "logits: the row kernel runs on cuda (the CPU path is crossEntropyRowF64)");
  const s = streamFor(logits, stream);
  launch(
    kernels().ls_llama_cross_entropy_f32(
      logits.ptr(),
      labels.ptr(),
      gradScale,
      dlogits === undefined ? null : dlogits.ptr(),
      rowLoss.ptr(),
      n,
      V,
      s.handle,
    ),
    "ls_llama_cross_entropy_f32",
    `rows=${n} V=${V}`,
  );
}

function checkLabels(op: string, labels: Int32Array, V: number): number {
  let count = 0;
  for (let t = 0; t < labels.length; t++) {
    const l = labels[t] as number;
    if (l === IGNORE_INDEX) continue;
    if (l < 0 || l >= V) fail(op, `labels[${t}] = ${l} is neither a token in [0, ${V}) nor the ignore index ${IGNORE_INDEX}`);
    count++;
  }
  return count;
}

// --- the op ---

export function lmHeadLoss(h: Tensor, W: Tensor, labels: Tensor, o: LmHeadLossOptions): LmHeadLossResult {
  const op = "lmHeadLoss";
  checkTensor(op, h, "h", ["f32", "bf16"], [-1, -1]);
  const [T, C] = h.shape as [number, number];
  checkTensor(op, W, "W", [h.dtype], [-1, C]);
  const V = W.shape[0] as number;
  checkTensor(op, labels, "labels", ["i32"], [T]);
  checkSameDevice(op, h, "h", W, "W");
  checkSameDevice(op, h, "h", labels, "labels");
  if (o === undefined || typeof o.gradScale !== "number" || !Number.isFinite(o.gradScale))
    fail(op, `o.gradScale: expected a finite number (e.g. 1 / global label count), got ${o?.gradScale}`);
  if (V === 0) fail(op, "W: the vocabulary is empty");
  const kind = h.device.kind;
  const chunk = o.chunkTokens ?? defaultChunkTokens(V, kind);
  if (!Number.isSafeInteger(chunk) || chunk <= 0) fail(op, `o.chunkTokens: expected a positive integer, got ${chunk}`);
  if (o.dW !== undefined) {
    checkTensor(op, o.dW, "o.dW", ["f32"], [V, C]);
    checkSameDevice(op, h, "h", o.dW, "o.dW");
  }
  const backward = o.dW !== undefined || o.dh !== undefined;
  const dh = backward ? output(op, h, h.dtype, [T, C], o.dh, o.stream, "o.dh") : undefined;
  if (kind === "cuda") {
    checkCudaDType(op, h, "h", "bf16");
    checkSameDType(op, h, "h", W, "W");
  }
  const s = kind === "cuda" ? streamFor(h, o.stream) : undefined;

  using hostLabels = kind === "cpu" ? labels.view() : to(labels, "cpu", { stream: s });
  const lab = hostLabels.data() as Int32Array;
  const count = checkLabels(op, lab, V);

  let lossSum = 0;
  const rows = Math.min(chunk, T);
  using logits = empty([rows, V], { dtype: "f32", device: h.device, stream: s });
  using dlogits = backward ? empty([rows, V], { dtype: h.dtype, device: h.device, stream: s }) : undefined;
  using rowLoss = kind === "cuda" ? empty([T], { dtype: "f32", device: h.device, stream: s }) : undefined;
  for (let start = 0; start < T; start += chunk) {
    const n = Math.min(chunk, T - start);
    using hs = h.narrow(start, n);
    using lg = logits.narrow(0, n);
    matmul(hs, W, { transB: true, out: lg, outDtype: "f32", stream: s }).dispose();
    using dl = dlogits?.narrow(0, n);
    if (kind === "cpu") {
      const L = lg.data() as Float32Array;
      const g = new Float64Array(V);
      const dd = dl === undefined ? undefined : new Float64Array(n * V);
      for (let i = 0; i < n; i++) {
        const label = lab[start + i] as number;
        if (label === IGNORE_INDEX) continue; // dlogits row stays 0
        const row = L.subarray(i * V, (i + 1) * V);
        lossSum += crossEntropyRowF64(row, label, o.gradScale, dd === undefined ? undefined : g);
        dd?.set(g, i * V);
      }
      if (dl !== undefined && dd !== undefined) store(dl, dd);
    } else {
      using labs = labels.narrow(start, n);
      using rl = (rowLoss as Tensor).narrow(start, n);
      crossEntropyRows(lg, labs, o.gradScale, dl, rl, s);
    }
    if (dl === undefined || dh === undefined) continue;
    using dhs = dh.narrow(start, n);
    matmul(dl, W, { out: dhs, stream: s }).dispose();
    if (o.dW !== undefined) matmul(dl, hs, { transA: true, out: o.dW, beta: 1, outDtype: "f32", stream: s }).dispose();
  }
  if (T === 0 && dh !== undefined) fill(dh, 0, s);
  if (kind === "cuda" && rowLoss !== undefined) {
    using hostLoss = to(rowLoss, "cpu", { stream: s }); // synchronises s
    const rl = hostLoss.data() as Float32Array;
    for (let t = 0; t < T; t++) if (lab[t] !== IGNORE_INDEX) lossSum += rl[t] as number;
  }
  return dh === undefined ? { lossSum, count } : { lossSum, count, dh };
}

/** Full logits f32 [T, V] = h @ W^T, for evaluation and fixtures at small T. */
export function lmHeadLogits(h: Tensor, W: Tensor, o: { stream?: Stream } = {}): Tensor {
  const op = "lmHeadLogits";
  checkTensor(op, h, "h", ["f32", "bf16"], [-1, -1]);
  checkTensor(op, W, "W", [h.dtype], [-1, h.shape[1] as number]);
  checkSameDevice(op, h, "h", W, "W");
  return matmul(h, W, { transB: true, outDtype: "f32", stream: o.stream });
}
