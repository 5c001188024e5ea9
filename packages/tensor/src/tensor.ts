// Tensor: shape, dtype and device over a contiguous range of one storage (offset in elements).
// Views (reshape, narrow, slice of the leading dim) share the storage; each view must be disposed.

import { type Device, deviceName, sameDevice } from "./device.ts";
import { type DType, dtypeBytes, type HostArray, hostView } from "./dtype.ts";
import { fmtShape, shapeNumel, TensorError } from "./errors.ts";
import { HostStorage, release, retain, type Storage } from "./storage.ts";

/** Storage living in device memory; implemented by the CUDA backend. */
export interface DeviceStorage extends Storage {
  /** Device address of byte 0. */
  readonly ptr: number;
}

export class Tensor implements Disposable {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  readonly numel: number;
  /** Offset of the first element in the storage, in elements. */
  readonly offset: number;
  #storage: Storage | null;

  constructor(storage: Storage, dtype: DType, shape: readonly number[], offset = 0) {
    const numel = shapeNumel(shape);
    const end = (offset + numel) * dtypeBytes(dtype);
    if (end > storage.bytes) {
      throw new TensorError(`view ${fmtShape(shape)} ${dtype} at element ${offset} needs ${end} bytes; storage has ${storage.bytes}`);
    }
    this.#storage = storage;
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.numel = numel;
    this.offset = offset;
    this.device = storage.device;
    retain(storage);
  }

  get rank(): number {
    return this.shape.length;
  }

  get bytes(): number {
    return this.numel * dtypeBytes(this.dtype);
  }

  get isDisposed(): boolean {
    return this.#storage === null;
  }

  /** The storage; throws if the tensor was disposed. */
  storage(what = "tensor"): Storage {
    const s = this.#storage;
    if (s === null) throw new TensorError(`${what}: use after dispose (${this.describe()})`);
    return s;
  }

  /** A typed-array view of exactly this tensor's elements (CPU tensors only). */
  data(what = "tensor"): HostArray {
    const s = this.storage(what);
    if (!(s instanceof HostStorage) || s.buffer === null) {
      throw new TensorError(`${what}: expected a cpu tensor, got ${this.describe()} (use .to("cpu"))`);
    }
    return hostView(this.dtype, s.buffer, this.offset * dtypeBytes(this.dtype), this.numel);
  }

  /** Device address of the first element (CUDA tensors only). */
  ptr(what = "tensor"): number {
    const s = this.storage(what) as Partial<DeviceStorage>;
    if (s.ptr === undefined) throw new TensorError(`${what}: expected a cuda tensor, got ${this.describe()}`);
    return s.ptr + this.offset * dtypeBytes(this.dtype);
  }

  /** A new view with another shape over the same elements. One size may be -1. */
  reshape(shape: readonly number[]): Tensor {
    const out = [...shape];
    const free = out.indexOf(-1);
    if (free >= 0) {
      const rest = shapeNumel(out.filter((_, i) => i !== free));
      if (rest === 0 || this.numel % rest !== 0) {
        throw new TensorError(`reshape: cannot infer -1 in ${fmtShape(shape)} for ${this.numel} elements`);
      }
      out[free] = this.numel / rest;
    }
    if (shapeNumel(out) !== this.numel || out.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new TensorError(`reshape: ${fmtShape(this.shape)} (${this.numel} elements) cannot become ${fmtShape(shape)}`);
    }
    return new Tensor(this.storage("reshape"), this.dtype, out, this.offset);
  }

  /** A view of rows [start, start + length) of the leading dimension. */
  narrow(start: number, length: number): Tensor {
    const rows = this.shape[0];
    if (rows === undefined) throw new TensorError("narrow: expected a tensor of rank >= 1, got a scalar");
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > rows) {
      throw new TensorError(`narrow: rows [${start}, ${start + length}) out of range for ${fmtShape(this.shape)}`);
    }
    const inner = this.numel / Math.max(rows, 1);
    return new Tensor(this.storage("narrow"), this.dtype, [length, ...this.shape.slice(1)], this.offset + start * inner);
  }

  /** Another handle on the same elements; dispose it separately. */
  view(): Tensor {
    return new Tensor(this.storage("view"), this.dtype, this.shape, this.offset);
  }

  dispose(): void {
    const s = this.#storage;
    if (s === null) return;
    this.#storage = null;
    release(s);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  describe(): string {
    return `Tensor(${fmtShape(this.shape)}, ${this.dtype}, ${deviceName(this.device)}${this.#storage === null ? ", disposed" : ""})`;
  }

  toString(): string {
    return this.describe();
  }
}

export function assertTensor(t: unknown, argName: string): Tensor {
  if (!(t instanceof Tensor)) throw new TensorError(`${argName}: expected a Tensor, got ${typeof t}`);
  if (t.isDisposed) throw new TensorError(`${argName}: use after dispose (${t.describe()})`);
  return t;
}

export function assertDTypeOf(t: Tensor, argName: string, allowed: readonly DType[]): void {
  if (!allowed.includes(t.dtype)) {
    throw new TensorError(`${argName}: expected dtype ${allowed.join(" or ")}, got ${t.dtype} (${t.describe()})`);
  }
}

export function assertSameDevice(a: Tensor, aName: string, b: Tensor, bName: string): void {
  if (!sameDevice(a.device, b.device)) {
    throw new TensorError(`${bName}: expected device ${deviceName(a.device)} (as ${aName}), got ${deviceName(b.device)}`);
  }
}

export function assertSameDType(a: Tensor, aName: string, b: Tensor, bName: string): void {
  if (a.dtype !== b.dtype) throw new TensorError(`${bName}: expected dtype ${a.dtype} (as ${aName}), got ${b.dtype}`);
}

export function assertSameShape(a: Tensor, aName: string, b: Tensor, bName: string): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new TensorError(`${bName}: expected shape ${fmtShape(a.shape)} (as ${aName}), got ${fmtShape(b.shape)}`);
  }
}

export function hostTensor(dtype: DType, shape: readonly number[], device: Device): Tensor {
  const buf = new ArrayBuffer(shapeNumel(shape) * dtypeBytes(dtype));
  return new Tensor(new HostStorage(device, buf), dtype, shape);
}
