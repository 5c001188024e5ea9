// The C ABI of liblightseq.so: the one list of exported functions. Every .cu includes this header,
// so the compiler checks each definition against its declaration.
//
// Conventions (all functions):
// - return int: the cudaError_t of cudaGetLastError() after the launch (0 = success; the error is
//   sticky-cleared as cudaGetLastError does);
// - the cudaStream_t is the LAST argument; nothing synchronizes the host;
// - n (element count) is int64_t; n == 0 returns 0 without launching (ls_sumsq_*: writes 0 to *out);
// - bf16 is passed as uint16_t* (raw bits); f32 <-> bf16 rounding is round-to-nearest-even;
// - pointers must be device pointers; an in-place call (out == a, out == b, y == x) is allowed,
//   partial overlap is not.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#define LS_API extern "C" __attribute__((visibility("default")))

LS_API int ls_abi_version(void);
LS_API int ls_noop(cudaStream_t s);
LS_API int ls_spin_ns(uint64_t ns, cudaStream_t s);

LS_API int ls_fill_u32(uint32_t* out, uint32_t bits, int64_t n, cudaStream_t s);
LS_API int ls_fill_u16(uint16_t* out, uint16_t bits, int64_t n, cudaStream_t s);

LS_API int ls_rand_uniform_f32(float* out, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t s);
LS_API int ls_rand_uniform_bf16(uint16_t* out, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t s);
LS_API int ls_rand_normal_f32(float* out, int64_t n, uint64_t seed, uint64_t offset, float mean, float std, cudaStream_t s);
LS_API int ls_rand_normal_bf16(uint16_t* out, int64_t n, uint64_t seed, uint64_t offset, float mean, float std, cudaStream_t s);

LS_API int ls_cast_f32_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s);
LS_API int ls_cast_bf16_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t s);

LS_API int ls_add_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t s);
LS_API int ls_add_bf16(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n, cudaStream_t s);
LS_API int ls_add_i32(const int32_t* a, const int32_t* b, int32_t* out, int64_t n, cudaStream_t s);
LS_API int ls_mul_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t s);
LS_API int ls_mul_bf16(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n, cudaStream_t s);
LS_API int ls_mul_i32(const int32_t* a, const int32_t* b, int32_t* out, int64_t n, cudaStream_t s);

LS_API int ls_scale_f32(const float* x, float* out, float alpha, int64_t n, cudaStream_t s);
LS_API int ls_scale_bf16(const uint16_t* x, uint16_t* out, float alpha, int64_t n, cudaStream_t s);
LS_API int ls_axpy_f32(float alpha, const float* x, float* y, int64_t n, cudaStream_t s);
LS_API int ls_axpy_bf16(float alpha, const uint16_t* x, uint16_t* y, int64_t n, cudaStream_t s);

LS_API int64_t ls_sumsq_partials(void);
LS_API int ls_sumsq_f32(const float* x, int64_t n, double* partials, float* out, cudaStream_t s);
LS_API int ls_sumsq_bf16(const uint16_t* x, int64_t n, double* partials, float* out, cudaStream_t s);

// Llama ops (llama_*.cu; packages/llama/src/ops/*.ts are the references and the callers). bf16
// activations, f32 statistics and gradients of weights; T, C, V, F are int64_t, head counts int32_t.
LS_API int ls_llama_embedding_fwd_bf16(const int32_t* tokens, const uint16_t* table, uint16_t* out, int64_t T, int64_t V, int64_t C,
                                       cudaStream_t s);
LS_API int ls_llama_embedding_bwd_bf16(const uint16_t* dx, const int32_t* perm, const int32_t* seg_tok, const int32_t* seg_start,
                                       const int32_t* seg_slot, int64_t segments, const int32_t* multi_tok, const int32_t* multi_start,
                                       int64_t multi, float* scratch, int64_t C, float* dtable, cudaStream_t s);
