// Shared pieces of the kernels: launch geometry, 16-byte packs, bf16 bit conversions, and the
// elementwise map kernel that every pointwise op (fill, rand, cast, add, mul, scale, axpy) runs on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "lightseq.cuh"

namespace ls {

constexpr int kThreads = 256;
// Grid-stride loops cover any n (indices are int64_t); 65536 blocks of 256 threads fill any current
// GPU many times over, and grid.x stays far below its 2^31 - 1 limit for n up to 2^33 and beyond.
constexpr int64_t kMaxBlocks = 1 << 16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `items` independent work items (one per thread per grid-stride step).
inline unsigned grid_for(int64_t items) {
  return static_cast<unsigned>(std::min(std::max<int64_t>(ceil_div(items, kThreads), 1), kMaxBlocks));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// V elements moved with one vector load/store per 16 bytes (or one 8-byte access for a half pack).
template <typename T, int V>
struct alignas(sizeof(T) * V >= 16 ? 16 : sizeof(T) * V) Pack {
  static_assert(sizeof(T) * V % 16 == 0 || sizeof(T) * V == 8, "a pack is 8 bytes or whole 16-byte words");
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// bf16 bits -> f32: exact (the bf16 is the top half of the f32).
__device__ __forceinline__ float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

// f32 -> bf16 bits, round to nearest even (cvt.rn.bf16.f32 on sm_80+). Equals the CPU rule
// ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) for every non-NaN input; a NaN gives the canonical
// 0x7fff here and 0x7fc0 | sign on the CPU, so compare NaNs as a class.
__device__ __forceinline__ uint16_t f32_to_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

// Elementwise map over [0, n). F provides
//   __device__ void vec(int64_t i) const;  // elements [i, i + V), i a multiple of V, 16-byte aligned
//   __device__ void one(int64_t i) const;  // element i
// The first nvec * V elements go through vec, the rest through one (nvec = 0 when unaligned).
template <int V, typename F>
__global__ void map_kernel(F f, int64_t n, int64_t nvec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < nvec; i += stride) f.vec(i * V);
  for (int64_t i = nvec * V + tid; i < n; i += stride) f.one(i);
}

// Launches map_kernel; `vectorizable` says every pointer F touches is 16-byte aligned.
template <int V, typename F>
int launch_map(const F& f, int64_t n, bool vectorizable, cudaStream_t s) {
  if (n <= 0) return 0;
  const int64_t nvec = vectorizable ? n / V : 0;
  const int64_t items = std::max(nvec, n - nvec * V);
  map_kernel<V><<<grid_for(items), kThreads, 0, s>>>(f, n, nvec);
  return static_cast<int>(cudaGetLastError());
}

// out[i] = g(i): fills and random numbers.
template <typename T, int V, typename G>
struct GenerateMap {
  T* out;
  G g;
  __device__ void vec(int64_t i) const {
    Pack<T, V> p;
#pragma unroll
    for (int j = 0; j < V; ++j) p.v[j] = g(i + j);
    store_pack<T, V>(out + i, p);
  }
  __device__ void one(int64_t i) const { out[i] = g(i); }
};

template <int V, typename T, typename G>
int launch_generate(T* out, G g, int64_t n, cudaStream_t s) {
  return launch_map<V>(GenerateMap<T, V, G>{out, g}, n, aligned16(out), s);
}

// y[i] = op(x[i]).
template <typename Tin, typename Tout, int V, typename Op>
struct UnaryMap {
  const Tin* x;
  Tout* y;
  Op op;
  __device__ void vec(int64_t i) const {
    const Pack<Tin, V> a = load_pack<Tin, V>(x + i);
    Pack<Tout, V> r;
#pragma unroll
    for (int j = 0; j < V; ++j) r.v[j] = op(a.v[j]);
    store_pack<Tout, V>(y + i, r);
  }
  __device__ void one(int64_t i) const { y[i] = op(x[i]); }
};

template <int V, typename Tin, typename Tout, typename Op>
int launch_unary(const Tin* x, Tout* y, Op op, int64_t n, cudaStream_t s) {
  return launch_map<V>(UnaryMap<Tin, Tout, V, Op>{x, y, op}, n, aligned16(x) && aligned16(y), s);
}

// out[i] = op(a[i], b[i]).
template <typename T, int V, typename Op>
struct BinaryMap {
  const T* a;
  const T* b;
  T* out;
  Op op;
  __device__ void vec(int64_t i) const {
    const Pack<T, V> pa = load_pack<T, V>(a + i);
    const Pack<T, V> pb = load_pack<T, V>(b + i);
    Pack<T, V> r;
#pragma unroll
    for (int j = 0; j < V; ++j) r.v[j] = op(pa.v[j], pb.v[j]);
    store_pack<T, V>(out + i, r);
  }
  __device__ void one(int64_t i) const { out[i] = op(a[i], b[i]); }
};

template <int V, typename T, typename Op>
int launch_binary(const T* a, const T* b, T* out, Op op, int64_t n, cudaStream_t s) {
  const bool vectorizable = aligned16(a) && aligned16(b) && aligned16(out);
  return launch_map<V>(BinaryMap<T, V, Op>{a, b, out, op}, n, vectorizable, s);
}

}  // namespace ls
