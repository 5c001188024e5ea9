// The CPU reference backend: plain TypeScript on typed arrays. Slow, obvious and never deleted: every
// CUDA op is tested against it. bf16 operands widen to f32, f32 arithmetic is exact IEEE (Math.fround
// after each op, matching __fadd_rn/__fmul_rn), results round to bf16 nearest-even. Reductions and
// matmul accumulate in f64.

import { f32ToBf16Bits as narrowBits, bf16BitsToF32 as widen } from "./bf16.ts";
import type { DType, HostArray } from "./dtype.ts";

const fr = Math.fround;

export type BinaryOp = "add" | "mul";

export function binary(op: BinaryOp, dtype: DType, a: HostArray, b: HostArray, out: HostArray): void {
  const n = out.length;
  if (dtype === "i32") {
    const x = a as Int32Array;
    const y = b as Int32Array;
    const o = out as Int32Array;
    if (op === "add") for (let i = 0; i < n; i++) o[i] = ((x[i] as number) + (y[i] as number)) | 0;
    else for (let i = 0; i < n; i++) o[i] = Math.imul(x[i] as number, y[i] as number);
    return;
  }
  if (dtype === "f32") {
    const x = a as Float32Array;
    const y = b as Float32Array;
    const o = out as Float32Array;
    if (op === "add") for (let i = 0; i < n; i++) o[i] = (x[i] as number) + (y[i] as number);
    else for (let i = 0; i < n; i++) o[i] = (x[i] as number) * (y[i] as number);
    return;
  }
  const x = a as Uint16Array;
  const y = b as Uint16Array;
  const o = out as Uint16Array;
  for (let i = 0; i < n; i++) {
    const u = widen(x[i] as number);
    const v = widen(y[i] as number);
    o[i] = narrowBits(op === "add" ? fr(u + v) : fr(u * v));
  }
}

export function scale(dtype: DType, x: HostArray, alpha: number, out: HostArray): void {
  const s = fr(alpha);
  const n = out.length;
  if (dtype === "f32") {
    for (let i = 0; i < n; i++) (out as Float32Array)[i] = s * (x[i] as number);
    return;
  }
  for (let i = 0; i < n; i++) (out as Uint16Array)[i] = narrowBits(fr(s * widen(x[i] as number)));
}

/** y = fl(y + fl(alpha * x)) elementwise. */
export function axpy(dtype: DType, alpha: number, x: HostArray, y: HostArray): void {
  const s = fr(alpha);
  const n = y.length;
  if (dtype === "f32") {
    const yy = y as Float32Array;
    for (let i = 0; i < n; i++) yy[i] = (yy[i] as number) + fr(s * (x[i] as number));
    return;
  }
  const yy = y as Uint16Array;
  for (let i = 0; i < n; i++) yy[i] = narrowBits(fr(widen(yy[i] as number) + fr(s * widen(x[i] as number))));
}

export function sumOfSquares(dtype: DType, x: HostArray): number {
  let acc = 0;
  if (dtype === "bf16") {
    for (let i = 0; i < x.length; i++) {
      const v = widen(x[i] as number);
      acc += v * v;
    }
  } else {
    for (let i = 0; i < x.length; i++) {
      const v = x[i] as number;
      acc += v * v;
    }
  }
  return fr(acc);
}

export function cast(from: DType, x: HostArray, to: DType, out: HostArray): void {
  const n = out.length;
  if (from === to) {
    out.set(x as never);
    return;
  }
  for (let i = 0; i < n; i++) {
    const v = from === "bf16" ? widen(x[i] as number) : (x[i] as number);
    if (to === "bf16") (out as Uint16Array)[i] = narrowBits(v);
    else if (to === "f32") (out as Float32Array)[i] = v;
    else (out as Int32Array)[i] = castToI32(v);
  }
}

/** f -> i32 truncates toward zero and saturates, NaN -> 0 (CUDA's __float2int_rz). */
function castToI32(v: number): number {
  if (Number.isNaN(v)) return 0;
  if (v >= 2147483647) return 2147483647;
  if (v <= -2147483648) return -2147483648;
  return Math.trunc(v);
}

export function readF32(dtype: DType, x: HostArray, i: number): number {
  return dtype === "bf16" ? widen(x[i] as number) : (x[i] as number);
}

export interface MatmulDims {
  batch: number;
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  /** Elements between consecutive batch entries (0: the operand is shared by all batches). */
  strideA: number;
  strideB: number;
  alpha: number;
  beta: number;
}

/**
 * out[b] = alpha * op(A[b]) @ op(B[b]) + beta * out[b], row-major; op(A) is [m,k], op(B) is [k,n].
 * Accumulates in f64; the result is rounded once to the output dtype (`outDtype`, default the operands').
 */
export function matmul(dtype: DType, a: HostArray, b: HostArray, out: HostArray, d: MatmulDims, outDtype: DType = dtype): void {
  const { m, n, k } = d;
  const A = toF32(dtype, a);
  const B = toF32(dtype, b);
  const acc = new Float64Array(n);
  for (let bt = 0; bt < d.batch; bt++) {
    const ao = bt * d.strideA;
    const bo = bt * d.strideB;
    const oo = bt * m * n;
    for (let i = 0; i < m; i++) {
      acc.fill(0);
      for (let p = 0; p < k; p++) {
        const av = A[ao + (d.transA ? p * m + i : i * k + p)] as number;
        if (d.transB) {
          for (let j = 0; j < n; j++) acc[j] = (acc[j] as number) + av * (B[bo + j * k + p] as number);
        } else {
          const row = bo + p * n;
          for (let j = 0; j < n; j++) acc[j] = (acc[j] as number) + av * (B[row + j] as number);
        }
      }
      for (let j = 0; j < n; j++) {
        const prev = d.beta === 0 ? 0 : d.beta * readF32(outDtype, out, oo + i * n + j);
        const v = d.alpha * (acc[j] as number) + prev;
        if (outDtype === "bf16") (out as Uint16Array)[oo + i * n + j] = narrowBits(v);
        else (out as Float32Array)[oo + i * n + j] = v;
      }
    }
  }
}

function toF32(dtype: DType, x: HostArray): Float32Array {
  if (dtype === "f32") return x as Float32Array;
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = widen(x[i] as number);
  return out;
}
