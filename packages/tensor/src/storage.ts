// Storage owns memory; tensors are views (offset + shape) over one storage. A storage is reference
// counted by the views that hold it and freed when the last one is disposed: lifetimes are explicit,
// never left to the garbage collector (it cannot see device memory pressure).

import type { Device } from "./device.ts";

export interface Storage {
  readonly device: Device;
  readonly bytes: number;
  /** Number of live tensors viewing this storage. */
  refs: number;
  /** Frees the memory. Called once, when refs reaches zero. */
  free(): void;
}

export class HostStorage implements Storage {
  readonly device: Device;
  readonly bytes: number;
  refs = 0;
  buffer: ArrayBuffer | null;
  constructor(device: Device, buffer: ArrayBuffer) {
    this.device = device;
    this.bytes = buffer.byteLength;
    this.buffer = buffer;
  }
  free(): void {
    this.buffer = null;
  }
}

export function retain(s: Storage): void {
  s.refs++;
}

export function release(s: Storage): void {
  if (--s.refs === 0) s.free();
}
