// Pieces the Llama op kernels (llama_*.cu) share: fixed-order warp and block reductions, and bf16
// packs widened to f32. Reductions are deterministic (a fixed tree for a given blockDim).
#pragma once

#include "common.cuh"

namespace ls::llama {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. Safe
// to call repeatedly in one kernel (the scratch is reused only after everyone has read the total).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x >> 5);
    float t = lane < warps ? part[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

// 8 bf16 (one 16-byte pack) widened to f32, and back with round-to-nearest-even.
__device__ __forceinline__ void widen8(const Pack<uint16_t, 8>& p, float (&f)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = bf16_to_f32(p.v[j]);
}

__device__ __forceinline__ Pack<uint16_t, 8> narrow8(const float (&f)[8]) {
  Pack<uint16_t, 8> p;
#pragma unroll
  for (int j = 0; j < 8; ++j) p.v[j] = f32_to_bf16(f[j]);
  return p;
}

// The stored value of an f32 once rounded to bf16 (HF's cast back to the activation dtype).
__device__ __forceinline__ float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Threads for a one-block-per-row kernel over `items` per row: a multiple of 32 in [32, cap].
inline int row_threads(int64_t items, int cap) {
  const int64_t t = ceil_div(std::max<int64_t>(items, 1), 32) * 32;
  return static_cast<int>(std::min<int64_t>(t, cap));
}

}  // namespace ls::llama
