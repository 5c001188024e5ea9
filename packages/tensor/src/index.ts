export * from "./bf16.ts";
export * from "./device.ts";
export * from "./dtype.ts";
export * from "./errors.ts";
export * from "./ops.ts";
export { Tensor, assertTensor, assertDTypeOf, assertSameDevice, assertSameDType, assertSameShape } from "./tensor.ts";
export type { DeviceStorage } from "./tensor.ts";
export { currentStream, withStream } from "./cuda.ts";
export { memoryReport } from "./memory.ts";
