// RMSNorm: x[T,C], w[C] -> y[T,C]; rstd f32[T] saved.
//   rstd[t] = 1 / sqrt(mean_c x[t,c]^2 + eps);  n = cast_to_x_dtype(x * rstd);  y = w * n
// (Hugging Face's order: normalize in f32, cast back to the input dtype, then multiply by the weight.)
// Backward, with g = dy * w:  dx = rstd * (g - n * mean_c(g * n)) [+ residual];  dw[c] += sum_t dy * n.
// Fused residual + norm (same file): h = x + r (rounded to x's dtype), y = rmsnorm(h); saves one
// read of h against add then norm (2 reads + 2 writes instead of 3 + 2; measured in bench/ops-bench.ts).
//
// CPU: the f64 cores below, inputs widened exactly, rounded once to the output dtype (bf16 inputs also
// round n to bf16, as HF does). CUDA (kernels/src/llama_rmsnorm.cu): one block per row, f32 math, 16-byte
// loads when C % 8 == 0; dw reduced deterministically (per-block partials, then a fixed-order sum).

import type { Stream } from "@lightseq/cuda";
import { empty, type Tensor } from "@lightseq/tensor";
import {
  accumulate,
  type Cost,
  checkCudaDType,
  checkSameDevice,
  checkSameDType,
  checkTensor,
  f64Of,
  fail,
  kernels,
  launch,
  output,
  type Pass,
  rounderFor,
  store,
  streamFor,
} from "./common.ts";

export interface RmsnormShape {
  T: number;
  C: number;
  /** Bytes per activation element (2 for bf16). */
  elemBytes?: number;
}

/** Forward: read x, write y and rstd (w is C elements). Backward: read x, dy, rstd, write dx (+ dw: C). */
export function rmsnormCost(s: RmsnormShape, pass: Pass = "forward"): Cost {
  const e = s.elemBytes ?? 2;
  const n = s.T * s.C;
  if (pass === "forward") return { flops: 4 * n, bytes: 2 * n * e + 4 * s.T + s.C * e };
  return { flops: 9 * n, bytes: 3 * n * e + 4 * s.T + s.C * (e + 8) };
}

/** Fused h = x + r, y = rmsnorm(h) (forward only): read x, r; write h, y, rstd. */
export function residualRmsnormCost(s: RmsnormShape): Cost {
  const e = s.elemBytes ?? 2;
  const n = s.T * s.C;
  return { flops: 5 * n, bytes: 4 * n * e + 4 * s.T + s.C * e };
}

// --- f64 reference cores ---

/** `round` is what storing n in the input dtype does (identity for f32/f64). */
export function rmsnormForwardF64(
  x: Float64Array,
  w: Float64Array,
  T: number,
  C: number,
  eps: number,
  round: (v: number) => number = (v) => v,
): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(T * C);
  const rstd = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += (x[t * C + c] as number) ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = r;
    for (let c = 0; c < C; c++) y[t * C + c] = (w[c] as number) * round((x[t * C + c] as number) * r);
  }
  return { y, rstd };
}

/** dx (returned) and dw (returned, to be added); rstd as saved by the forward. */
export function rmsnormBackwardF64(
  x: Float64Array,
  w: Float64Array,
  rstd: ArrayLike<number>,
  dy: Float64Array,
  T: number,
  C: number,
  round: (v: number) => number = (v) => v,
): { dx: Float64Array; dw: Float64Array } {
  const dx = new Float64Array(T * C);
  const dw = new Float64Array(C);
  for (let t = 0; t < T; t++) {
    const r = rstd[t] as number;
    let dot = 0;
    for (let c = 0; c < C; c++) dot += (dy[t * C + c] as number) * (w[c] as number) * (x[t * C + c] as number) * r;
    dot /= C;
    for (let c = 0; c < C; c++) {
      const i = t * C + c;
      const n = (x[i] as number) * r;
      dx[i] = r * ((dy[i] as number) * (w[c] as number) - n * dot);
      dw[c] = (dw[c] as number) + (dy[i] as number) * round(n);
    }
  }
  return { dx, dw };
}

// --- the ops ---

export interface NormOptions {
  stream?: Stream;
  out?: Tensor;
  /** Where rstd goes (f32 [T]). */
  rstdOut?: Tensor;
}

function checkNormArgs(op: string, x: Tensor, w: Tensor, eps: number): { T: number; C: number } {
  checkTensor(op, x, "x", ["f32", "bf16"], [-1, -1]);
  const [T, C] = x.shape as [number, number];
  checkTensor(op, w, "w", ["f32", "bf16"], [C]);
  checkSameDevice(op, x, "x", w, "w");
  checkSameDType(op, x, "x", w, "w");
  if (!(typeof eps === "number" && eps > 0 && Number.isFinite(eps))) fail(op, `eps: expected a positive number, got ${eps}`);
  if (C === 0) fail(op, "x: C = 0 has no mean square");
  return { T, C };
}

