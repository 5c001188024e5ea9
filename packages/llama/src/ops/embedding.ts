// Embedding lookup: tokens i32[T], table[V,C] -> x[T,C] (x[t] = table[tokens[t]]).
// Backward: dTable[V,C] f32 += sum over t with tokens[t] = v of dx[t], deterministic.
//
// Determinism on the GPU without float atomics: the tokens are grouped on the host once per call
// (they are host data in training; pass `hostTokens` to skip the download), as a permutation of
// 0..T-1 sorted by (token, t), with the distinct tokens and where each one's run starts. One CUDA
// block per (distinct token, column slice) starts from dTable[v], adds its rows' dx in increasing t
// order in f32 and stores once. That is exactly the CPU reference's order of f32 additions, so the
// GPU result equals the CPU one bit for bit (for the same bf16 dx), and every run gives the same bits.
// Forward on the GPU: an out-of-range token cannot be reported from a kernel without a sync, so its
// row becomes NaN (the loss shows it); the CPU path and the GPU backward refuse it by position.

import type { Stream } from "@lightseq/cuda";
import { type DeviceLike, fromArray, type Tensor, to } from "@lightseq/tensor";
import { checkCudaDType, checkSameDevice, checkTensor, f64Of, fail, kernels, launch, type OpOptions, output, streamFor } from "./common.ts";

export interface EmbeddingShape {
  T: number;
  V: number;
  C: number;
  /** Bytes per activation element (2 for bf16). */
  elemBytes?: number;
}

/** Forward: read T rows of the table and the tokens, write x. Backward: read dx, read and write the touched dTable rows (at most min(T, V)). */
export function embeddingCost(s: EmbeddingShape): {
  forward: { flops: number; bytes: number };
  backward: { flops: number; bytes: number };
} {
  const e = s.elemBytes ?? 2;
  const rows = Math.min(s.T, s.V);
  return {
    forward: { flops: 0, bytes: s.T * 4 + 2 * s.T * s.C * e },
    backward: { flops: s.T * s.C, bytes: s.T * 4 * 2 + s.T * s.C * e + rows * s.C * 8 },
  };
}

function checkTokens(op: string, tokens: Int32Array, V: number): void {
  for (let t = 0; t < tokens.length; t++) {
    const v = tokens[t] as number;
    if (v < 0 || v >= V) fail(op, `tokens[${t}] = ${v} is outside the vocabulary [0, ${V})`);
  }
}

// --- f64 reference cores (exported for finite-difference tests) ---

export function embeddingForwardF64(tokens: Int32Array, table: Float64Array, C: number): Float64Array {
  const out = new Float64Array(tokens.length * C);
  for (let t = 0; t < tokens.length; t++) out.set(table.subarray((tokens[t] as number) * C, ((tokens[t] as number) + 1) * C), t * C);
  return out;
}

export function embeddingBackwardF64(tokens: Int32Array, dx: Float64Array, V: number, C: number): Float64Array {
  const d = new Float64Array(V * C);
  for (let t = 0; t < tokens.length; t++) {
    const row = (tokens[t] as number) * C;
    for (let c = 0; c < C; c++) d[row + c] = (d[row + c] as number) + (dx[t * C + c] as number);
  }
  return d;
}

// --- host grouping for the GPU backward ---

export interface TokenGroups {
  /** t sorted by (tokens[t], t). */
  perm: Int32Array;
  /** Distinct tokens, ascending. */
  tokens: Int32Array;
  /** Run i of perm is [start[i], start[i+1]). */
  start: Int32Array;
}

/** Groups equal tokens (a counting sort, stable in t). */
export function groupTokens(tokens: Int32Array, V: number): TokenGroups {
  const count = new Int32Array(V + 1);
  for (let t = 0; t < tokens.length; t++) count[(tokens[t] as number) + 1] = (count[(tokens[t] as number) + 1] as number) + 1;
  let distinct = 0;
  for (let v = 0; v < V; v++) {
    if ((count[v + 1] as number) > 0) distinct++;
    count[v + 1] = (count[v + 1] as number) + (count[v] as number);
  }
  const perm = new Int32Array(tokens.length);
  const next = count.slice(0, V);
  for (let t = 0; t < tokens.length; t++) {
    const v = tokens[t] as number;
    perm[next[v] as number] = t;
    next[v] = (next[v] as number) + 1;
  }
  const uniq = new Int32Array(distinct);
  const start = new Int32Array(distinct + 1);
  let i = 0;
  for (let v = 0; v < V; v++) {
    if ((count[v + 1] as number) > (count[v] as number)) {
      uniq[i] = v;
      start[i] = count[v] as number;
      i++;
    }
  }
  start[distinct] = tokens.length;
  return { perm, tokens: uniq, start };
}

// --- the op ---

