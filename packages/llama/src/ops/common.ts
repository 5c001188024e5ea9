// What every op file shares: argument checks that name the op and the argument, the move between
// tensors and the f64 arrays the CPU references compute on, and the CUDA launch plumbing (device
// and stream). Ops throw OpError for a caller's mistake, before anything is launched.

import { checkLaunch, kernels, type Stream, setDevice } from "@lightseq/cuda";
import {
  bf16BitsToF32,
  currentStream,
  type DType,
  deviceName,
  empty,
  f32ToBf16Bits,
  fmtShape,
  sameDevice,
  Tensor,
  TensorError,
} from "@lightseq/tensor";

export class OpError extends TensorError {
  override name = "OpError";
}

export interface OpOptions {
  stream?: Stream;
  /** Write the result here (same shape, dtype and device as the result would have). */
  out?: Tensor;
}

/** What one pass of an op costs: floating-point operations and bytes moved to and from memory. */
export interface Cost {
  flops: number;
  bytes: number;
}

export type Pass = "forward" | "backward";

export function fail(op: string, msg: string): never {
  throw new OpError(`${op}: ${msg}`);
}

/** A live tensor of one of `dtypes`; `shape` entries of -1 accept any size. */
export function checkTensor(op: string, t: unknown, name: string, dtypes: readonly DType[], shape?: readonly number[]): Tensor {
  if (!(t instanceof Tensor)) fail(op, `${name}: expected a Tensor, got ${t === null ? "null" : typeof t}`);
  if (t.isDisposed) fail(op, `${name}: use after dispose (${t.describe()})`);
  if (!dtypes.includes(t.dtype)) fail(op, `${name}: expected dtype ${dtypes.join(" or ")}, got ${t.dtype}`);
  if (shape !== undefined && (t.shape.length !== shape.length || t.shape.some((d, i) => shape[i] !== -1 && d !== shape[i]))) {
    fail(op, `${name}: expected shape ${fmtShape(shape.map((d) => (d === -1 ? "*" : d)) as never)}, got ${fmtShape(t.shape)}`);
  }
  return t;
}

export function checkSameDevice(op: string, a: Tensor, aName: string, b: Tensor, bName: string): void {
  if (!sameDevice(a.device, b.device))
    fail(op, `${bName}: expected device ${deviceName(a.device)} (as ${aName}), got ${deviceName(b.device)}`);
}

export function checkSameDType(op: string, a: Tensor, aName: string, b: Tensor, bName: string): void {
  if (a.dtype !== b.dtype) fail(op, `${bName}: expected dtype ${a.dtype} (as ${aName}), got ${b.dtype}`);
}

/** The result tensor: `o.out` checked against (dtype, shape, device), or a new one. */
export function output(
  op: string,
  like: Tensor,
  dtype: DType,
  shape: readonly number[],
  out: Tensor | undefined,
  stream?: Stream,
  name = "out",
): Tensor {
  if (out === undefined) return empty(shape, { dtype, device: like.device, stream });
  checkTensor(op, out, name, [dtype], shape);
  checkSameDevice(op, like, "input", out, name);
  return out.view();
}

/** The elements of a CPU tensor widened to f64 (bf16 and f32 exactly; i32 as integers). */
export function f64Of(t: Tensor): Float64Array {
  const d = t.data();
  const out = new Float64Array(t.numel);
  if (t.dtype === "bf16") for (let i = 0; i < out.length; i++) out[i] = bf16BitsToF32(d[i] as number);
  else for (let i = 0; i < out.length; i++) out[i] = d[i] as number;
  return out;
}

/** Stores f64 values into a CPU tensor, rounded once to its dtype (bf16 via f32, nearest-even). */
export function store(t: Tensor, v: ArrayLike<number>): void {
  const d = t.data();
  if (t.dtype === "bf16") for (let i = 0; i < v.length; i++) (d as Uint16Array)[i] = f32ToBf16Bits(v[i] as number);
  else for (let i = 0; i < v.length; i++) d[i] = v[i] as number;
}

/** Adds f64 values into an f32 CPU tensor in place: t = fl32(t + v). */
export function accumulate(t: Tensor, v: ArrayLike<number>): void {
  const d = t.data() as Float32Array;
  for (let i = 0; i < v.length; i++) d[i] = (d[i] as number) + (v[i] as number);
}

/** What storing an intermediate in `dtype` does to it: bf16 rounding, or nothing (f32 data: the cores keep f64). */
export function rounderFor(dtype: DType): (x: number) => number {
  if (dtype !== "bf16") return (x) => x;
  return (x) => bf16BitsToF32(f32ToBf16Bits(x));
}

// --- CUDA ---

/** Makes the tensor's device current and returns the stream to launch on. */
export function streamFor(t: Tensor, stream: Stream | undefined): Stream {
  const d = t.device as { kind: "cuda"; index: number };
  setDevice(d.index);
  return stream ?? currentStream(d.index);
}

/** The CUDA kernels need bf16 activations; f32 where named. */
export function checkCudaDType(op: string, t: Tensor, name: string, dtype: DType): void {
  if (t.dtype !== dtype)
    fail(op, `${name}: on cuda expected dtype ${dtype}, got ${t.dtype} (the GPU path runs bf16 activations and f32 statistics/gradients)`);
}

export function launch(code: number, kernel: string, context?: string): void {
  checkLaunch(code, kernel, context);
}

export { kernels };
