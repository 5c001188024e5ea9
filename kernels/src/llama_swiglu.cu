// SwiGLU over the fused gate|up GEMM output, forward and backward (packages/llama/src/ops/swiglu.ts has
// the reference):
//   forward:  gu[T, 2F] (gate | up) -> a[T, F] = silu(g) u,  silu(g) = g sigmoid(g)
//   backward: dg = da u sg (1 + g (1 - sg)),  du = da g sg  -> dgu[T, 2F]   (sg = sigmoid(g))
// One block per row; 16-byte loads when F % 8 == 0 and every pointer is 16-byte aligned, elements
// otherwise. f32 math (sigmoid through __expf: ~2 ulp of f32, far below bf16's resolution), one
// rounding to bf16 per output.
#include "llama_common.cuh"

namespace {

using ls::bf16_to_f32;
using ls::f32_to_bf16;
using ls::load_pack;
using ls::store_pack;

constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + __expf(-g)); }

template <bool Vec>
__global__ void __launch_bounds__(kThreads) swiglu_fwd(const uint16_t* __restrict__ gu, uint16_t* __restrict__ a, int64_t F) {
  const int64_t row = blockIdx.x;
  const uint16_t* g = gu + row * 2 * F;
  const uint16_t* u = g + F;
  uint16_t* out = a + row * F;
  if (Vec) {
    for (int64_t i = threadIdx.x * 8; i < F; i += static_cast<int64_t>(blockDim.x) * 8) {
      float gf[8];
      float uf[8];
      ls::llama::widen8(load_pack<uint16_t, 8>(g + i), gf);
      ls::llama::widen8(load_pack<uint16_t, 8>(u + i), uf);
      float o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = gf[j] * sigmoid(gf[j]) * uf[j];
      store_pack<uint16_t, 8>(out + i, ls::llama::narrow8(o));
    }
  } else {
    for (int64_t i = threadIdx.x; i < F; i += blockDim.x) {
      const float gf = bf16_to_f32(g[i]);
      out[i] = f32_to_bf16(gf * sigmoid(gf) * bf16_to_f32(u[i]));
    }
  }
}

__device__ __forceinline__ void swiglu_grad(float g, float u, float da, float& dg, float& du) {
  const float sg = sigmoid(g);
  du = da * g * sg;
  dg = da * u * sg * (1.0f + g * (1.0f - sg));
}

template <bool Vec>
__global__ void __launch_bounds__(kThreads)
    swiglu_bwd(const uint16_t* __restrict__ gu, const uint16_t* __restrict__ da, uint16_t* __restrict__ dgu, int64_t F) {
  const int64_t row = blockIdx.x;
  const uint16_t* g = gu + row * 2 * F;
  const uint16_t* u = g + F;
  const uint16_t* d = da + row * F;
  uint16_t* dg = dgu + row * 2 * F;
  uint16_t* du = dg + F;
  if (Vec) {
    for (int64_t i = threadIdx.x * 8; i < F; i += static_cast<int64_t>(blockDim.x) * 8) {
      float gf[8];
      float uf[8];
      float df[8];
      ls::llama::widen8(load_pack<uint16_t, 8>(g + i), gf);
      ls::llama::widen8(load_pack<uint16_t, 8>(u + i), uf);
      ls::llama::widen8(load_pack<uint16_t, 8>(d + i), df);
      float og[8];
      float ou[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) swiglu_grad(gf[j], uf[j], df[j], og[j], ou[j]);
      store_pack<uint16_t, 8>(dg + i, ls::llama::narrow8(og));
      store_pack<uint16_t, 8>(du + i, ls::llama::narrow8(ou));
    }
  } else {
    for (int64_t i = threadIdx.x; i < F; i += blockDim.x) {
      float og;
      float ou;
      swiglu_grad(bf16_to_f32(g[i]), bf16_to_f32(u[i]), bf16_to_f32(d[i]), og, ou);
      dg[i] = f32_to_bf16(og);
      du[i] = f32_to_bf16(ou);
    }
  }
}

}  // namespace

// gu bf16[T, 2F] -> a bf16[T, F].
LS_API int ls_llama_swiglu_fwd_bf16(const uint16_t* gu, uint16_t* a, int64_t T, int64_t F, cudaStream_t s) {
  if (T <= 0 || F <= 0) return 0;
  const bool vec = F % 8 == 0 && ls::aligned16(gu) && ls::aligned16(a);
  const unsigned grid = static_cast<unsigned>(T);
  if (vec) swiglu_fwd<true><<<grid, ls::llama::row_threads(F / 8, kThreads), 0, s>>>(gu, a, F);
  else swiglu_fwd<false><<<grid, ls::llama::row_threads(F, kThreads), 0, s>>>(gu, a, F);
  return static_cast<int>(cudaGetLastError());
}

// gu bf16[T, 2F], da bf16[T, F] -> dgu bf16[T, 2F].
LS_API int ls_llama_swiglu_bwd_bf16(const uint16_t* gu, const uint16_t* da, uint16_t* dgu, int64_t T, int64_t F, cudaStream_t s) {
  if (T <= 0 || F <= 0) return 0;
  const bool vec = F % 8 == 0 && ls::aligned16(gu) && ls::aligned16(da) && ls::aligned16(dgu);
  const unsigned grid = static_cast<unsigned>(T);
  if (vec) swiglu_bwd<true><<<grid, ls::llama::row_threads(F / 8, kThreads), 0, s>>>(gu, da, dgu, F);
  else swiglu_bwd<false><<<grid, ls::llama::row_threads(F, kThreads), 0, s>>>(gu, da, dgu, F);
  return static_cast<int>(cudaGetLastError());
}