LS_API int ls_llama_rmsnorm_fwd_bf16(const uint16_t* x, const uint16_t* w, uint16_t* y, float* rstd, int64_t T, int64_t C, float eps,
                                     cudaStream_t s);
LS_API int ls_llama_residual_rmsnorm_fwd_bf16(const uint16_t* x, const uint16_t* r, const uint16_t* w, uint16_t* h, uint16_t* y, float* rstd,
                                              int64_t T, int64_t C, float eps, cudaStream_t s);
LS_API int64_t ls_llama_rmsnorm_bwd_blocks(int64_t T);
LS_API int ls_llama_rmsnorm_bwd_bf16(const uint16_t* x, const uint16_t* w, const float* rstd, const uint16_t* dy, const uint16_t* residual,
                                     uint16_t* dx, float* partials, int64_t blocks, float* dw, int64_t T, int64_t C, cudaStream_t s);
LS_API int ls_llama_rope_qkv_fwd_bf16(const uint16_t* qkv, const float* cos_t, const float* sin_t, uint16_t* q, uint16_t* k, uint16_t* v, int64_t T,
                                      int32_t Hq, int32_t Hkv, int32_t D, cudaStream_t s);
LS_API int ls_llama_rope_qkv_bwd_bf16(const uint16_t* dq, const uint16_t* dk, const uint16_t* dv, const float* cos_t, const float* sin_t,
                                      uint16_t* dqkv, int64_t T, int32_t Hq, int32_t Hkv, int32_t D, cudaStream_t s);
LS_API int ls_llama_swiglu_fwd_bf16(const uint16_t* gu, uint16_t* a, int64_t T, int64_t F, cudaStream_t s);
LS_API int ls_llama_swiglu_bwd_bf16(const uint16_t* gu, const uint16_t* da, uint16_t* dgu, int64_t T, int64_t F, cudaStream_t s);
LS_API int ls_llama_cross_entropy_f32(const float* logits, const int32_t* labels, float grad_scale, uint16_t* dlogits, float* row_loss, int64_t rows,
                                      int64_t V, cudaStream_t s);

// AdamW on flat f32 shards (adamw.cu): p, m, v updated in place, w = rne_bf16(p) unless w is null;
// the scalars are the step's, already rounded to f32 (apps/trainer/src/optim/adamw.ts adamwScalars).
LS_API int ls_adamw_f32(float* p, const float* g, float* m, float* v, uint16_t* w, int64_t n, float grad_scale, float decay,
                        float one_minus_beta1, float beta2, float one_minus_beta2, float step_size, float bc2_sqrt, float eps,
                        cudaStream_t s);

// The block-attention entry points (ls_attn_*) are declared in attention.cuh, which includes this header.

// Copy-engine point-to-point transfers between local GPUs (p2p.cu; host code, no kernels). Pointers
// may be IPC-mapped memory of another device; ls_p2p_init resolves the driver's stream memory
// operations and returns nonzero where they are missing.
LS_API int ls_p2p_init(void);
LS_API int ls_ipc_get_handle(const void* ptr, uint8_t* out64);
LS_API int ls_ipc_open_handle(const uint8_t* handle64, void** out);
LS_API int ls_ipc_close_handle(void* ptr);
LS_API int ls_stream_wait_u32(const uint32_t* addr, uint32_t value, cudaStream_t s);
LS_API int ls_stream_write_u32(uint32_t* addr, uint32_t value, cudaStream_t s);
LS_API int ls_p2p_send(const void* src, int64_t bytes, void* remote_slots, int64_t slot_bytes, int32_t nslots, uint64_t first_chunk,
                       const uint32_t* local_freed, uint32_t* remote_full, cudaStream_t s);
LS_API int ls_p2p_recv(void* dst, int64_t bytes, const void* local_slots, int64_t slot_bytes, int32_t nslots, uint64_t first_chunk,
                       const uint32_t* local_full, uint32_t* remote_freed, cudaStream_t s);
