// The row kernel of the fused LM head + cross-entropy (packages/llama/src/ops/lm-head-loss.ts runs the
// GEMMs around it and has the reference). Per row of f32 logits l[V] with label y:
//   m = max l,  lse = m + log sum exp(l - m),  loss = lse - l[y]
//   dlogits = grad_scale * (exp(l - lse) - [j == y])   (bf16; skipped when dlogits is null)
// A row with y == -100 gets loss 0 and a zero dlogits row (its logits are not read).
//
// One block per row, two passes. Pass 1 keeps a running (max, sum of exp(l - max)) per thread, rescaling
// the sum only when a pack of 8 raises the max, then merges the threads in a fixed tree; pass 2 re-reads
// the row and writes dlogits. Measured on an H200 (kernels/dev/cross_entropy/ has the variants):
// - the re-read must hit L2, so the rows in flight must fit in it: 512 threads x 4 blocks per SM (528
//   rows x 128 KB for V = 32000) read the row twice from HBM (58% of copy); 1024 threads x 2 blocks per
//   SM with evict-first (.cs) second-pass loads and dlogits stores reached 78%; keeping the row on chip
//   (registers, or registers + shared memory) was slower (68-70%): one or two rows per SM cannot hide
//   the exps;
// - so the arithmetic is the rest: exps as one ex2.approx of an FMA (l log2e - bias), grad_scale folded
//   into the exponent of pass 2, the onehot subtraction only in the pack that holds the label: 81.6% of
//   copy in bench/ops-bench.ts (83.5% in the lab). At V = 128256 (a 513 KB row) it is 61%: the rows in
//   flight no longer fit in L2 (the lab's 1024 x 1 shape does 66% there; not yet a separate path).
// 16-byte loads when V % 8 == 0 and the pointers are 16-byte aligned, elements otherwise.
#include <cmath>

#include "llama_common.cuh"

namespace {

using ls::f32_to_bf16;
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

constexpr float kLog2e = 1.4426950408889634f;

// 2^x by the SFU (relative error ~2^-22; results below 2^-126 flush to 0, far below a bf16 gradient's
// contribution).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int W>
struct Row {
  float v[W];
};

// W consecutive logits; Streaming: evict-first (the second, last read of them).
template <int W, bool Streaming>
__device__ __forceinline__ Row<W> load_row(const float* p) {
  Row<W> r;
  if constexpr (W == 8) {
    const float4 a = Streaming ? __ldcs(reinterpret_cast<const float4*>(p)) : *reinterpret_cast<const float4*>(p);
    const float4 b = Streaming ? __ldcs(reinterpret_cast<const float4*>(p + 4)) : *reinterpret_cast<const float4*>(p + 4);
    r = {{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
  } else {
    r.v[0] = Streaming ? __ldcs(p) : *p;
  }
  return r;
}

template <int W>
__device__ __forceinline__ void store_row(uint16_t* p, const float (&g)[W]) {
  if constexpr (W == 8) {
    store_streaming(p, ls::llama::narrow8(g));
  } else {
    *p = f32_to_bf16(g[0]);
  }
}

// W = 8 (16-byte packs) or 1 (elements).
template <int W>
__global__ void __launch_bounds__(kThreads, 2)
    cross_entropy(const float* __restrict__ logits, const int32_t* __restrict__ labels, float grad_scale, uint16_t* __restrict__ dlogits,
                  float* __restrict__ row_loss, int64_t V) {
  const int64_t row = blockIdx.x;
  const int32_t y = labels[row];
  const float* l = logits + row * V;
  uint16_t* d = dlogits == nullptr ? nullptr : dlogits + row * V;
  const int64_t step = static_cast<int64_t>(blockDim.x) * W;
  if (y == kIgnore) {
    if (threadIdx.x == 0) row_loss[row] = 0.0f;
    if (d == nullptr) return;
    float z[W];
#pragma unroll
    for (int j = 0; j < W; ++j) z[j] = 0.0f;
    for (int64_t i = threadIdx.x * W; i < V; i += step) store_row<W>(d + i, z);
    return;
  }
  // pass 1: running max m and s = sum 2^(l log2e - m log2e) = sum exp(l - m)
  MaxSum acc{-INFINITY, 0.0f};
  float mb = -INFINITY;  // m * log2e
  for (int64_t i = threadIdx.x * W; i < V; i += step) {
    const Row<W> x = load_row<W, false>(l + i);
    float mx = x.v[0];
#pragma unroll
    for (int j = 1; j < W; ++j) mx = fmaxf(mx, x.v[j]);
    if (mx > acc.m) {
      acc.s *= fast_exp2((acc.m - mx) * kLog2e);  // 0 while nothing was seen (2^-inf)
      acc.m = mx;
      mb = mx * kLog2e;
    }
    float e[W];
#pragma unroll
    for (int j = 0; j < W; ++j) e[j] = fast_exp2(fmaf(x.v[j], kLog2e, -mb));
    if constexpr (W == 8) {
      acc.s += ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));  // a tree: a short dependency chain
    } else {
      acc.s += e[0];
    }
  }
  acc = block_merge(acc);
  const float lse = acc.m + logf(acc.s);
  if (threadIdx.x == 0) row_loss[row] = lse - l[y];
  if (d == nullptr) return;
  // pass 2: grad_scale * softmax = sign * 2^(l log2e + log2 |grad_scale| - lse log2e)
  const float bias = log2f(fabsf(grad_scale)) - lse * kLog2e;
  const bool negative = grad_scale < 0.0f;
  for (int64_t i = threadIdx.x * W; i < V; i += step) {
    const Row<W> x = load_row<W, true>(l + i);
    float g[W];
#pragma unroll
    for (int j = 0; j < W; ++j) g[j] = fast_exp2(fmaf(x.v[j], kLog2e, bias));
    if (negative) {
#pragma unroll
      for (int j = 0; j < W; ++j) g[j] = -g[j];
    }
    if (static_cast<uint64_t>(y - i) < static_cast<uint64_t>(W)) {
#pragma unroll
      for (int j = 0; j < W; ++j)
        if (i + j == y) g[j] -= grad_scale;
    }
    store_row<W>(d + i, g);
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
  if (vec) cross_entropy<8><<<grid, ls::llama::row_threads(V / 8, kThreads), 0, s>>>(logits, labels, grad_scale, dlogits, row_loss, V);
  else cross_entropy<1><<<grid, ls::llama::row_threads(V, kThreads), 0, s>>>(logits, labels, grad_scale, dlogits, row_loss, V);
  return static_cast<int>(cudaGetLastError());
}
