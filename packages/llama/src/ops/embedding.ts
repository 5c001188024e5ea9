// Embedding lookup: tokens i32[T], table[V,C] -> x[T,C] (x[t] = table[tokens[t]]).
// Backward: dTable[V,C] f32 += sum over t with tokens[t] = v of dx[t], deterministic.
//
// Determinism without float atomics, on both devices, by one summation order (embeddingSegments):
// the rows of each token, in increasing t, are cut into segments of at most SEGMENT_ROWS. A token with
// one segment: dTable[v] = (((dTable[v] + dx[t0]) + dx[t1]) + ...), each addition rounded to f32. A token
// with several: each segment is summed the same way from 0, then dTable[v] += s0, += s1, ... in order.
// The GPU plan (embeddingPlan: the grouping made on the host once per call, as tokens are host data in
// training; pass `hostTokens` or `plan` to skip the download) gives the kernels exactly these segments,
// one writer per element (kernels/src/llama_embedding.cu), so the result is the same bits every run and
// equal to the CPU reference's. Segments bound a frequent token's serial chain of additions.
// Forward on the GPU: an out-of-range token cannot be reported from a kernel without a sync, so its
// row becomes NaN (the loss shows it); the CPU path and the GPU backward refuse it by position.

import type { Stream } from "@lightseq/cuda";
import { type DeviceLike, empty, fromArray, type Tensor, to } from "@lightseq/tensor";
import {
  type Cost,
  checkCudaDType,
  checkSameDevice,
  checkTensor,
  f64Of,
  fail,
  kernels,
  launch,
  type OpOptions,
  output,
  type Pass,
  streamFor,
} from "./common.ts";

export interface EmbeddingShape {
  T: number;
  V: number;
  C: number;
  /** Bytes per activation element (2 for bf16). */
  elemBytes?: number;
}

/**
 * Forward: read the tokens and T table rows, write x. Backward: read the plan and dx, read and write
 * the touched dTable rows (`distinct`, default min(T, V)).
 */
