// The block contract (DESIGN.md section 5): one attention block (a query chunk against one K/V chunk),
// forward and backward, implemented by every backend. Layouts are in layout.ts.
//
//   forward(q, k, v)                  -> o [Tq, Hq, D], lse [Hq, Tq] f32   (o normalised over this block's keys)
//   backward(q, k, v, o, lse, dO)     -> dq like q, dk/dv like k/v
//
// backward takes the FINAL, global o and lse of the query rows (after merging every K/V block), not
// this block's partials. Then P = exp(S*scale - lse) is the global softmax restricted to this block's
// keys and Delta = rowsum(dO * o) the global one, so dS = P * (dP - Delta) is this block's exact share
// of the gradient: dq is the sum over K/V blocks, dk/dv over query blocks (LightSeq section 2).
//
// DESIGN.md: partials accumulate in fp32, never bf16. So forward can write o in f32 (`outDtype: "f32"`,
// a partial about to be merged) and backward can ADD its gradient into f32 tensors (`accumulate`)
// instead of returning new ones in the input dtype; both are what the CUDA kernels do natively.

import type { Stream } from "@lightseq/cuda";
import { type DType, deviceName, dtypeBytes, fmtShape, sameDevice, Tensor } from "@lightseq/tensor";
import { type AttentionDims, AttentionError, defaultScale } from "./layout.ts";

export interface AttentionOptions {
  /** Bottom-right aligned causal mask (layout.ts); false: every key visible. Never defaulted. */
  causal: boolean;
  /** Softmax scale; default 1/sqrt(D). */
  scale?: number;
  /** CUDA backends: the stream to enqueue on (default: the device's current stream). The reference ignores it. */
  stream?: Stream;
}

export interface ForwardOptions extends AttentionOptions {
  /** dtype of o: that of q (default), or "f32" for a partial that will be merged in fp32. */
  outDtype?: "f32" | "bf16";
}

export interface BackwardOptions extends AttentionOptions {
  /**
   * f32 tensors shaped like q, k, v: this block's gradient is added into them in place and they are
   * returned (the same objects). Without it, new tensors in q's dtype are returned.
   */
  accumulate?: AttentionGrads;
  /**
   * true: the gradients must be a function of the inputs alone, equal to the bit from run to run (a
   * backend that cannot refuses: our CUDA kernels sum dq with f32 atomics). false: the backend may take
   * its fastest path, deterministic or not. Absent: the backend's default (cudnn: createCudnnBackend's,
   * false unless asked; the reference is deterministic whatever this says).
   */
  deterministic?: boolean;
}

export interface AttentionOutput {
  /** [Tq, Hq, D], dtype of q or opts.outDtype */
  o: Tensor;
  /** [Hq, Tq] f32, natural log; -Infinity for rows with no visible key */
  lse: Tensor;
}

export interface AttentionGrads {
  /** like q */
  dq: Tensor;
  /** like k */
  dk: Tensor;
  /** like v */
  dv: Tensor;
}

/** A normalised partial result (merge.ts): o over some keys and the log-sum-exp of those keys' scores. */
export interface AttentionPartial {
  /** [T, H, D] f32 or bf16 */
  o: Tensor;
  /** [H, T] f32 */
  lse: Tensor;
}

export interface AttentionBackend {
  /** Shown in logs and error messages ("reference", "cuda", ...). */
  readonly name: string;
  forward(q: Tensor, k: Tensor, v: Tensor, opts: ForwardOptions): AttentionOutput;
  /** o (q's dtype) and lse are the global (merged) values of the query rows; see the top of this file. */
  backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dO: Tensor, opts: BackwardOptions): AttentionGrads;
}

/** Checked sizes and options of one call. */
export interface CheckedCall extends AttentionDims {
  /** dtype of q, k, v (and o, dO in backward) */
  dtype: "f32" | "bf16";
  /** dtype of the forward's o */
  outDtype: "f32" | "bf16";
  causal: boolean;
  scale: number;
}

function fail(who: string, msg: string): never {
  throw new AttentionError(`${who}: ${msg}`);
}

function checkTensor(who: string, t: unknown, name: string, layout: string, rank = 3): Tensor {
  if (!(t instanceof Tensor)) fail(who, `${name}: expected a Tensor ${layout}, got ${t === null ? "null" : typeof t}`);
  if (t.isDisposed) fail(who, `${name}: use after dispose (${t.describe()})`);
  if (t.shape.length !== rank) fail(who, `${name}: expected rank ${rank} ${layout}, got shape ${fmtShape(t.shape)}`);
  return t;
}

