// The row kernel of the fused LM head + cross-entropy (packages/llama/src/ops/lm-head-loss.ts runs the
// GEMMs around it and has the reference). Per row of f32 logits l[V] with label y:
//   m = max l,  lse = m + log sum exp(l - m),  loss = lse - l[y]
//   dlogits = grad_scale * (exp(l - lse) - [j == y])   (bf16; skipped when dlogits is null)
// A row with y == -100 gets loss 0 and a zero dlogits row (its logits are not read).
// One block per row. Pass 1 keeps a running (max, sum) per thread, rescaling the sum when the max
// grows, then merges them across the block in a fixed tree; pass 2 re-reads the row to write dlogits.
// That re-read must hit L2: the rows in flight must fit in it. At 512 threads x 4 blocks per SM they
// did not (528 rows x 128 KB for V = 32000: 58% of copy bandwidth on an H200, the row read twice from
// HBM), so blocks are 1024 threads, 2 per SM (264 rows in flight), and the second-pass loads and the
// dlogits stores are evict-first (.cs) so they do not push the rows still to be re-read out of L2.
// kernels/dev/cross_entropy/ holds the variants this was chosen among. 16-byte loads when V % 8 == 0
// and the pointers are 16-byte aligned, elements otherwise.
#include <cmath>

#include "llama_common.cuh"

namespace {

using ls::f32_to_bf16;
using ls::load_pack;
using ls::Pack;

constexpr int kThreads = 1024;
constexpr int kIgnore = -100;

struct MaxSum {
  float m;  // running max (-inf: nothing seen)
  float s;  // sum of exp(l - m)
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    MaxSum o;
    o.m = __shfl_xor_sync(0xffffffffu, v.m, d);
    o.s = __shfl_xor_sync(0xffffffffu, v.s, d);
    v = merge(v, o);
  }
  return v;
}

// Block-wide merge (blockDim.x a multiple of 32); every thread gets the result.
__device__ MaxSum block_merge(MaxSum v) {
  __shared__ MaxSum part[32];
  __shared__ MaxSum total;
  v = warp_merge(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    MaxSum t = lane < static_cast<int>(blockDim.x >> 5) ? part[lane] : MaxSum{-INFINITY, 0.0f};
    t = warp_merge(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

// A 16-byte store that L2 may evict first (st.global.cs): dlogits are read next by the GEMMs, not here.
__device__ __forceinline__ void store_streaming(uint16_t* p, const Pack<uint16_t, 8>& v) {
  __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(&v));
}

// Adds n values already reduced to (their max, their sum of exp(x - max)).
__device__ __forceinline__ void absorb(MaxSum& acc, const float* x, int n) {
  float mx = x[0];
  for (int j = 1; j < n; ++j) mx = fmaxf(mx, x[j]);
  float s = 0.0f;
  for (int j = 0; j < n; ++j) s += __expf(x[j] - mx);
  acc = merge(acc, MaxSum{mx, s});
}

template <bool Vec>
__global__ void __launch_bounds__(kThreads, 2)
    cross_entropy(const float* __restrict__ logits, const int32_t* __restrict__ labels, float grad_scale, uint16_t* __restrict__ dlogits,
                  float* __restrict__ row_loss, int64_t V) {
  const int64_t row = blockIdx.x;
  const int32_t y = labels[row];
  const float* l = logits + row * V;
  uint16_t* d = dlogits == nullptr ? nullptr : dlogits + row * V;
  if (y == kIgnore) {
    if (threadIdx.x == 0) row_loss[row] = 0.0f;
    if (d == nullptr) return;
    if (Vec) {
      Pack<uint16_t, 8> z;
#pragma unroll
      for (int j = 0; j < 8; ++j) z.v[j] = 0;
      for (int64_t i = threadIdx.x * 8; i < V; i += static_cast<int64_t>(blockDim.x) * 8) store_streaming(d + i, z);
    } else {
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) d[i] = 0;
    }
    return;
  }
  MaxSum acc{-INFINITY, 0.0f};
  if (Vec) {
    for (int64_t i = threadIdx.x * 8; i < V; i += static_cast<int64_t>(blockDim.x) * 8) {
      const Pack<float, 4> a = load_pack<float, 4>(l + i);
      const Pack<float, 4> b = load_pack<float, 4>(l + i + 4);
      const float x[8] = {a.v[0], a.v[1], a.v[2], a.v[3], b.v[0], b.v[1], b.v[2], b.v[3]};
      absorb(acc, x, 8);
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) absorb(acc, l + i, 1);
  }
  acc = block_merge(acc);
  const float lse = acc.m + logf(acc.s);
  if (threadIdx.x == 0) row_loss[row] = lse - l[y];
  if (d == nullptr) return;
  if (Vec) {
    for (int64_t i = threadIdx.x * 8; i < V; i += static_cast<int64_t>(blockDim.x) * 8) {
      const float4 a = __ldcs(reinterpret_cast<const float4*>(l + i));
      const float4 b = __ldcs(reinterpret_cast<const float4*>(l + i + 4));
      const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      float g[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) g[j] = grad_scale * (__expf(x[j] - lse) - (i + j == y ? 1.0f : 0.0f));
      store_streaming(d + i, ls::llama::narrow8(g));
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) d[i] = f32_to_bf16(grad_scale * (__expf(__ldcs(l + i) - lse) - (i == y ? 1.0f : 0.0f)));
  }
}

}  // namespace

// logits f32[rows, V], labels i32[rows] (-100 ignored) -> row_loss f32[rows]; dlogits bf16[rows, V]
// (or null: loss only) = grad_scale * (softmax - onehot), zero rows for ignored labels. Labels must be
// -100 or in [0, V) (the host checks).
LS_API int ls_llama_cross_entropy_f32(const float* logits, const int32_t* labels, float grad_scale, uint16_t* dlogits, float* row_loss, int64_t rows,
                                      int64_t V, cudaStream_t s) {
  if (rows <= 0 || V <= 0) return 0;
  const bool vec = V % 8 == 0 && ls::aligned16(logits) && (dlogits == nullptr || ls::aligned16(dlogits));
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec) cross_entropy<true><<<grid, ls::llama::row_threads(V / 8, kThreads), 0, s>>>(logits, labels, grad_scale, dlogits, row_loss, V);
  else cross_entropy<false><<<grid, ls::llama::row_threads(V, kThreads), 0, s>>>(logits, labels, grad_scale, dlogits, row_loss, V);
  return static_cast<int>(cudaGetLastError());
}
