// CUDA runtime through bun:ffi: one declaration table, every call through `check`. Handles (streams,
// events, pools) and device addresses are JS numbers. Out-parameters are written into typed arrays
// backed by explicit ArrayBuffers and passed as the array itself on every call (ecosystem.md 1.4:
// a cached ptr() of a small typed array goes stale after JIT tier-up).

import { CString, toArrayBuffer } from "bun:ffi";
import { CudaError, CudaOutOfMemoryError, LibraryNotFoundError, LibraryOverrideError, NoGpuError } from "./errors.ts";
import { type Bound, bind } from "./ffi.ts";
import { CUDART, locateLibrary } from "./locate.ts";

const cudartSymbols = {
  cudaGetErrorString: { args: ["i32"], returns: "ptr" },
  cudaGetErrorName: { args: ["i32"], returns: "ptr" },
  cudaGetLastError: { args: [], returns: "i32" },
  cudaRuntimeGetVersion: { args: ["ptr"], returns: "i32" },
  cudaDriverGetVersion: { args: ["ptr"], returns: "i32" },
  cudaGetDeviceCount: { args: ["ptr"], returns: "i32" },
  cudaSetDevice: { args: ["i32"], returns: "i32" },
  cudaGetDevice: { args: ["ptr"], returns: "i32" },
  cudaDeviceGetAttribute: { args: ["ptr", "i32", "i32"], returns: "i32" },
  cudaGetDeviceProperties: { args: ["ptr", "i32"], returns: "i32" },
  cudaDeviceSynchronize: { args: [], returns: "i32" },
  cudaMemGetInfo: { args: ["ptr", "ptr"], returns: "i32" },
  cudaStreamCreateWithFlags: { args: ["ptr", "u32"], returns: "i32" },
  cudaStreamCreateWithPriority: { args: ["ptr", "u32", "i32"], returns: "i32" },
  cudaDeviceGetStreamPriorityRange: { args: ["ptr", "ptr"], returns: "i32" },
  cudaStreamDestroy: { args: ["ptr"], returns: "i32" },
  cudaStreamSynchronize: { args: ["ptr"], returns: "i32" },
  cudaStreamWaitEvent: { args: ["ptr", "ptr", "u32"], returns: "i32" },
  cudaStreamQuery: { args: ["ptr"], returns: "i32" },
  cudaEventCreateWithFlags: { args: ["ptr", "u32"], returns: "i32" },
  cudaEventDestroy: { args: ["ptr"], returns: "i32" },
  cudaEventRecord: { args: ["ptr", "ptr"], returns: "i32" },
  cudaEventQuery: { args: ["ptr"], returns: "i32" },
  cudaEventSynchronize: { args: ["ptr"], returns: "i32" },
  cudaEventElapsedTime: { args: ["ptr", "ptr", "ptr"], returns: "i32" },
  cudaMallocAsync: { args: ["ptr", "u64", "ptr"], returns: "i32" },
  cudaFreeAsync: { args: ["ptr", "ptr"], returns: "i32" },
  cudaMalloc: { args: ["ptr", "u64"], returns: "i32" },
  cudaFree: { args: ["ptr"], returns: "i32" },
  cudaDeviceGetDefaultMemPool: { args: ["ptr", "i32"], returns: "i32" },
  cudaMemPoolSetAttribute: { args: ["ptr", "i32", "ptr"], returns: "i32" },
  cudaMemPoolGetAttribute: { args: ["ptr", "i32", "ptr"], returns: "i32" },
  cudaMemPoolTrimTo: { args: ["ptr", "u64"], returns: "i32" },
  cudaMallocHost: { args: ["ptr", "u64"], returns: "i32" },
  cudaFreeHost: { args: ["ptr"], returns: "i32" },
  cudaMemcpyAsync: { args: ["ptr", "ptr", "u64", "i32", "ptr"], returns: "i32" },
  // (dst, dpitch, src, spitch, width bytes, rows, kind, stream)
  cudaMemcpy2DAsync: { args: ["ptr", "u64", "ptr", "u64", "u64", "u64", "i32", "ptr"], returns: "i32" },
  cudaMemsetAsync: { args: ["ptr", "i32", "u64", "ptr"], returns: "i32" },
} as const;

type Cudart = Bound<typeof cudartSymbols>;

/** cudaError_t values we act on (driver_types.h). */
export const cudaErrors = {
  success: 0,
  memoryAllocation: 2,
  insufficientDriver: 35,
  notReady: 600,
  noDevice: 100,
} as const;

export const MemcpyKind = { hostToHost: 0, hostToDevice: 1, deviceToHost: 2, deviceToDevice: 3, default: 4 } as const;

