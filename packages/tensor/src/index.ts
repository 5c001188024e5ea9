export * from "./bf16.ts";
export { currentStream, withStream } from "./cuda.ts";
export * from "./device.ts";
export * from "./dtype.ts";
export * from "./errors.ts";
export { memoryReport } from "./memory.ts";
export * from "./ops.ts";
export type { DeviceStorage } from "./tensor.ts";
export { assertDTypeOf, assertSameDevice, assertSameDType, assertSameShape, assertTensor, Tensor } from "./tensor.ts";
