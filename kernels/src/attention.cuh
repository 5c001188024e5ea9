// C ABI of the block-attention kernels (attention.cu): forward, backward, merge of partials.
// Conventions of lightseq.cuh hold (int return = cudaError_t of cudaGetLastError() after the launches,
// stream last, bf16 as uint16_t bits, nothing synchronises the host). Semantics are documented at the
// top of attention.cu; the device code is in attention_kernels.cuh.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "lightseq.cuh"

// `kernels` (an argument of every forward and backward call) picks the kernel set:
#define LS_ATTN_KERNELS_AUTO 0   // wgmma where the device runs them (compute capability 9.0), else mma.sync
#define LS_ATTN_KERNELS_MMA 1    // mma.sync (attention_kernels.cuh, sm_80 and later)
#define LS_ATTN_KERNELS_WGMMA 2  // wgmma (attention_sm90.cu, compute capability 9.0 only)
// What the calls return, without launching, when `kernels` cannot run (beyond cudaError_t's range):
#define LS_ATTN_ERR_KERNELS_UNKNOWN 20001      // `kernels` is none of the values above
#define LS_ATTN_ERR_KERNELS_UNAVAILABLE 20002  // wgmma asked for on a device without compute capability 9.0

// q [Tq, Hq, D], k/v [Tk, Hkv, D] bf16 -> o [Tq, Hq, D] bf16, lse [Hq, Tq] f32.
LS_API int ls_attn_fwd_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse,
                            int Tq, int Tk, int Hq, int Hkv, int D, float scale, int causal, int kernels, cudaStream_t s);
// The same with o written in f32 (DistAttn partials that are merged in fp32).
LS_API int ls_attn_fwd_bf16_f32out(const uint16_t* q, const uint16_t* k, const uint16_t* v, float* o, float* lse,
                                   int Tq, int Tk, int Hq, int Hkv, int D, float scale, int causal, int kernels,
                                   cudaStream_t s);

// dq [Tq, Hq, D], dk/dv [Tk, Hkv, D] f32 += the gradient of this block, given the FINAL o and lse.
LS_API int ls_attn_bwd_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o,
                            const float* lse, const uint16_t* dout, float* dq, float* dk, float* dv, void* workspace,
                            int Tq, int Tk, int Hq, int Hkv, int D, float scale, int causal, int kernels, cudaStream_t s);
LS_API int64_t ls_attn_bwd_workspace_bytes(int Tq, int Hq, int D);
// The kernel set a call with `kernels` runs on CUDA device `device`: 1 = wgmma, 0 = mma.sync; or minus
// the code the calls would return instead of launching: -LS_ATTN_ERR_KERNELS_UNKNOWN,
// -LS_ATTN_ERR_KERNELS_UNAVAILABLE, or minus the cudaError_t of a failed device query. Reads nothing but
// its arguments and the device's compute capability (asked once per device); changes no state.
LS_API int ls_attn_kernel(int device, int kernels);

// (acc_o [Tq, Hq, D] f32, acc_lse [Hq, Tq] f32) <- merge((acc_o, acc_lse), (o_part, lse_part)) in place.
LS_API int ls_attn_merge_f32(float* acc_o, float* acc_lse, const float* o_part, const float* lse_part,
                             int Tq, int Hq, int D, cudaStream_t s);
LS_API int ls_attn_merge_bf16(float* acc_o, float* acc_lse, const uint16_t* o_part, const float* lse_part,
                              int Tq, int Hq, int D, cudaStream_t s);
