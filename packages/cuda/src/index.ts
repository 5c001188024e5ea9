export * from "./errors.ts";
export * from "./locate.ts";
export * from "./runtime.ts";
export * from "./kernels.ts";
export * from "./cublaslt.ts";
