// Memory accounting per device, for the trainer's logs and the tests of the allocator.

import { DeviceAllocator, type MemoryReport } from "@lightseq/cuda";
import { type DeviceLike, parseDevice } from "./device.ts";

/** In use, peak and reserved bytes of a CUDA device's pool (see DeviceAllocator). */
export function memoryReport(device: DeviceLike): MemoryReport {
  const d = parseDevice(device);
  if (d.kind !== "cuda") throw new TypeError(`memoryReport: expected a cuda device, got ${JSON.stringify(device)}`);
  return DeviceAllocator.forDevice(d.index).report();
}