/** cudaDeviceAttr values (driver_types.h, CUDA 13). */
export const DeviceAttr = {
  multiProcessorCount: 16,
  l2CacheSize: 38,
  computeCapabilityMajor: 75,
  computeCapabilityMinor: 76,
  maxSharedMemoryPerBlockOptin: 97,
} as const;

const MemPoolAttr = { releaseThreshold: 4, reservedMemCurrent: 5, reservedMemHigh: 6, usedMemCurrent: 7, usedMemHigh: 8 };

let lib: { symbols: Cudart; path: string } | null = null;
let loadError: Error | null = null;

/** Loads libcudart once; throws LibraryNotFoundError naming every place it looked. */
export function cudart(): Cudart {
  if (lib) return lib.symbols;
  if (loadError) throw loadError;
  const found = locateLibrary(CUDART);
  if (found.path === null) {
    loadError = new LibraryNotFoundError(
      CUDART.name,
      found.tried,
      "Install the CUDA toolkit or `pip install nvidia-cuda-runtime`, or set LIGHTSEQ_CUDART_SO to the library file.",
    );
    throw loadError;
  }
  try {
    lib = { symbols: bind(found.path, cudartSymbols), path: found.path };
  } catch (e) {
    loadError = new LibraryNotFoundError(CUDART.name, [...found.tried, `${found.path}: ${(e as Error).message}`], "");
    throw loadError;
  }
  return lib.symbols;
}

export function cudartPath(): string | null {
  return lib?.path ?? null;
}

export function errorName(code: number): string {
  const p = cudart().cudaGetErrorName(code);
  return p ? new CString(p as never).toString() : `cudaError ${code}`;
}

export function errorString(code: number): string {
  const p = cudart().cudaGetErrorString(code);
  return p ? new CString(p as never).toString() : "unknown error";
}

/** Throws a CudaError for a non-zero cudaError_t. */
export function check(code: number, call: string, context?: string): void {
  if (code === 0) return;
  // Clear the error so the next call does not see it (sticky errors stay regardless).
  cudart().cudaGetLastError();
  const Err = code === cudaErrors.memoryAllocation ? CudaOutOfMemoryError : CudaError;
  throw new Err(call, code, errorName(code), errorString(code), context);
}

// Scratch out-parameters, each over its own explicit ArrayBuffer.
const outI32 = new Int32Array(new ArrayBuffer(8));
const outU64 = new BigUint64Array(new ArrayBuffer(16));
const outF32 = new Float32Array(new ArrayBuffer(4));

function readPtr(): number {
  return Number(outU64[0]);
}

export function runtimeVersion(): number {
  check(cudart().cudaRuntimeGetVersion(outI32), "cudaRuntimeGetVersion");
  return outI32[0] as number;
}

export function driverVersion(): number {
  check(cudart().cudaDriverGetVersion(outI32), "cudaDriverGetVersion");
  return outI32[0] as number;
}

let gpuProbe: { count: number; reason: string } | null = null;

/** Number of visible GPUs, and why it is zero when it is (no library, no driver, no device). */
export function probeGpus(): { count: number; reason: string } {
  if (gpuProbe) return gpuProbe;
  try {
    const code = cudart().cudaGetDeviceCount(outI32);
    if (code !== 0) {
      cudart().cudaGetLastError();
      gpuProbe = {
        count: 0,
        reason: `cudaGetDeviceCount returned ${errorName(code)} (${code}): ${errorString(code)} (runtime ${cudartPath()})`,
      };
    } else {
      const count = outI32[0] as number;
      gpuProbe = { count, reason: count === 0 ? "cudaGetDeviceCount found no device" : "ok" };
    }
  } catch (e) {
    // A LIGHTSEQ_CUDART_SO naming no file is the user's mistake, not "no GPU".
    if (e instanceof LibraryOverrideError) throw e;
    gpuProbe = { count: 0, reason: (e as Error).message };
  }
  return gpuProbe;
}

export function hasGpu(): boolean {
  return probeGpus().count > 0;
}

/** Throws NoGpuError (with the reason) unless device `index` exists. */
export function requireDevice(index: number): void {
  const { count, reason } = probeGpus();
  if (count === 0) throw new NoGpuError(`no CUDA device available: ${reason}`);
  if (!Number.isInteger(index) || index < 0 || index >= count) {
    throw new NoGpuError(
      `cuda:${index} does not exist: ${count} device(s) visible (CUDA_VISIBLE_DEVICES=${process.env.CUDA_VISIBLE_DEVICES ?? "unset"})`,
    );
  }
}