function checkLike(who: string, t: Tensor, name: string, ref: Tensor, refName: string): void {
  if (t.dtype !== ref.dtype) fail(who, `${name}: expected dtype ${ref.dtype} (as ${refName}), got ${t.dtype}`);
  if (!sameDevice(t.device, ref.device))
    fail(who, `${name}: expected device ${deviceName(ref.device)} (as ${refName}), got ${deviceName(t.device)}`);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function checkOptions(who: string, opts: AttentionOptions | undefined, D: number): { causal: boolean; scale: number } {
  if (typeof opts !== "object" || opts === null) fail(who, `opts: expected { causal: boolean, scale?: number }, got ${String(opts)}`);
  if (typeof opts.causal !== "boolean") fail(who, `opts.causal: expected true or false, got ${String(opts.causal)}`);
  const scale = opts.scale ?? defaultScale(D);
  if (typeof scale !== "number" || !Number.isFinite(scale)) fail(who, `opts.scale: expected a finite number, got ${String(opts.scale)}`);
  return { causal: opts.causal, scale };
}

/** Checks forward arguments; `who` prefixes every message (e.g. "reference.forward"). */
export function checkForwardArgs(who: string, q: Tensor, k: Tensor, v: Tensor, opts: ForwardOptions): CheckedCall {
  checkTensor(who, q, "q", "[Tq, Hq, D]");
  checkTensor(who, k, "k", "[Tk, Hkv, D]");
  checkTensor(who, v, "v", "[Tk, Hkv, D]");
  if (q.dtype !== "f32" && q.dtype !== "bf16") fail(who, `q: expected dtype f32 or bf16, got ${q.dtype}`);
  checkLike(who, k, "k", q, "q");
  checkLike(who, v, "v", q, "q");
  const [Tq, Hq, D] = q.shape as [number, number, number];
  const [Tk, Hkv, Dk] = k.shape as [number, number, number];
  if (Hq < 1 || D < 1) fail(who, `q: expected Hq >= 1 and D >= 1, got shape ${fmtShape(q.shape)}`);
  if (Dk !== D) fail(who, `k: expected head dim D = ${D} (as q ${fmtShape(q.shape)}), got ${Dk} (k ${fmtShape(k.shape)})`);
  if (Hkv < 1 || Hq % Hkv !== 0) {
    fail(who, `k: expected a kv head count Hkv dividing Hq = ${Hq} (q ${fmtShape(q.shape)}), got Hkv = ${Hkv} (k ${fmtShape(k.shape)})`);
  }
  if (!sameShape(v.shape, k.shape)) fail(who, `v: expected shape ${fmtShape(k.shape)} (as k), got ${fmtShape(v.shape)}`);
  // Bottom-right causal is defined for every Tq, Tk (rows with no key give o = 0, lse = -Inf): no shape is refused.
  const checked = checkOptions(who, opts, D);
  const outDtype = opts.outDtype ?? q.dtype;
  if (outDtype !== q.dtype && outDtype !== "f32") {
    fail(who, `opts.outDtype: expected ${q.dtype === "f32" ? "f32 (as q)" : "bf16 (as q) or f32"}, got ${String(outDtype)}`);
  }
  return { Tq, Tk, Hq, Hkv, D, dtype: q.dtype, outDtype, ...checked };
}

/** Checks backward arguments: the forward ones, plus o and dO like q, lse f32 [Hq, Tq]. */
export function checkBackwardArgs(
  who: string,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  lse: Tensor,
  dO: Tensor,
  opts: BackwardOptions,
): CheckedCall {
  const call = checkForwardArgs(who, q, k, v, opts);
  for (const [t, name] of [
    [o, "o"],
    [dO, "dO"],
  ] as const) {
    checkTensor(who, t, name, "[Tq, Hq, D]");
    checkLike(who, t, name, q, "q");
    if (!sameShape(t.shape, q.shape)) fail(who, `${name}: expected shape ${fmtShape(q.shape)} (as q), got ${fmtShape(t.shape)}`);
  }
  checkTensor(who, lse, "lse", "[Hq, Tq]", 2);
  if (lse.dtype !== "f32") fail(who, `lse: expected dtype f32 (lse is always f32), got ${lse.dtype}`);
  if (!sameDevice(lse.device, q.device)) fail(who, `lse: expected device ${deviceName(q.device)} (as q), got ${deviceName(lse.device)}`);
  if (!sameShape(lse.shape, [call.Hq, call.Tq])) {
    fail(who, `lse: expected shape [Hq, Tq] = [${call.Hq}, ${call.Tq}] (from q ${fmtShape(q.shape)}), got ${fmtShape(lse.shape)}`);
  }
  if (opts.deterministic !== undefined && typeof opts.deterministic !== "boolean")
    fail(who, `opts.deterministic: expected true or false, got ${String(opts.deterministic)}`);
  if (opts.accumulate !== undefined) {
    const acc = opts.accumulate;
    for (const [t, name, like, likeName] of [
      [acc.dq, "accumulate.dq", q, "q"],
      [acc.dk, "accumulate.dk", k, "k"],
      [acc.dv, "accumulate.dv", v, "v"],
    ] as const) {
      checkTensor(who, t, name, likeName === "q" ? "[Tq, Hq, D]" : "[Tk, Hkv, D]");
      if (t.dtype !== "f32") fail(who, `${name}: expected dtype f32 (gradients accumulate in fp32), got ${t.dtype}`);
      if (!sameDevice(t.device, q.device))
        fail(who, `${name}: expected device ${deviceName(q.device)} (as q), got ${deviceName(t.device)}`);
      if (!sameShape(t.shape, like.shape))
        fail(who, `${name}: expected shape ${fmtShape(like.shape)} (as ${likeName}), got ${fmtShape(t.shape)}`);
    }
  }
  return call;
}

// ---- cost ------------------------------------------------------------------------------------------------
//
// FLOPs follow the kernel-benchmark convention of performance.md section 2.1:
//   forward  = 4 * Hq * D * (visible query-key pairs)   (QK^T and PV, 2 FLOPs per multiply-add)
//   backward = 2.5 * forward                              (5 matmuls against 2: QK^T recomputed, dV, dP, dQ, dK)
// "Visible pairs" is Tq*Tk when not causal and the area under the bottom-right mask when causal:
//   Tq <= Tk: Tq*Tk - Tq^2/2;   Tq > Tk: Tk^2/2.
// With Tq == Tk that is Tq*Tk/2, the usual "causal halved" count (not the exact T(T+1)/2), so numbers
// compare with FA2/FA3 and cuDNN reports. Softmax exponentials are not counted.
// Bytes are the compulsory traffic: every input read once, every output written once (a real kernel
// re-reads K/V per query tile, so achieved GB/s from these bytes is a lower bound on what moved).

export interface AttentionShape {
  Tq: number;
  Tk: number;
  Hq: number;
  D: number;
  causal: boolean;
  /** default Hq (MHA) */
  Hkv?: number;
  /** element type of q, k, v, o, dO, dq, dk, dv; default bf16. lse is f32 whatever this is. */
  dtype?: DType;
}

export type AttentionPass = "forward" | "backward" | "forward+backward";

export interface Cost {
  flops: number;
  bytes: number;
}

/** Visible query-key pairs under the cost convention above (continuous area of the mask). */
export function visiblePairs(Tq: number, Tk: number, causal: boolean): number {
  if (!causal) return Tq * Tk;
  return Tq <= Tk ? Tq * Tk - (Tq * Tq) / 2 : (Tk * Tk) / 2;
}

export function attentionCost(s: AttentionShape, pass: AttentionPass = "forward"): Cost {
  const Hkv = s.Hkv ?? s.Hq;
  const e = dtypeBytes(s.dtype ?? "bf16");
  const qo = s.Tq * s.Hq * s.D * e; // one of q, o, dO, dq
  const kv = s.Tk * Hkv * s.D * e; // one of k, v, dk, dv
  const lse = s.Hq * s.Tq * 4;
  const fwd: Cost = { flops: 4 * s.Hq * s.D * visiblePairs(s.Tq, s.Tk, s.causal), bytes: qo + 2 * kv + qo + lse };
  // backward reads q, k, v, o, dO, lse and writes dq, dk, dv
  const bwd: Cost = { flops: 2.5 * fwd.flops, bytes: 3 * qo + 2 * kv + lse + qo + 2 * kv };
  switch (pass) {
    case "forward":
      return fwd;
    case "backward":
      return bwd;
    case "forward+backward":
      return { flops: fwd.flops + bwd.flops, bytes: fwd.bytes + bwd.bytes };
  }
}