export function embeddingCost(s: EmbeddingShape & { distinct?: number }, pass: Pass = "forward"): Cost {
  const e = s.elemBytes ?? 2;
  if (pass === "forward") return { flops: 0, bytes: s.T * 4 + 2 * s.T * s.C * e };
  const rows = s.distinct ?? Math.min(s.T, s.V);
  return { flops: s.T * s.C, bytes: s.T * 4 * 2 + s.T * s.C * e + rows * s.C * 8 };
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

// --- the summation order (both devices) ---

/** Rows per segment of one token's rows (see the top of this file). */
export const SEGMENT_ROWS = 32;

export interface TokenSegments {
  /** t sorted by (tokens[t], t). */
  perm: Int32Array;
  /** Segment s is perm[start[s] .. start[s+1]) (segments: length - 1 of start). */
  start: Int32Array;
  /** The token of each segment. */
  token: Int32Array;
  /** -1: the token's only segment (adds into dTable); else its scratch slot (tokens of several segments). */
  slot: Int32Array;
  /** Tokens of several segments, and their slots multiStart[m] .. multiStart[m+1) in order. */
  multiToken: Int32Array;
  multiStart: Int32Array;
}

/** Groups equal tokens (a counting sort, stable in t) and cuts each token's rows into segments. */
export function embeddingSegments(tokens: Int32Array, V: number): TokenSegments {
  const T = tokens.length;
  const count = new Int32Array(V + 1);
  for (let t = 0; t < T; t++) count[(tokens[t] as number) + 1] = (count[(tokens[t] as number) + 1] as number) + 1;
  let segments = 0;
  let multi = 0;
  for (let v = 0; v < V; v++) {
    const n = count[v + 1] as number;
    const k = Math.ceil(n / SEGMENT_ROWS);
    segments += k;
    if (k > 1) multi++;
    count[v + 1] = n + (count[v] as number);
  }
  const perm = new Int32Array(T);
  const next = count.slice(0, V);
  for (let t = 0; t < T; t++) {
    const v = tokens[t] as number;
    perm[next[v] as number] = t;
    next[v] = (next[v] as number) + 1;
  }
  const start = new Int32Array(segments + 1);
  const token = new Int32Array(segments);
  const slot = new Int32Array(segments);
  const multiToken = new Int32Array(multi);
  const multiStart = new Int32Array(multi + 1);
  let s = 0;
  let m = 0;
  let slots = 0;
  for (let v = 0; v < V; v++) {
    const b = count[v] as number;
    const e = count[v + 1] as number;
    if (e === b) continue;
    const several = e - b > SEGMENT_ROWS;
    if (several) {
      multiToken[m] = v;
      multiStart[m] = slots;
      m++;
    }
    for (let r = b; r < e; r += SEGMENT_ROWS) {
      start[s] = r;
      token[s] = v;
      slot[s] = several ? slots++ : -1;
      s++;
    }
  }
  start[segments] = T;
  multiStart[multi] = slots;
  return { perm, start, token, slot, multiToken, multiStart };
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
  /** The segments already on the device (embeddingPlan): skips the host work and the upload. */
  plan?: EmbeddingPlan;
}

/** embeddingSegments uploaded once: perm | start | token | slot | multiToken | multiStart, one i32 tensor. */
export interface EmbeddingPlan {
  readonly T: number;
  readonly segments: number;
  readonly multi: number;
  /** Scratch rows the backward needs (f32 [slots, C]). */
  readonly slots: number;
  /** Distinct tokens. */
  readonly distinct: number;
  readonly data: Tensor;
}

/** Segments the tokens on the host and uploads them to `device` (synchronises the upload). */
export function embeddingPlan(tokens: Int32Array, V: number, device: DeviceLike, o: { stream?: Stream } = {}): EmbeddingPlan {
  checkTokens("embeddingPlan", tokens, V);
  const g = embeddingSegments(tokens, V);
  const parts = [g.perm, g.start, g.token, g.slot, g.multiToken, g.multiStart];
  const all = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  let distinct = 0;
  for (let s = 0; s < g.token.length; s++) if (s === 0 || g.token[s] !== g.token[s - 1]) distinct++;
  return {
    T: tokens.length,
    segments: g.token.length,
    multi: g.multiToken.length,
    slots: g.multiStart[g.multiToken.length] as number,
    distinct,
    data: fromArray(all, [all.length], { dtype: "i32", device, stream: o.stream }),
  };
}

/** dTable (f32 [V,C]) += the scatter of dx by tokens, in the summation order above: the same bits every run. */
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
    const d = dTable.data() as Float32Array;
    const g = f64Of(dx); // exact widening; every sum below is rounded to f32 as it goes
    const seg = embeddingSegments(tok, V);
    const part = new Float32Array(C);
    for (let s = 0; s < seg.token.length; s++) {
      const row = (seg.token[s] as number) * C;
      const alone = seg.slot[s] === -1;
      if (!alone) part.fill(0);
      const acc = alone ? d.subarray(row, row + C) : part;
      for (let i = seg.start[s] as number; i < (seg.start[s + 1] as number); i++) {
        const t = (seg.perm[i] as number) * C;
        for (let c = 0; c < C; c++) acc[c] = (acc[c] as number) + (g[t + c] as number);
      }
      if (!alone) for (let c = 0; c < C; c++) d[row + c] = (d[row + c] as number) + (part[c] as number);
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
  const { segments: S, multi: M } = plan;
  const base = plan.data.ptr();
  const at = (elements: number) => base + 4 * elements;
  using scratch = plan.slots > 0 ? empty([plan.slots, C], { dtype: "f32", device: dx.device, stream: s }) : undefined;
  try {
    launch(
      kernels().ls_llama_embedding_bwd_bf16(
        dx.ptr(),
        at(0), // perm
        at(T + S + 1), // token
        at(T), // start
        at(T + 2 * S + 1), // slot
        S,
        at(T + 3 * S + 1), // multiToken
        at(T + 3 * S + 1 + M), // multiStart
        M,
        scratch === undefined ? null : scratch.ptr(),
        C,
        dTable.ptr(),
        s.handle,
      ),
      "ls_llama_embedding_bwd_bf16",
      `T=${T} segments=${S} C=${C}`,
    );
  } finally {
    owned?.data.dispose();
  }
}