export function rmsnormForward(x: Tensor, w: Tensor, eps: number, o: NormOptions = {}): { y: Tensor; rstd: Tensor } {
  const op = "rmsnormForward";
  const { T, C } = checkNormArgs(op, x, w, eps);
  const y = output(op, x, x.dtype, [T, C], o.out, o.stream);
  const rstd = output(op, x, "f32", [T], o.rstdOut, o.stream, "rstdOut");
  if (x.device.kind === "cpu") {
    const r = rmsnormForwardF64(f64Of(x), f64Of(w), T, C, eps, rounderFor(x.dtype));
    store(y, r.y);
    store(rstd, r.rstd);
    return { y, rstd };
  }
  checkCudaDType(op, x, "x", "bf16");
  const s = streamFor(x, o.stream);
  launch(
    kernels().ls_llama_rmsnorm_fwd_bf16(x.ptr(), w.ptr(), y.ptr(), rstd.ptr(), T, C, eps, s.handle),
    "ls_llama_rmsnorm_fwd_bf16",
    `T=${T} C=${C}`,
  );
  return { y, rstd };
}

export interface ResidualNormOptions extends NormOptions {
  /** Where h = x + r goes (may be x itself: in place). */
  hOut?: Tensor;
}

/** h = x + r (rounded to the dtype), y = rmsnorm(h) with rstd saved: one pass on the GPU. */
export function residualRmsnormForward(
  x: Tensor,
  r: Tensor,
  w: Tensor,
  eps: number,
  o: ResidualNormOptions = {},
): { h: Tensor; y: Tensor; rstd: Tensor } {
  const op = "residualRmsnormForward";
  const { T, C } = checkNormArgs(op, x, w, eps);
  checkTensor(op, r, "r", [x.dtype], [T, C]);
  checkSameDevice(op, x, "x", r, "r");
  const h = output(op, x, x.dtype, [T, C], o.hOut, o.stream, "hOut");
  const y = output(op, x, x.dtype, [T, C], o.out, o.stream);
  const rstd = output(op, x, "f32", [T], o.rstdOut, o.stream, "rstdOut");
  if (x.device.kind === "cpu") {
    const round = rounderFor(x.dtype);
    const xv = f64Of(x);
    const rv = f64Of(r);
    for (let i = 0; i < xv.length; i++) xv[i] = round(Math.fround((xv[i] as number) + (rv[i] as number)));
    store(h, xv);
    const res = rmsnormForwardF64(xv, f64Of(w), T, C, eps, round);
    store(y, res.y);
    store(rstd, res.rstd);
    return { h, y, rstd };
  }
  checkCudaDType(op, x, "x", "bf16");
  const s = streamFor(x, o.stream);
  launch(
    kernels().ls_llama_residual_rmsnorm_fwd_bf16(x.ptr(), r.ptr(), w.ptr(), h.ptr(), y.ptr(), rstd.ptr(), T, C, eps, s.handle),
    "ls_llama_residual_rmsnorm_fwd_bf16",
    `T=${T} C=${C}`,
  );
  return { h, y, rstd };
}

export interface NormBackwardOptions {
  stream?: Stream;
  out?: Tensor;
  /** dx = this + the norm's input gradient (the residual branch's gradient, added in the same pass). */
  residual?: Tensor;
}

/** dx (returned) and dw (f32 [C], += in place). */
export function rmsnormBackward(x: Tensor, w: Tensor, rstd: Tensor, dy: Tensor, dw: Tensor, o: NormBackwardOptions = {}): Tensor {
  const op = "rmsnormBackward";
  const { T, C } = checkNormArgs(op, x, w, 1);
  checkTensor(op, rstd, "rstd", ["f32"], [T]);
  checkTensor(op, dy, "dy", [x.dtype], [T, C]);
  checkTensor(op, dw, "dw", ["f32"], [C]);
  for (const [t, n] of [
    [rstd, "rstd"],
    [dy, "dy"],
    [dw, "dw"],
  ] as const)
    checkSameDevice(op, x, "x", t, n);
  if (o.residual !== undefined) {
    checkTensor(op, o.residual, "residual", [x.dtype], [T, C]);
    checkSameDevice(op, x, "x", o.residual, "residual");
  }
  const dx = output(op, x, x.dtype, [T, C], o.out, o.stream);
  if (x.device.kind === "cpu") {
    const r = rmsnormBackwardF64(f64Of(x), f64Of(w), rstd.data() as Float32Array, f64Of(dy), T, C, rounderFor(x.dtype));
    if (o.residual !== undefined) {
      const res = f64Of(o.residual);
      for (let i = 0; i < res.length; i++) r.dx[i] = Math.fround(r.dx[i] as number) + (res[i] as number);
    }
    store(dx, r.dx);
    accumulate(dw, r.dw);
    return dx;
  }
  checkCudaDType(op, x, "x", "bf16");
  const s = streamFor(x, o.stream);
  const k = kernels();
  const blocks = Number(k.ls_llama_rmsnorm_bwd_blocks(T));
  using partials = empty([Math.max(blocks, 1), C], { dtype: "f32", device: x.device, stream: s });
  launch(
    k.ls_llama_rmsnorm_bwd_bf16(
      x.ptr(),
      w.ptr(),
      rstd.ptr(),
      dy.ptr(),
      o.residual === undefined ? null : o.residual.ptr(),
      dx.ptr(),
      partials.ptr(),
      blocks,
      dw.ptr(),
      T,
      C,
      s.handle,
    ),
    "ls_llama_rmsnorm_bwd_bf16",
    `T=${T} C=${C}`,
  );
  return dx;
}