/** x[t] = table[tokens[t]]; x has the table's dtype. */
export function embeddingForward(tokens: Tensor, table: Tensor, o: OpOptions = {}): Tensor {
  const op = "embeddingForward";
  checkTensor(op, tokens, "tokens", ["i32"], [-1]);
  checkTensor(op, table, "table", ["f32", "bf16"], [-1, -1]);
  checkSameDevice(op, table, "table", tokens, "tokens");
  const [V, C] = table.shape as [number, number];
  const T = tokens.shape[0] as number;
  const out = output(op, table, table.dtype, [T, C], o.out, o.stream);
  if (table.device.kind === "cpu") {
    const tok = tokens.data() as Int32Array;
    checkTokens(op, tok, V);
    const src = table.data();
    const dst = out.data();
    for (let t = 0; t < T; t++) dst.set(src.subarray((tok[t] as number) * C, ((tok[t] as number) + 1) * C) as never, t * C);
    return out;
  }
  checkCudaDType(op, table, "table", "bf16");
  const s = streamFor(table, o.stream);
  launch(
    kernels().ls_llama_embedding_fwd_bf16(tokens.ptr(), table.ptr(), out.ptr(), T, V, C, s.handle),
    "ls_llama_embedding_fwd_bf16",
    `T=${T} V=${V} C=${C}`,
  );
  return out;
}

export interface EmbeddingBackwardOptions {
  stream?: Stream;
  /** The tokens on the host (GPU path): skips their download and the sync it needs. */
  hostTokens?: Int32Array;
  /** The grouping already on the device (embeddingPlan): skips the host work and the upload. */
  plan?: EmbeddingPlan;
}

/** The host grouping of `tokens` uploaded once: perm | distinct tokens | run starts, as one i32 tensor. */
export interface EmbeddingPlan {
  readonly T: number;
  readonly distinct: number;
  readonly data: Tensor;
}

/** Groups the tokens on the host and uploads the result to `device` (synchronises the upload). */
export function embeddingPlan(tokens: Int32Array, V: number, device: DeviceLike, o: { stream?: Stream } = {}): EmbeddingPlan {
  checkTokens("embeddingPlan", tokens, V);
  const g = groupTokens(tokens, V);
  const T = tokens.length;
  const U = g.tokens.length;
  const plan = new Int32Array(T + 2 * U + 1);
  plan.set(g.perm, 0);
  plan.set(g.tokens, T);
  plan.set(g.start, T + U);
  return { T, distinct: U, data: fromArray(plan, [plan.length], { dtype: "i32", device, stream: o.stream }) };
}

/** dTable (f32 [V,C]) += the scatter of dx by tokens; the same bits every run. */
export function embeddingBackward(tokens: Tensor, dx: Tensor, dTable: Tensor, o: EmbeddingBackwardOptions = {}): void {
  const op = "embeddingBackward";
  checkTensor(op, tokens, "tokens", ["i32"], [-1]);
  const T = tokens.shape[0] as number;
  checkTensor(op, dTable, "dTable", ["f32"], [-1, -1]);
  const [V, C] = dTable.shape as [number, number];
  checkTensor(op, dx, "dx", ["f32", "bf16"], [T, C]);
  checkSameDevice(op, dx, "dx", dTable, "dTable");
  checkSameDevice(op, dx, "dx", tokens, "tokens");
  if (dx.device.kind === "cpu") {
    const tok = tokens.data() as Int32Array;
    checkTokens(op, tok, V);
    // Row by row in t order, each addition rounded to f32: the order the GPU kernel reproduces.
    const d = dTable.data() as Float32Array;
    const g = f64Of(dx);
    for (let t = 0; t < T; t++) {
      const row = (tok[t] as number) * C;
      for (let c = 0; c < C; c++) d[row + c] = (d[row + c] as number) + (g[t * C + c] as number);
    }
    return;
  }
  checkCudaDType(op, dx, "dx", "bf16");
  if (T === 0) return;
  const s = streamFor(dx, o.stream);
  let plan = o.plan;
  let owned: EmbeddingPlan | undefined;
  if (plan === undefined) {
    let host = o.hostTokens;
    if (host === undefined) {
      using h = to(tokens, "cpu", { stream: s });
      host = Int32Array.from(h.data() as Int32Array);
    } else if (host.length !== T) fail(op, `hostTokens: expected ${T} tokens (as tokens), got ${host.length}`);
    owned = embeddingPlan(host, V, dx.device, { stream: s });
    plan = owned;
  } else {
    if (plan.T !== T) fail(op, `plan: made for ${plan.T} tokens, got ${T}`);
    checkSameDevice(op, dx, "dx", plan.data, "plan.data");
  }
  const base = plan.data.ptr();
  const U = plan.distinct;
  try {
    launch(
      kernels().ls_llama_embedding_bwd_bf16(dx.ptr(), base, base + 4 * T, base + 4 * (T + U), U, C, dTable.ptr(), s.handle),
      "ls_llama_embedding_bwd_bf16",
      `T=${T} distinct=${U} C=${C}`,
    );
  } finally {
    owned?.data.dispose();
  }
}
