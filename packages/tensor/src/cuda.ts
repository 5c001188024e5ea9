// The CUDA backend: device storage from the stream-ordered pool, ops as launches of the kernels
// library and cuBLASLt on the caller's stream. Nothing here synchronises the host except the
// explicit transfers to JS memory.

import * as cu from "@lightseq/cuda";
import type { Device } from "./device.ts";
import type { DType } from "./dtype.ts";
import { dtypeBytes } from "./dtype.ts";
import { shapeNumel } from "./errors.ts";
import { type DeviceStorage, Tensor } from "./tensor.ts";

class CudaStorage implements DeviceStorage {
  refs = 0;
  constructor(
    readonly device: Device & { kind: "cuda" },
    readonly bytes: number,
    readonly ptr: number,
    /** Freed on the stream it was allocated on: work on other streams must be ordered before (events). */
    readonly stream: cu.Stream,
    readonly allocator: cu.DeviceAllocator,
  ) {}
  free(): void {
    this.allocator.free(this.ptr, this.bytes, this.stream);
  }
}

const defaultStreams = new Map<number, cu.Stream>();
const currentStreams = new Map<number, cu.Stream>();

/** The stream ops on `device` use when none is given: a non-blocking stream made on first use. */
export function currentStream(device: number): cu.Stream {
  const s = currentStreams.get(device);
  if (s) return s;
  let d = defaultStreams.get(device);
  if (!d) {
    d = cu.Stream.create(device);
    defaultStreams.set(device, d);
  }
  return d;
}

/** Runs `fn` with `stream` as the current stream of its device. */
export function withStream<T>(stream: cu.Stream, fn: () => T): T {
  const prev = currentStreams.get(stream.device);
  currentStreams.set(stream.device, stream);
  try {
    return fn();
  } finally {
    if (prev) currentStreams.set(stream.device, prev);
    else currentStreams.delete(stream.device);
  }
}

export function allocate(device: Device & { kind: "cuda" }, dtype: DType, shape: readonly number[], stream?: cu.Stream): Tensor {
  cu.setDevice(device.index);
  const s = stream ?? currentStream(device.index);
  const allocator = cu.DeviceAllocator.forDevice(device.index);
  const bytes = shapeNumel(shape) * dtypeBytes(dtype);
  const ptr = allocator.alloc(bytes, s);
  return new Tensor(new CudaStorage(device, bytes, ptr, s, allocator), dtype, shape);
}

export function streamOf(t: Tensor, stream?: cu.Stream): cu.Stream {
  const d = t.device as Device & { kind: "cuda" };
  cu.setDevice(d.index);
  return stream ?? currentStream(d.index);
}

const sumsqPartials = new Map<number, number>();

/** Scratch for the two-pass sum-of-squares reduction, one per stream. */
export function sumsqScratch(stream: cu.Stream): number {
  let p = sumsqPartials.get(stream.handle);
  if (p === undefined) {
    const n = Number(cu.kernels().ls_sumsq_partials());
    p = cu.DeviceAllocator.forDevice(stream.device).alloc(n * 8, stream);
    sumsqPartials.set(stream.handle, p);
  }
  return p;
}

export { cu };
