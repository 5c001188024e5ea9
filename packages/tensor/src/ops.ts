// The tensor API: creation, transfers and ops, one signature for both backends. Each op checks its
// arguments (names, dtypes, devices, shapes), then runs the CPU reference or enqueues CUDA work on
// the stream given (default: the device's current stream).

import type { Stream } from "@lightseq/cuda";
import { bf16BitsToF32, f32ToBf16Bits } from "./bf16.ts";
import { blasMatmul, cpuMatmul } from "./blas.ts";
import * as cpu from "./cpu.ts";
import { allocate, cu, streamOf, sumsqScratch } from "./cuda.ts";
import { type Device, type DeviceLike, parseDevice } from "./device.ts";
import { assertDType, type DType, dtypeBytes, isFloating } from "./dtype.ts";
import { assertShape, fmtShape, shapeNumel, TensorError } from "./errors.ts";
import { fillNormalBf16, fillNormalF32, fillUniformBf16, fillUniformF32 } from "./rng.ts";
import { assertDTypeOf, assertSameDevice, assertSameDType, assertSameShape, assertTensor, hostTensor, type Tensor } from "./tensor.ts";

export interface Placement {
  dtype?: DType;
  device?: DeviceLike;
  /** CUDA only: the stream the allocation and fill are ordered on. */
  stream?: Stream;
}

export interface OpOptions {
  /** Write the result here instead of allocating (same shape, dtype and device as the result). */
  out?: Tensor;
  stream?: Stream;
}

type CudaDevice = Device & { kind: "cuda" };

function resolve(p: Placement): { dtype: DType; device: Device } {
  return { dtype: p.dtype === undefined ? "f32" : assertDType(p.dtype, "dtype"), device: parseDevice(p.device) };
}

/** Uninitialised memory (zeros on the CPU). */
export function empty(shape: readonly number[], p: Placement = {}): Tensor {
  const s = assertShape(shape, "shape");
  const { dtype, device } = resolve(p);
  if (device.kind === "cpu") return hostTensor(dtype, s, device);
  return allocate(device as CudaDevice, dtype, s, p.stream);
}

export function full(shape: readonly number[], value: number, p: Placement = {}): Tensor {
  const t = empty(shape, p);
  fill(t, value, p.stream);
  return t;
}

export function zeros(shape: readonly number[], p: Placement = {}): Tensor {
  return full(shape, 0, p);
}

/** Sets every element to `value` (rounded to the dtype: bf16 nearest-even, i32 truncated). */
export function fill(t: Tensor, value: number, stream?: Stream): void {
  assertTensor(t, "t");
  if (typeof value !== "number") throw new TensorError(`value: expected a number, got ${typeof value}`);
  if (t.device.kind === "cpu") {
    const d = t.data("t");
    if (t.dtype === "bf16") (d as Uint16Array).fill(f32ToBf16Bits(value));
    else if (t.dtype === "i32") (d as Int32Array).fill(value | 0);
    else (d as Float32Array).fill(value);
    return;
  }
  const s = streamOf(t, stream);
  const k = cu.kernels();
  if (t.dtype === "bf16") cu.checkLaunch(k.ls_fill_u16(t.ptr(), f32ToBf16Bits(value), t.numel, s.handle), "ls_fill_u16");
  else {
    const bits = new Uint32Array(new ArrayBuffer(4));
    if (t.dtype === "i32") new Int32Array(bits.buffer)[0] = value | 0;
    else new Float32Array(bits.buffer)[0] = value;
    cu.checkLaunch(k.ls_fill_u32(t.ptr(), bits[0] as number, t.numel, s.handle), "ls_fill_u32");
  }
}

/** A tensor from JS numbers (row-major); values are rounded to the dtype. */
export function fromArray(values: ArrayLike<number>, shape: readonly number[], p: Placement = {}): Tensor {
  const s = assertShape(shape, "shape");
  const { dtype, device } = resolve(p);
  if (values.length !== shapeNumel(s)) {
    throw new TensorError(`values: expected ${shapeNumel(s)} numbers for shape ${fmtShape(s)}, got ${values.length}`);
  }
  const host = hostTensor(dtype, s, parseDevice("cpu"));
  const d = host.data();
  if (dtype === "bf16") for (let i = 0; i < values.length; i++) (d as Uint16Array)[i] = f32ToBf16Bits(values[i] as number);
  else for (let i = 0; i < values.length; i++) d[i] = values[i] as number;
  if (device.kind === "cpu") return host;
  const t = to(host, device, { stream: p.stream });
  host.dispose();
  return t;
}

