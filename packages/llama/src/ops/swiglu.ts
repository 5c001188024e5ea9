// SwiGLU over the fused gate|up GEMM output: gu[T, 2F] (columns gate | up) -> a[T, F] = silu(g) * u,
// silu(g) = g * sigmoid(g).
// Backward: with sg = sigmoid(g),  dg = da * u * sg * (1 + g (1 - sg)),  du = da * silu(g)  -> dgu[T, 2F].
//
// CPU: the f64 cores below, rounded once. CUDA (kernels/src/llama_swiglu.cu): f32 math, one rounding to
// bf16, 16-byte loads when F % 8 == 0 (11008, 14336 are), a scalar path otherwise.

import type { Stream } from "@lightseq/cuda";
import type { Tensor } from "@lightseq/tensor";
import {
  type Cost,
  checkCudaDType,
  checkSameDevice,
  checkTensor,
  f64Of,
  fail,
  kernels,
  launch,
  output,
  type Pass,
  store,
  streamFor,
} from "./common.ts";

/** Forward: read g, u; write a. Backward: read g, u, da; write dg, du. */
export function swigluCost(s: { T: number; F: number; elemBytes?: number }, pass: Pass = "forward"): Cost {
  const e = s.elemBytes ?? 2;
  const n = s.T * s.F;
  return pass === "forward" ? { flops: 5 * n, bytes: 3 * n * e } : { flops: 10 * n, bytes: 5 * n * e };
}

// --- f64 reference cores ---

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

export function swigluForwardF64(gu: Float64Array, T: number, F: number): Float64Array {
  const a = new Float64Array(T * F);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < F; j++) {
      const g = gu[t * 2 * F + j] as number;
      const u = gu[t * 2 * F + F + j] as number;
      a[t * F + j] = g * sigmoid(g) * u;
    }
  return a;
}

export function swigluBackwardF64(gu: Float64Array, da: Float64Array, T: number, F: number): Float64Array {
  const d = new Float64Array(T * 2 * F);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < F; j++) {
      const g = gu[t * 2 * F + j] as number;
      const u = gu[t * 2 * F + F + j] as number;
      const s = sigmoid(g);
      const up = da[t * F + j] as number;
      d[t * 2 * F + j] = up * u * s * (1 + g * (1 - s));
      d[t * 2 * F + F + j] = up * g * s;
    }
  return d;
}

// --- the ops ---

function checkGu(op: string, gu: Tensor): { T: number; F: number } {
  checkTensor(op, gu, "gu", ["f32", "bf16"], [-1, -1]);
  const [T, W] = gu.shape as [number, number];
  if (W % 2 !== 0) fail(op, `gu: expected [T, 2F] (gate | up), got an odd width ${W}`);
  return { T, F: W / 2 };
}

export function swigluForward(gu: Tensor, o: { stream?: Stream; out?: Tensor } = {}): Tensor {
  const op = "swigluForward";
  const { T, F } = checkGu(op, gu);
  const a = output(op, gu, gu.dtype, [T, F], o.out, o.stream);
  if (gu.device.kind === "cpu") {
    store(a, swigluForwardF64(f64Of(gu), T, F));
    return a;
  }
  checkCudaDType(op, gu, "gu", "bf16");
  const s = streamFor(gu, o.stream);
  launch(kernels().ls_llama_swiglu_fwd_bf16(gu.ptr(), a.ptr(), T, F, s.handle), "ls_llama_swiglu_fwd_bf16", `T=${T} F=${F}`);
  return a;
}

export function swigluBackward(gu: Tensor, da: Tensor, o: { stream?: Stream; out?: Tensor } = {}): Tensor {
  const op = "swigluBackward";
  const { T, F } = checkGu(op, gu);
  checkTensor(op, da, "da", [gu.dtype], [T, F]);
  checkSameDevice(op, gu, "gu", da, "da");
  const dgu = output(op, gu, gu.dtype, [T, 2 * F], o.out, o.stream);
  if (gu.device.kind === "cpu") {
    store(dgu, swigluBackwardF64(f64Of(gu), f64Of(da), T, F));
    return dgu;
  }
  checkCudaDType(op, gu, "gu", "bf16");
  const s = streamFor(gu, o.stream);
  launch(kernels().ls_llama_swiglu_bwd_bf16(gu.ptr(), da.ptr(), dgu.ptr(), T, F, s.handle), "ls_llama_swiglu_bwd_bf16", `T=${T} F=${F}`);
  return dgu;
}
