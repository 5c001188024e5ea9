// The cuDNN attention backend, by concern: abi.ts (the enum values we pass, and their checker against the
// headers; abi.c prints the headers' values), library.ts (loading, status checks), graph.ts (descriptors
// and the graph builder), sdpa.ts (the forward and backward graphs), plans.ts (the plan cache and
// execution), backend.ts (argument checks and the block-contract backend).

export { type AbiCheck, CUDNN_ABI, checkCudnnAbi } from "./abi.ts";
export {
  type CudnnBackend,
  type CudnnBackendOptions,
  createCudnnBackend,
  cudnnAvailable,
  cudnnBackend,
  cudnnBackwardInto,
  cudnnForwardInto,
} from "./backend.ts";
export { CudnnError } from "./library.ts";
export { type CudnnPlanInfo, clearCudnnPlans, cudnnPlans } from "./plans.ts";