export interface RandOptions extends Placement {
  seed: bigint | number;
  /** Counter of the first element: fill [offset, offset + n) of the seed's stream. */
  offset?: number;
}

function seedOf(o: RandOptions): bigint {
  const s = typeof o.seed === "bigint" ? o.seed : BigInt(o.seed);
  if (s < 0n || s >= 1n << 64n) throw new TensorError(`seed: expected an integer in [0, 2^64), got ${o.seed}`);
  return s;
}

function offsetOf(o: RandOptions): number {
  const off = o.offset ?? 0;
  if (!Number.isSafeInteger(off) || off < 0) throw new TensorError(`offset: expected a non-negative integer, got ${off}`);
  return off;
}

/** Uniform in [lo, hi) from the counter-based generator: the same numbers on every device. */
export function rand(shape: readonly number[], o: RandOptions & { lo?: number; hi?: number }): Tensor {
  return random("uniform", shape, o, o.lo ?? 0, o.hi ?? 1);
}

/** Normal(mean, std) from the counter-based generator: the same numbers on every device. */
export function randn(shape: readonly number[], o: RandOptions & { mean?: number; std?: number }): Tensor {
  return random("normal", shape, o, o.mean ?? 0, o.std ?? 1);
}

function random(kind: "uniform" | "normal", shape: readonly number[], o: RandOptions, a: number, b: number): Tensor {
  const seed = seedOf(o);
  const offset = offsetOf(o);
  const t = empty(shape, o);
  if (!isFloating(t.dtype)) {
    t.dispose();
    throw new TensorError(`dtype: random fills need f32 or bf16, got ${t.dtype}`);
  }
  if (t.device.kind === "cpu") {
    const d = t.data();
    if (kind === "uniform") {
      if (t.dtype === "f32") fillUniformF32(d as Float32Array, seed, offset, a, b);
      else fillUniformBf16(d as Uint16Array, seed, offset, a, b);
    } else if (t.dtype === "f32") fillNormalF32(d as Float32Array, seed, offset, a, b);
    else fillNormalBf16(d as Uint16Array, seed, offset, a, b);
    return t;
  }
  const s = streamOf(t, o.stream);
  const k = cu.kernels();
  const fn =
    kind === "uniform"
      ? t.dtype === "f32"
        ? k.ls_rand_uniform_f32
        : k.ls_rand_uniform_bf16
      : t.dtype === "f32"
        ? k.ls_rand_normal_f32
        : k.ls_rand_normal_bf16;
  cu.checkLaunch(fn(t.ptr(), t.numel, seed, BigInt(offset), a, b, s.handle), `ls_rand_${kind}_${t.dtype}`);
  return t;
}

/**
 * A copy on `device`. Host<->device copies through JS memory synchronise the stream before
 * returning (the JS buffer must not move or be collected while the copy runs).
 */
export function to(x: Tensor, device: DeviceLike, o: { stream?: Stream } = {}): Tensor {
  assertTensor(x, "x");
  const dst = parseDevice(device);
  const out = empty(x.shape, { dtype: x.dtype, device: dst, stream: o.stream });
  copy(out, x, o.stream);
  return out;
}

/** dst <- src (same shape and dtype, any devices). */
export function copy(dst: Tensor, src: Tensor, stream?: Stream): void {
  assertTensor(dst, "dst");
  assertTensor(src, "src");
  assertSameDType(dst, "dst", src, "src");
  if (dst.numel !== src.numel)
    throw new TensorError(`src: expected ${dst.numel} elements (as dst ${fmtShape(dst.shape)}), got ${src.numel} (${fmtShape(src.shape)})`);
  if (dst.device.kind === "cpu" && src.device.kind === "cpu") {
    dst.data("dst").set(src.data("src") as never);
    return;
  }
  const onDevice = dst.device.kind === "cuda" ? dst : src;
  const s = streamOf(onDevice, stream);
  const bytes = src.bytes;
  if (dst.device.kind === "cuda" && src.device.kind === "cuda") {
    cu.memcpyAsync(dst.ptr("dst"), src.ptr("src"), bytes, s);
    return;
  }
  // One side is JS memory: pass the typed array itself (never a cached pointer) and wait.
  if (dst.device.kind === "cpu") cu.memcpyAsync(dst.data("dst"), src.ptr("src"), bytes, s);
  else cu.memcpyAsync(dst.ptr("dst"), src.data("src"), bytes, s);
  s.synchronize();
}

