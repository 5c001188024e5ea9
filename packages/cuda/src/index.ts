export * from "./cli.ts";
export * from "./cublaslt.ts";
export * from "./errors.ts";
export * from "./ffi.ts";
export * from "./kernels.ts";
export * from "./locate.ts";
export * from "./runtime.ts";
export * from "./version.ts";