let currentDevice = -1;

/** cudaSetDevice, skipped when the device is already current on this thread. */
export function setDevice(index: number): void {
  if (currentDevice === index) return;
  requireDevice(index);
  check(cudart().cudaSetDevice(index), "cudaSetDevice", `device ${index}`);
  currentDevice = index;
}

export function deviceAttribute(attr: number, device: number): number {
  check(cudart().cudaDeviceGetAttribute(outI32, attr, device), "cudaDeviceGetAttribute", `attr ${attr}`);
  return outI32[0] as number;
}

export interface DeviceInfo {
  index: number;
  name: string;
  computeCapability: [number, number];
  multiProcessors: number;
  l2Bytes: number;
  sharedMemoryPerBlockOptin: number;
  totalBytes: number;
}

export function deviceInfo(index: number): DeviceInfo {
  setDevice(index);
  // cudaDeviceProp begins with char name[256]; the rest of the struct changes between versions,
  // so only the name is read from it (into a buffer far larger than the struct).
  const props = new Uint8Array(new ArrayBuffer(8192));
  check(cudart().cudaGetDeviceProperties(props, index), "cudaGetDeviceProperties", `device ${index}`);
  const end = props.indexOf(0);
  const name = new TextDecoder().decode(props.subarray(0, end < 0 ? 256 : Math.min(end, 256)));
  return {
    index,
    name,
    computeCapability: [
      deviceAttribute(DeviceAttr.computeCapabilityMajor, index),
      deviceAttribute(DeviceAttr.computeCapabilityMinor, index),
    ],
    multiProcessors: deviceAttribute(DeviceAttr.multiProcessorCount, index),
    l2Bytes: deviceAttribute(DeviceAttr.l2CacheSize, index),
    sharedMemoryPerBlockOptin: deviceAttribute(DeviceAttr.maxSharedMemoryPerBlockOptin, index),
    totalBytes: memGetInfo(index).total,
  };
}

export function memGetInfo(index: number): { free: number; total: number } {
  setDevice(index);
  const b = new BigUint64Array(new ArrayBuffer(16));
  check(cudart().cudaMemGetInfo(b, b.subarray(1)), "cudaMemGetInfo");
  return { free: Number(b[0]), total: Number(b[1]) };
}