/** The elements as f32 numbers in a new Float32Array (bf16 widened, i32 converted). */
export function toFloat32Array(x: Tensor, o: { stream?: Stream } = {}): Float32Array {
  assertTensor(x, "x");
  const host = x.device.kind === "cpu" ? x.view() : to(x, "cpu", o);
  try {
    const d = host.data();
    if (x.dtype === "f32") return Float32Array.from(d as Float32Array);
    const out = new Float32Array(x.numel);
    if (x.dtype === "bf16") for (let i = 0; i < out.length; i++) out[i] = bf16BitsToF32(d[i] as number);
    else for (let i = 0; i < out.length; i++) out[i] = d[i] as number;
    return out;
  } finally {
    host.dispose();
  }
}

/** The single element of a one-element tensor, as a number. */
export function item(x: Tensor, o: { stream?: Stream } = {}): number {
  assertTensor(x, "x");
  if (x.numel !== 1) throw new TensorError(`x: item() needs exactly one element, got ${fmtShape(x.shape)}`);
  return toFloat32Array(x, o)[0] as number;
}

function output(like: Tensor, dtype: DType, shape: readonly number[], o: OpOptions, what: string): Tensor {
  if (o.out === undefined) return empty(shape, { dtype, device: like.device, stream: o.stream });
  const out = assertTensor(o.out, `${what}: out`);
  assertSameDevice(like, "input", out, `${what}: out`);
  if (out.dtype !== dtype) throw new TensorError(`${what}: out: expected dtype ${dtype}, got ${out.dtype}`);
  if (out.shape.length !== shape.length || out.shape.some((d, i) => d !== shape[i])) {
    throw new TensorError(`${what}: out: expected shape ${fmtShape(shape)}, got ${fmtShape(out.shape)}`);
  }
  return out.view();
}

/** x converted to `dtype` (f32 <-> bf16 on both backends; i32 on the CPU only). */
export function cast(x: Tensor, dtype: DType, o: OpOptions = {}): Tensor {
  assertTensor(x, "x");
  assertDType(dtype, "dtype");
  const out = output(x, dtype, x.shape, o, "cast");
  if (x.device.kind === "cpu") {
    cpu.cast(x.dtype, x.data("x"), dtype, out.data("out"));
    return out;
  }
  const s = streamOf(x, o.stream);
  if (x.dtype === dtype) cu.memcpyAsync(out.ptr(), x.ptr(), x.bytes, s);
  else if (x.dtype === "f32" && dtype === "bf16")
    cu.checkLaunch(cu.kernels().ls_cast_f32_bf16(x.ptr(), out.ptr(), x.numel, s.handle), "ls_cast_f32_bf16");
  else if (x.dtype === "bf16" && dtype === "f32")
    cu.checkLaunch(cu.kernels().ls_cast_bf16_f32(x.ptr(), out.ptr(), x.numel, s.handle), "ls_cast_bf16_f32");
  else {
    out.dispose();
    throw new TensorError(`cast: ${x.dtype} -> ${dtype} is not supported on cuda (only f32 <-> bf16)`);
  }
  return out;
}

function binary(op: cpu.BinaryOp, a: Tensor, b: Tensor, o: OpOptions): Tensor {
  assertTensor(a, `${op}: a`);
  assertTensor(b, `${op}: b`);
  assertSameDevice(a, `${op}: a`, b, `${op}: b`);
  assertSameDType(a, `${op}: a`, b, `${op}: b`);
  assertSameShape(a, `${op}: a`, b, `${op}: b`);
  const out = output(a, a.dtype, a.shape, o, op);
  if (a.device.kind === "cpu") {
    cpu.binary(op, a.dtype, a.data("a"), b.data("b"), out.data("out"));
    return out;
  }
  const s = streamOf(a, o.stream);
  const k = cu.kernels();
  const fn = {
    add: { f32: k.ls_add_f32, bf16: k.ls_add_bf16, i32: k.ls_add_i32 },
    mul: { f32: k.ls_mul_f32, bf16: k.ls_mul_bf16, i32: k.ls_mul_i32 },
  }[op][a.dtype];
  cu.checkLaunch(fn(a.ptr(), b.ptr(), out.ptr(), a.numel, s.handle), `ls_${op}_${a.dtype}`, fmtShape(a.shape));
  return out;
}

