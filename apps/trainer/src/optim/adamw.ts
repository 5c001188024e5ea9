// AdamW on flat f32 shards: the CPU reference and the call into kernels/src/adamw.cu, one formula.
//
// p[n], g[n], m[n], v[n] f32 (p, m, v updated in place) -> optionally w[n] bf16 = rne(p) (the weights
// the next forward all-gathers). PyTorch's torch.optim.AdamW (amsgrad off, maximize off), step t >= 1:
//   g  = g * gradScale                      (clipping and loss scaling, folded in)
//   p  = p * (1 - lr * wd)                  (decoupled weight decay; wd = 0 on norms and embeddings)
//   m  = lerp(m, g, 1 - beta1)              = m + (1 - beta1) * (g - m)
//   v  = beta2 * v + (1 - beta2) * g * g
//   p  = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
// Every element op is one f32 operation rounded to nearest even, in this order; the step's scalars are
// computed once in f64 and rounded to f32 (adamwScalars), so the kernel, which uses the same scalars and
// the _rn intrinsics (no FMA contraction), gives the same bits as this reference.

import { checkLaunch, kernels, type Stream } from "@lightseq/cuda";
import { f32ToBf16Bits } from "@lightseq/tensor";

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/** The f32 scalars of one update (what the kernel takes). */
export interface AdamWScalars {
  gradScale: number;
  /** 1 - lr * wd (1 where the range is not decayed). */
  decay: number;
  oneMinusBeta1: number;
  beta2: number;
  oneMinusBeta2: number;
  /** lr / (1 - beta1^t) */
  stepSize: number;
  /** sqrt(1 - beta2^t) */
  bc2Sqrt: number;
  eps: number;
}

const f = Math.fround;

/** Scalars of step t (1-based), for a range with or without weight decay. */
export function adamwScalars(h: AdamWHyper, t: number, decayed: boolean, gradScale = 1): AdamWScalars {
  if (!Number.isSafeInteger(t) || t < 1) throw new RangeError(`AdamW step must be an integer >= 1, got ${t}`);
  return {
    gradScale: f(gradScale),
    decay: f(decayed ? 1 - h.lr * h.weightDecay : 1),
    oneMinusBeta1: f(1 - h.beta1),
    beta2: f(h.beta2),
    oneMinusBeta2: f(1 - h.beta2),
    stepSize: f(h.lr / (1 - h.beta1 ** t)),
    bc2Sqrt: f(Math.sqrt(1 - h.beta2 ** t)),
    eps: f(h.eps),
  };
}

/** Reference update of elements [0, p.length): p, m, v in place; w (bf16 bits) written when given. */
export function adamwReference(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, s: AdamWScalars, w?: Uint16Array): void {
  const n = p.length;
  if (g.length !== n || m.length !== n || v.length !== n || (w && w.length !== n))
    throw new RangeError(`adamw: lengths differ (p ${n}, g ${g.length}, m ${m.length}, v ${v.length}${w ? `, w ${w.length}` : ""})`);
  for (let i = 0; i < n; i++) {
    const gi = f((g[i] as number) * s.gradScale);
    const pi = f((p[i] as number) * s.decay);
    const mi0 = m[i] as number;
    const mi = f(mi0 + f(s.oneMinusBeta1 * f(gi - mi0)));
    const vi = f(f(s.beta2 * (v[i] as number)) + f(f(s.oneMinusBeta2 * gi) * gi));
    const denom = f(f(f(Math.sqrt(vi)) / s.bc2Sqrt) + s.eps);
    const pn = f(pi - f(s.stepSize * f(mi / denom)));
    p[i] = pn;
    m[i] = mi;
    v[i] = vi;
    if (w) w[i] = f32ToBf16Bits(pn);
  }
}

/** Device pointers of one shard range (f32 p, g, m, v; bf16 w or 0 for none), n elements. */
export interface AdamWDevice {
  p: number;
  g: number;
  m: number;
  v: number;
  w: number;
  n: number;
}

/** The same update on the GPU (kernels/src/adamw.cu), enqueued on `stream`. */
export function adamwCuda(d: AdamWDevice, s: AdamWScalars, stream: Stream): void {
  const code = kernels().ls_adamw_f32(
    d.p,
    d.g,
    d.m,
    d.v,
    d.w,
    d.n,
    s.gradScale,
    s.decay,
    s.oneMinusBeta1,
    s.beta2,
    s.oneMinusBeta2,
    s.stepSize,
    s.bc2Sqrt,
    s.eps,
    stream.handle,
  );
  checkLaunch(code, "ls_adamw_f32", `n=${d.n}`);
}
