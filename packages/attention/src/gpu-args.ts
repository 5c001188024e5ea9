// Argument checks, stream choice and output allocation shared by the GPU backends (cuda.ts, cudnn/):
// each refuses what it cannot take with an AttentionError that names the caller, the argument and the
// reason.

import { type Stream, setDevice } from "@lightseq/cuda";
import { currentStream, deviceName, empty, fmtShape, type Tensor } from "@lightseq/tensor";
import type { AttentionGrads, AttentionOutput, CheckedCall } from "./block.ts";
import { AttentionError } from "./layout.ts";

export function fail(who: string, msg: string): never {
  throw new AttentionError(`${who}: ${msg}`);
}

/**
 * The one CUDA device of a GPU backend's inputs, each checked to be on it and 16-byte aligned; else an
 * AttentionError naming the tensor. `backend` names the backend in the message ("CUDA", "cuDNN");
 * `alignWhy` says who needs the alignment.
 */
export function inputsDevice(who: string, tensors: Record<string, Tensor>, backend: "CUDA" | "cuDNN", alignWhy: string): number {
  let device = -1;
  for (const [name, t] of Object.entries(tensors)) {
    if (t.device.kind !== "cuda")
      fail(
        who,
        `${name}: the ${backend} backend needs tensors on a cuda device, got ${t.describe()} (use the reference backend on the cpu)`,
      );
    if (device < 0) device = t.device.index;
    else if (t.device.index !== device)
      fail(who, `${name}: expected device cuda:${device} (as the other inputs), got ${deviceName(t.device)}`);
    if (t.numel > 0 && t.ptr(name) % 16 !== 0)
      fail(who, `${name}: ${alignWhy}, got an address 16n + ${t.ptr(name) % 16}; a narrow() view must start on a whole row`);
  }
  return device;
}

/**
 * An output (or merge operand): dtype, shape, device, and `align` bytes. `alignWhy` says who needs the
 * alignment, in the message (default: the kernels' vector width).
 */
export function checkOut(
  who: string,
  t: Tensor,
  name: string,
  dtypes: readonly string[],
  shape: readonly number[],
  device: number,
  align = 16,
  alignWhy = `the kernels need a ${align}-byte aligned tensor`,
): void {
  if (!dtypes.includes(t.dtype)) fail(who, `${name}: expected dtype ${dtypes.join(" or ")}, got ${t.dtype}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    fail(who, `${name}: expected shape ${fmtShape(shape)}, got ${fmtShape(t.shape)}`);
  if (t.device.kind !== "cuda" || t.device.index !== device)
    fail(who, `${name}: expected device cuda:${device}, got ${deviceName(t.device)}`);
  if (t.numel > 0 && t.ptr(name) % align !== 0) fail(who, `${name}: ${alignWhy}, got an address ${align}n + ${t.ptr(name) % align}`);
}

/**
 * The gradient outputs: dq shaped as q, dk and dv as k and v, all of `dtype`, on `device`, 16-byte
 * aligned (checkOut; `alignWhy` as there).
 */
export function checkGrads(
  who: string,
  grads: AttentionGrads,
  dtype: string,
  shapes: { q: Tensor; k: Tensor; v: Tensor },
  device: number,
  alignWhy?: string,
): void {
  checkOut(who, grads.dq, "grads.dq", [dtype], shapes.q.shape, device, 16, alignWhy);
  checkOut(who, grads.dk, "grads.dk", [dtype], shapes.k.shape, device, 16, alignWhy);
  checkOut(who, grads.dv, "grads.dv", [dtype], shapes.v.shape, device, 16, alignWhy);
}

/** Makes `device` current and returns `stream`, or the device's current stream. */
export function streamFor(device: number, stream: Stream | undefined): Stream {
  setDevice(device);
  return stream ?? currentStream(device);
}

/**
 * A forward's fresh outputs, o shaped as q in c.outDtype and lse [Hq, Tq] f32, allocated on `s` and
 * written by `write`; if it throws, both are freed (stream-ordered) before the error goes on.
 */
export function newForwardOutput(q: Tensor, c: CheckedCall, s: Stream, write: (out: AttentionOutput) => void): AttentionOutput {
  const o = empty(q.shape, { dtype: c.outDtype, device: q.device, stream: s });
  const lse = empty([c.Hq, c.Tq], { dtype: "f32", device: q.device, stream: s });
  try {
    write({ o, lse });
  } catch (e) {
    o.dispose();
    lse.dispose();
    throw e;
  }
  return { o, lse };
}