/** a + b elementwise (i32 wraps). */
export function add(a: Tensor, b: Tensor, o: OpOptions = {}): Tensor {
  return binary("add", a, b, o);
}

/** a * b elementwise (i32 wraps). */
export function mul(a: Tensor, b: Tensor, o: OpOptions = {}): Tensor {
  return binary("mul", a, b, o);
}

/** alpha * x (f32 or bf16; alpha rounded to f32). */
export function scale(x: Tensor, alpha: number, o: OpOptions = {}): Tensor {
  assertTensor(x, "scale: x");
  assertDTypeOf(x, "scale: x", ["f32", "bf16"]);
  const out = output(x, x.dtype, x.shape, o, "scale");
  if (x.device.kind === "cpu") {
    cpu.scale(x.dtype, x.data("x"), alpha, out.data("out"));
    return out;
  }
  const s = streamOf(x, o.stream);
  const k = cu.kernels();
  const fn = x.dtype === "f32" ? k.ls_scale_f32 : k.ls_scale_bf16;
  cu.checkLaunch(fn(x.ptr(), out.ptr(), alpha, x.numel, s.handle), `ls_scale_${x.dtype}`);
  return out;
}

/** y += alpha * x, in place (f32 or bf16). */
export function axpy(alpha: number, x: Tensor, y: Tensor, o: { stream?: Stream } = {}): void {
  assertTensor(x, "axpy: x");
  assertTensor(y, "axpy: y");
  assertDTypeOf(y, "axpy: y", ["f32", "bf16"]);
  assertSameDevice(y, "axpy: y", x, "axpy: x");
  assertSameDType(y, "axpy: y", x, "axpy: x");
  assertSameShape(y, "axpy: y", x, "axpy: x");
  if (x.device.kind === "cpu") {
    cpu.axpy(x.dtype, alpha, x.data("x"), y.data("y"));
    return;
  }
  const s = streamOf(x, o.stream);
  const k = cu.kernels();
  const fn = x.dtype === "f32" ? k.ls_axpy_f32 : k.ls_axpy_bf16;
  cu.checkLaunch(fn(alpha, x.ptr(), y.ptr(), x.numel, s.handle), `ls_axpy_${x.dtype}`);
}

/** sum(x^2) as a one-element f32 tensor on x's device (accumulated in f64, deterministic). */
export function sumOfSquares(x: Tensor, o: OpOptions = {}): Tensor {
  assertTensor(x, "sumOfSquares: x");
  assertDTypeOf(x, "sumOfSquares: x", ["f32", "bf16"]);
  const out = output(x, "f32", [1], o, "sumOfSquares");
  if (x.device.kind === "cpu") {
    (out.data() as Float32Array)[0] = cpu.sumOfSquares(x.dtype, x.data("x"));
    return out;
  }
  const s = streamOf(x, o.stream);
  const k = cu.kernels();
  const fn = x.dtype === "f32" ? k.ls_sumsq_f32 : k.ls_sumsq_bf16;
  cu.checkLaunch(fn(x.ptr(), x.numel, sumsqScratch(s), out.ptr(), s.handle), `ls_sumsq_${x.dtype}`);
  return out;
}

export interface MatmulOptions extends OpOptions {
  /** a is stored [k, m] (or [batch, k, m]) and used transposed. */
  transA?: boolean;
  /** b is stored [n, k] (or [batch, n, k]) and used transposed: x @ W^T with W [out, in]. */
  transB?: boolean;
  alpha?: number;
  /** out = alpha * a@b + beta * out; beta != 0 needs `out`. */
  beta?: number;
  /** f32 only: allow TF32 tensor cores on the GPU. */
  allowTf32?: boolean;
  /**
   * Output dtype: the operands' (default) or, for bf16 operands, f32 (the f32 accumulator is stored
   * unrounded; with beta = 1 this accumulates a bf16 product into an f32 gradient). Default: the dtype
   * of `out` when given, else the operands'.
   */
  outDtype?: DType;
}

