// The Hopper (sm_90a) kernels of block attention: attention_sm90.cu. attention.cu dispatches to them on
// devices of compute capability 9.0 (see ls_attn_kernel there).
#pragma once

#include <cuda_runtime.h>

#include "attention_kernels.cuh"

namespace ls::attn::sm90 {

// The Delta pre-pass and the wgmma backward on `s`; D in {64, 128}, arguments checked by the caller.
// Only valid on a compute capability 9.0 device (the kernel is built for sm_90a alone).
cudaError_t launch_bwd(const BwdParams& p, int D, cudaStream_t s);
// The forward on `s`, o in bf16 or f32; same conditions.
cudaError_t launch_fwd_bf16(const FwdParams& p, int D, cudaStream_t s);
cudaError_t launch_fwd_f32(const FwdParams& p, int D, cudaStream_t s);

}  // namespace ls::attn::sm90
