// The Llama ops: one file per op, forward and backward, CPU reference and CUDA path behind one signature.
export { type Cost, OpError, type Pass } from "./common.ts";
export * from "./embedding.ts";
export * from "./linear.ts";
export * from "./lm-head-loss.ts";
export * from "./residual.ts";
export * from "./rmsnorm.ts";
export * from "./rope.ts";
export * from "./swiglu.ts";