/**
 * op(a) @ op(b): a [m,k] or [batch,m,k]; b [k,n] or [batch,k,n] (or 2-D, shared by every batch);
 * out [m,n] or [batch,m,n]. bf16 or f32 operands, f32 accumulation, output in the operands' dtype or
 * (bf16 operands) in f32: see `outDtype`.
 */
export function matmul(a: Tensor, b: Tensor, o: MatmulOptions = {}): Tensor {
  assertTensor(a, "matmul: a");
  assertTensor(b, "matmul: b");
  assertDTypeOf(a, "matmul: a", ["f32", "bf16"]);
  assertSameDType(a, "matmul: a", b, "matmul: b");
  assertSameDevice(a, "matmul: a", b, "matmul: b");
  if (a.rank !== 2 && a.rank !== 3) throw new TensorError(`matmul: a: expected rank 2 or 3, got ${fmtShape(a.shape)}`);
  if (b.rank !== 2 && b.rank !== 3) throw new TensorError(`matmul: b: expected rank 2 or 3, got ${fmtShape(b.shape)}`);
  if (b.rank === 3 && a.rank !== 3) throw new TensorError(`matmul: b is batched ${fmtShape(b.shape)} but a is not ${fmtShape(a.shape)}`);
  const batch = a.rank === 3 ? (a.shape[0] as number) : 1;
  if (b.rank === 3 && b.shape[0] !== batch) throw new TensorError(`matmul: b: expected batch ${batch} (as a), got ${b.shape[0]}`);
  const [ar, ac] = a.shape.slice(-2) as [number, number];
  const [br, bc] = b.shape.slice(-2) as [number, number];
  const transA = o.transA ?? false;
  const transB = o.transB ?? false;
  const m = transA ? ac : ar;
  const k = transA ? ar : ac;
  const kb = transB ? bc : br;
  const n = transB ? br : bc;
  if (k !== kb) {
    throw new TensorError(
      `matmul: inner sizes differ: a ${fmtShape(a.shape)}${transA ? "^T" : ""} has k=${k}, b ${fmtShape(b.shape)}${transB ? "^T" : ""} has k=${kb}`,
    );
  }
  const beta = o.beta ?? 0;
  if (beta !== 0 && o.out === undefined) throw new TensorError("matmul: beta != 0 needs an `out` tensor to accumulate into");
  const outDtype = o.outDtype === undefined ? (o.out?.dtype ?? a.dtype) : assertDType(o.outDtype, "matmul: outDtype");
  if (outDtype !== a.dtype && !(a.dtype === "bf16" && outDtype === "f32")) {
    throw new TensorError(
      `matmul: outDtype: ${a.dtype} operands give a ${a.dtype} output${a.dtype === "bf16" ? " or an f32 one" : ""}, got ${outDtype}`,
    );
  }
  const outShape = a.rank === 3 ? [batch, m, n] : [m, n];
  const out = output(a, outDtype, outShape, o, "matmul");
  const dims = {
    batch,
    m,
    n,
    k,
    transA,
    transB,
    strideA: a.rank === 3 ? m * k : 0,
    strideB: b.rank === 3 ? k * n : 0,
    alpha: o.alpha ?? 1,
    beta,
  };
  if (a.device.kind === "cpu") {
    // The reference unless this process chose OpenBLAS (setCpuMatmul("blas")).
    const run = cpuMatmul() === "blas" ? blasMatmul : cpu.matmul;
    run(a.dtype, a.data("a"), b.data("b"), out.data("out"), dims, outDtype);
    return out;
  }
  if (m * n * batch === 0) return out;
  const s = streamOf(a, o.stream);
  const mm = cu.Matmul.forDevice((a.device as CudaDevice).index);
  if (k === 0) {
    // The library rejects k = 0; the product is beta * out.
    if (beta === 0) fill(out, 0, s);
    else scale(out, beta, { out, stream: s });
    return out;
  }
  mm.run(
    { dtype: a.dtype as "f32" | "bf16", outDtype: outDtype as "f32" | "bf16", ...dims, allowTf32: o.allowTf32 ?? false },
    a.ptr(),
    b.ptr(),
    out.ptr(),
    dims.alpha,
    beta,
    s,
  );
  return out;
}

/** bytes of one element, re-exported for callers computing costs. */
export { dtypeBytes };