export function deviceSynchronize(): void {
  check(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

// ---------------------------------------------------------------------------------------------
// Streams and events

export class Stream implements Disposable {
  #handle: number;
  constructor(
    readonly device: number,
    handle: number,
    readonly owned: boolean,
  ) {
    this.#handle = handle;
  }

  /**
   * A new non-blocking stream on `device` (never synchronises with the legacy default stream).
   * priority "high": the device's greatest stream priority, so its kernels (NCCL's, say) are
   * scheduled ahead of a long-running GEMM's blocks as SMs free up, as PyTorch does for NCCL.
   */
  static create(device: number, o: { priority?: "default" | "high" } = {}): Stream {
    setDevice(device);
    if (o.priority === "high") {
      const range = new Int32Array(new ArrayBuffer(8));
      check(cudart().cudaDeviceGetStreamPriorityRange(range, range.subarray(1)), "cudaDeviceGetStreamPriorityRange");
      check(cudart().cudaStreamCreateWithPriority(outU64, 1, range[1] as number), "cudaStreamCreateWithPriority", `device ${device}`);
    } else {
      check(cudart().cudaStreamCreateWithFlags(outU64, 1), "cudaStreamCreateWithFlags", `device ${device}`);
    }
    return new Stream(device, readPtr(), true);
  }

  get handle(): number {
    if (this.#handle < 0) throw new CudaError("Stream.handle", 400, "cudaErrorInvalidResourceHandle", "stream used after dispose");
    return this.#handle;
  }

  synchronize(): void {
    check(cudart().cudaStreamSynchronize(this.handle), "cudaStreamSynchronize");
  }

  /** True when all work enqueued so far has finished (never blocks). */
  query(): boolean {
    const code = cudart().cudaStreamQuery(this.handle);
    if (code === cudaErrors.notReady) return false;
    check(code, "cudaStreamQuery");
    return true;
  }

  /** Work enqueued on this stream after this call waits for `event`. */
  wait(event: Event): void {
    check(cudart().cudaStreamWaitEvent(this.handle, event.handle, 0), "cudaStreamWaitEvent");
  }

  /** Records a fresh event on this stream and makes `other` wait for it. */
  waitFor(other: Stream, event: Event): void {
    event.record(other);
    this.wait(event);
  }

  dispose(): void {
    if (this.#handle < 0 || !this.owned) return;
    check(cudart().cudaStreamDestroy(this.#handle), "cudaStreamDestroy");
    this.#handle = -1;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export class Event implements Disposable {
  #handle: number;
  private constructor(handle: number) {
    this.#handle = handle;
  }

  /** timing=false makes a cheaper event for pure ordering (cudaEventDisableTiming). */
  static create(device: number, opts: { timing?: boolean } = {}): Event {
    setDevice(device);
    check(cudart().cudaEventCreateWithFlags(outU64, opts.timing ? 0 : 2), "cudaEventCreateWithFlags");
    return new Event(readPtr());
  }

  get handle(): number {
    if (this.#handle < 0) throw new CudaError("Event.handle", 400, "cudaErrorInvalidResourceHandle", "event used after dispose");
    return this.#handle;
  }

  record(stream: Stream): this {
    check(cudart().cudaEventRecord(this.handle, stream.handle), "cudaEventRecord");
    return this;
  }

  /** Non-blocking: true once the recorded work has completed. */
  query(): boolean {
    const code = cudart().cudaEventQuery(this.handle);
    if (code === cudaErrors.notReady) return false;
    check(code, "cudaEventQuery");
    return true;
  }

  synchronize(): void {
    check(cudart().cudaEventSynchronize(this.handle), "cudaEventSynchronize");
  }

  /** Milliseconds from `this` to `end` (both recorded with timing enabled, `end` completed). */
  elapsedMs(end: Event): number {
    check(cudart().cudaEventElapsedTime(outF32, this.handle, end.handle), "cudaEventElapsedTime");
    return outF32[0] as number;
  }

  dispose(): void {
    if (this.#handle < 0) return;
    check(cudart().cudaEventDestroy(this.#handle), "cudaEventDestroy");
    this.#handle = -1;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Memory

export interface MemoryReport {
  device: number;
  /** Bytes in live allocations made through this allocator. */
  inUse: number;
  /** Highest inUse since start (or the last resetPeak). */
  peak: number;
  /** Bytes the pool holds from the driver (cached + in use). */
  reserved: number;
  reservedPeak: number;
  /** Allocations and frees served so far. */
  allocs: number;
  frees: number;
  /** Device memory free/total as the driver sees it. */
  deviceFree: number;
  deviceTotal: number;
}

/**
 * Stream-ordered allocator over the device's default memory pool (cudaMallocAsync). The pool's
 * release threshold is set to "never", so after warm-up freed blocks are reused and no allocation
 * reaches the driver; `reserved` stays flat.
 */
export class DeviceAllocator {
  readonly pool: number;
  inUse = 0;
  peak = 0;
  allocs = 0;
  frees = 0;
  readonly #value = new BigUint64Array(new ArrayBuffer(8));

  private constructor(readonly device: number) {
    setDevice(device);
    check(cudart().cudaDeviceGetDefaultMemPool(outU64, device), "cudaDeviceGetDefaultMemPool");
    this.pool = readPtr();
    this.#value[0] = 0xffffffffffffffffn;
    check(
      cudart().cudaMemPoolSetAttribute(this.pool, MemPoolAttr.releaseThreshold, this.#value),
      "cudaMemPoolSetAttribute(ReleaseThreshold)",
    );
  }

  static #byDevice = new Map<number, DeviceAllocator>();

  static forDevice(device: number): DeviceAllocator {
    let a = DeviceAllocator.#byDevice.get(device);
    if (!a) {
      a = new DeviceAllocator(device);
      DeviceAllocator.#byDevice.set(device, a);
    }
    return a;
  }

  /** Allocates `bytes` ordered on `stream`. Zero bytes gives address 0. */
  alloc(bytes: number, stream: Stream): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`alloc: bytes must be a non-negative integer, got ${bytes}`);
    if (bytes === 0) return 0;
    setDevice(this.device);
    const code = cudart().cudaMallocAsync(outU64, bytes, stream.handle);
    if (code !== 0) {
      const info = (() => {
        try {
          return memGetInfo(this.device);
        } catch {
          return { free: Number.NaN, total: Number.NaN };
        }
      })();
      check(
        code,
        "cudaMallocAsync",
        `requested ${fmtBytes(bytes)} on cuda:${this.device}; in use ${fmtBytes(this.inUse)}, device free ${fmtBytes(info.free)} of ${fmtBytes(info.total)}`,
      );
    }
    this.inUse += bytes;
    this.allocs++;
    if (this.inUse > this.peak) this.peak = this.inUse;
    return readPtr();
  }

  free(ptr: number, bytes: number, stream: Stream): void {
    if (ptr === 0) return;
    setDevice(this.device);
    check(cudart().cudaFreeAsync(ptr, stream.handle), "cudaFreeAsync");
    this.inUse -= bytes;
    this.frees++;
  }

  poolAttribute(attr: number): number {
    check(cudart().cudaMemPoolGetAttribute(this.pool, attr, this.#value), "cudaMemPoolGetAttribute");
    return Number(this.#value[0]);
  }

  report(): MemoryReport {
    const info = memGetInfo(this.device);
    return {
      device: this.device,
      inUse: this.inUse,
      peak: this.peak,
      reserved: this.poolAttribute(MemPoolAttr.reservedMemCurrent),
      reservedPeak: this.poolAttribute(MemPoolAttr.reservedMemHigh),
      allocs: this.allocs,
      frees: this.frees,
      deviceFree: info.free,
      deviceTotal: info.total,
    };
  }

  resetPeak(): void {
    this.peak = this.inUse;
  }

  /** Returns cached, unused memory to the driver (after synchronising the device). */
  trim(): void {
    deviceSynchronize();
    check(cudart().cudaMemPoolTrimTo(this.pool, 0), "cudaMemPoolTrimTo");
  }
}

export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(2)} ${units[u]}`;
}

/** Page-locked host memory owned by CUDA, with a zero-copy JS view (at most 4 GiB per view). */
export class PinnedBuffer implements Disposable {
  #ptr: number;
  readonly bytes: number;
  readonly buffer: ArrayBuffer;
  private constructor(ptr: number, bytes: number) {
    this.#ptr = ptr;
    this.bytes = bytes;
    this.buffer = bytes === 0 ? new ArrayBuffer(0) : toArrayBuffer(ptr as never, 0, bytes);
  }

  static alloc(bytes: number): PinnedBuffer {
    if (bytes > 2 ** 32) throw new RangeError(`PinnedBuffer: ${fmtBytes(bytes)} exceeds the 4 GiB limit of one JS view; stage in chunks`);
    if (bytes === 0) return new PinnedBuffer(0, 0);
    check(cudart().cudaMallocHost(outU64, bytes), "cudaMallocHost", fmtBytes(bytes));
    return new PinnedBuffer(readPtr(), bytes);
  }

  get ptr(): number {
    if (this.#ptr < 0) throw new CudaError("PinnedBuffer.ptr", 400, "cudaErrorInvalidValue", "pinned buffer used after dispose");
    return this.#ptr;
  }

  dispose(): void {
    if (this.#ptr <= 0) return;
    check(cudart().cudaFreeHost(this.#ptr), "cudaFreeHost");
    this.#ptr = -1;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Async copy of `bytes` between any two addresses (device or pinned host; UVA decides the kind). */
export function memcpyAsync(
  dst: number | NodeJS.TypedArray,
  src: number | NodeJS.TypedArray,
  bytes: number,
  stream: Stream,
  context?: string,
): void {
  if (bytes === 0) return;
  check(
    cudart().cudaMemcpyAsync(dst as never, src as never, bytes, MemcpyKind.default, stream.handle),
    "cudaMemcpyAsync",
    context ?? fmtBytes(bytes),
  );
}

/** Async copy of `rows` rows of `width` bytes, from src (row pitch srcPitch bytes) to dst (dstPitch), device to device. */
export function memcpy2dAsync(
  dst: number,
  dstPitch: number,
  src: number,
  srcPitch: number,
  width: number,
  rows: number,
  stream: Stream,
): void {
  if (width === 0 || rows === 0) return;
  check(
    cudart().cudaMemcpy2DAsync(dst, dstPitch, src, srcPitch, width, rows, MemcpyKind.deviceToDevice, stream.handle),
    "cudaMemcpy2DAsync",
    `${rows} rows of ${width} bytes`,
  );
}

export function memsetAsync(dst: number, value: number, bytes: number, stream: Stream): void {
  if (bytes === 0) return;
  check(cudart().cudaMemsetAsync(dst, value, bytes, stream.handle), "cudaMemsetAsync", fmtBytes(bytes));
}

/**
 * For test files: true when GPU tests must be skipped. With LIGHTSEQ_REQUIRE_GPU=1 (`bun run test:gpu`)
 * a missing GPU is an error instead, so a GPU run can never pass by skipping everything.
 */
export function skipWithoutGpu(): boolean {
  const { count, reason } = probeGpus();
  if (count > 0) return false;
  if (process.env.LIGHTSEQ_REQUIRE_GPU === "1") throw new NoGpuError(`LIGHTSEQ_REQUIRE_GPU=1 but ${reason}`);
  return true;
}
