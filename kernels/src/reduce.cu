// Sum of squares, deterministic: x[n] -> *out = (float) sum_i x[i]^2, accumulated in f64.
//
// Two passes, no atomics, so the result depends only on n and on x's 16-byte alignment (which picks
// the vector or scalar partition of elements over threads), never on timing:
//   pass 1: grid = min(kPartials, ceil(n / kElemsPerBlock)) blocks; each thread sums x^2 in f64 over
//           its grid-stride elements in order, the block reduces in a fixed tree, partials[block] = sum;
//   pass 2: one block sums partials[0 .. grid) in a fixed order and rounds to f32 once.
// Each x^2 is exact in f64 (a 24-bit significand squared), so against the CPU's f64 sum in index
// order only the order of the f64 additions differs; after the final rounding to f32 the two agree
// except in rare near-tie cases.
#include "common.cuh"

namespace {

constexpr int kPartials = 1024;
constexpr int kThreads = 256;
constexpr int64_t kElemsPerBlock = kThreads * 16;

// Fixed-order block sum of v; the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  }
  return v;
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(uint16_t x) { return ls::bf16_to_f32(x); }

__device__ __forceinline__ double square(float x) {
  const double d = static_cast<double>(x);
  return __dmul_rn(d, d);  // exact
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) sumsq_pass1(const T* x, int64_t n, int64_t nvec, double* partials) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  double acc = 0.0;
  for (int64_t i = tid; i < nvec; i += stride) {
    const ls::Pack<T, V> p = ls::load_pack<T, V>(x + i * V);
#pragma unroll
    for (int j = 0; j < V; ++j) acc = __dadd_rn(acc, square(to_f32(p.v[j])));
  }
  for (int64_t i = nvec * V + tid; i < n; i += stride) acc = __dadd_rn(acc, square(to_f32(x[i])));
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) sumsq_pass2(const double* partials, int count, float* out) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += kThreads) acc = __dadd_rn(acc, partials[i]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = __double2float_rn(acc);
}

template <int V, typename T>
int sumsq(const T* x, int64_t n, double* partials, float* out, cudaStream_t s) {
  if (n <= 0) {
    const cudaError_t e = cudaMemsetAsync(out, 0, sizeof(float), s);  // the empty sum is +0
    return static_cast<int>(e != cudaSuccess ? e : cudaGetLastError());
  }
  const int64_t nvec = ls::aligned16(x) ? n / V : 0;
  const int blocks = static_cast<int>(std::min<int64_t>(kPartials, ls::ceil_div(n, kElemsPerBlock)));
  sumsq_pass1<T, V><<<blocks, kThreads, 0, s>>>(x, n, nvec, partials);
  sumsq_pass2<<<1, kThreads, 0, s>>>(partials, blocks, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// How many doubles the `partials` scratch of ls_sumsq_* must hold.
LS_API int64_t ls_sumsq_partials(void) { return kPartials; }

// x[n] f32, partials[ls_sumsq_partials()] f64 scratch -> out[1] f32: *out = (float) sum x[i]^2.
LS_API int ls_sumsq_f32(const float* x, int64_t n, double* partials, float* out, cudaStream_t s) {
  return sumsq<4>(x, n, partials, out, s);
}

// x[n] bf16, partials[ls_sumsq_partials()] f64 scratch -> out[1] f32: *out = (float) sum x[i]^2.
LS_API int ls_sumsq_bf16(const uint16_t* x, int64_t n, double* partials, float* out, cudaStream_t s) {
  return sumsq<8>(x, n, partials, out, s);
}
