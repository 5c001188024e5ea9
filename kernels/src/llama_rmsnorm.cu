// RMSNorm forward (plain and fused with the residual add) and backward, bf16 activations, f32 math
// (packages/llama/src/ops/rmsnorm.ts has the reference and the formulas).
//
//   forward:  rstd = rsqrt(mean(x^2) + eps);  n = bf16(x * rstd);  y = bf16(w * n)   (HF's order)
//   fused:    h = bf16(x + r), then the forward on h (h written too)
//   backward: g = dy * w;  dx = rstd * (g - n * mean(g * n)) [+ residual];  dw += sum_rows dy * bf16(n)
//
// h may alias x or r (in place), so those three pointers are not __restrict__. One block per row. Vector path (C % 8 == 0, 16-byte aligned pointers, C <= 8 * 256 * kMaxPacks):
// each thread keeps its P 16-byte packs of the row in registers between the reduction and the output,
// so x is read from memory once. Otherwise a scalar path re-reads the row (from L1/L2).
// The backward's dw is deterministic without atomics: `blocks` blocks each take rows b, b + blocks, ...
// and keep their own f32 column sums (registers on the vector path, shared memory on the scalar one),
// written to partials[b, :]; a second kernel adds the partials to dw in a fixed tree (reduce_partials).
#include "llama_common.cuh"

namespace {

using ls::bf16_to_f32;
using ls::f32_to_bf16;
using ls::load_pack;
using ls::Pack;
using ls::store_pack;
using ls::llama::block_sum;
using ls::llama::round_bf16;

constexpr int kThreads = 256;
constexpr int kMaxPacks = 4;  // vector path up to C = 8192 (P = C / 8 / 256 packs per thread)
// Blocks of the backward: about every SM's resident share (4 blocks of 256 threads on 132 SMs), so one
// wave runs all rows; fixed (not read from the device) so that dw's summation order depends on T only.
constexpr int64_t kBwdBlocks = 512;

using Pk = Pack<uint16_t, 8>;

// ---- forward ----

template <int P, bool Residual>
__global__ void __launch_bounds__(kThreads) rmsnorm_fwd_vec(const uint16_t* x, const uint16_t* r, const uint16_t* __restrict__ w, uint16_t* h,
                                                            uint16_t* __restrict__ y, float* __restrict__ rstd, int64_t C, float eps) {
  const int64_t row = blockIdx.x;
  const int64_t packs = C / 8;
  float v[P][8];
  float ss = 0.0f;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
    if (i < packs) {
      ls::llama::widen8(load_pack<uint16_t, 8>(x + row * C + i * 8), v[p]);
      if (Residual) {
        float b[8];
        ls::llama::widen8(load_pack<uint16_t, 8>(r + row * C + i * 8), b);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[p][j] = round_bf16(__fadd_rn(v[p][j], b[j]));
        store_pack<uint16_t, 8>(h + row * C + i * 8, ls::llama::narrow8(v[p]));
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) ss = fmaf(v[p][j], v[p][j], ss);
    }
  }
  ss = block_sum(ss);
  const float rs = rsqrtf(ss / static_cast<float>(C) + eps);
  if (threadIdx.x == 0) rstd[row] = rs;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
    if (i < packs) {
      float wf[8];
      ls::llama::widen8(load_pack<uint16_t, 8>(w + i * 8), wf);
      float o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = wf[j] * round_bf16(v[p][j] * rs);
      store_pack<uint16_t, 8>(y + row * C + i * 8, ls::llama::narrow8(o));
    }
  }
}

template <bool Residual>
__global__ void __launch_bounds__(kThreads) rmsnorm_fwd_scalar(const uint16_t* x, const uint16_t* r, const uint16_t* __restrict__ w, uint16_t* h,
                                                               uint16_t* __restrict__ y, float* __restrict__ rstd, int64_t C, float eps) {
  const int64_t row = blockIdx.x;
  const uint16_t* xr = Residual ? h + row * C : x + row * C;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float a = bf16_to_f32(x[row * C + c]);
    if (Residual) {
      const uint16_t hb = f32_to_bf16(__fadd_rn(a, bf16_to_f32(r[row * C + c])));
      h[row * C + c] = hb;
      a = bf16_to_f32(hb);
    }
    ss = fmaf(a, a, ss);
  }
  ss = block_sum(ss);  // its barrier also orders the h stores before the re-reads below
  const float rs = rsqrtf(ss / static_cast<float>(C) + eps);
  if (threadIdx.x == 0) rstd[row] = rs;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    y[row * C + c] = f32_to_bf16(bf16_to_f32(w[c]) * round_bf16(bf16_to_f32(xr[c]) * rs));
}

template <bool Residual>
int launch_fwd(const uint16_t* x, const uint16_t* r, const uint16_t* w, uint16_t* h, uint16_t* y, float* rstd, int64_t T, int64_t C, float eps,
               cudaStream_t s) {
  if (T <= 0 || C <= 0) return 0;
  const bool aligned = ls::aligned16(x) && ls::aligned16(w) && ls::aligned16(y) && (!Residual || (ls::aligned16(r) && ls::aligned16(h)));
  const int64_t packs = C / 8;
  const int64_t P = ls::ceil_div(packs, kThreads);
  const unsigned grid = static_cast<unsigned>(T);
  if (C % 8 == 0 && aligned && P <= kMaxPacks) {
    const int threads = ls::llama::row_threads(packs, kThreads);
    if (P == 1) rmsnorm_fwd_vec<1, Residual><<<grid, threads, 0, s>>>(x, r, w, h, y, rstd, C, eps);
    else if (P == 2) rmsnorm_fwd_vec<2, Residual><<<grid, kThreads, 0, s>>>(x, r, w, h, y, rstd, C, eps);
    else rmsnorm_fwd_vec<4, Residual><<<grid, kThreads, 0, s>>>(x, r, w, h, y, rstd, C, eps);
  } else {
    rmsnorm_fwd_scalar<Residual><<<grid, ls::llama::row_threads(C, kThreads), 0, s>>>(x, r, w, h, y, rstd, C, eps);
  }
  return static_cast<int>(cudaGetLastError());
}

// ---- backward ----

// The row's x and dy stay in registers as raw bf16 packs between the two passes (8 registers per pack
// pair instead of 16 widened floats: more blocks per SM, more loads in flight); w is re-read from L1.
template <int P, bool Residual>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_bwd_vec(const uint16_t* __restrict__ x, const uint16_t* __restrict__ w, const float* __restrict__ rstd,
                    const uint16_t* __restrict__ dy, const uint16_t* __restrict__ res, uint16_t* __restrict__ dx, float* __restrict__ partials,
                    int64_t T, int64_t C) {
  const int64_t packs = C / 8;
  float dwa[P][8];
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int j = 0; j < 8; ++j) dwa[p][j] = 0.0f;
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t row = blockIdx.x; row < T; row += gridDim.x) {
    const float rs = rstd[row];
    Pk xs[P];
    Pk ds[P];
    float dot = 0.0f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
      if (i < packs) {
        xs[p] = load_pack<uint16_t, 8>(x + row * C + i * 8);
        ds[p] = load_pack<uint16_t, 8>(dy + row * C + i * 8);
      }
    }
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
      if (i < packs) {
        const Pk wp = load_pack<uint16_t, 8>(w + i * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float n = bf16_to_f32(xs[p].v[j]) * rs;
          const float d = bf16_to_f32(ds[p].v[j]);
          dot = fmaf(d * bf16_to_f32(wp.v[j]), n, dot);
          dwa[p][j] = fmaf(d, round_bf16(n), dwa[p][j]);
        }
      }
    }
    dot = block_sum(dot) * inv_c;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
      if (i < packs) {
        const Pk wp = load_pack<uint16_t, 8>(w + i * 8);
        float o[8];
        float rr[8];
        if (Residual) ls::llama::widen8(load_pack<uint16_t, 8>(res + row * C + i * 8), rr);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float n = bf16_to_f32(xs[p].v[j]) * rs;
          o[j] = rs * (bf16_to_f32(ds[p].v[j]) * bf16_to_f32(wp.v[j]) - n * dot);
          if (Residual) o[j] += rr[j];
        }
        store_pack<uint16_t, 8>(dx + row * C + i * 8, ls::llama::narrow8(o));
      }
    }
  }
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
    if (i < packs) {
      float* dst = partials + static_cast<int64_t>(blockIdx.x) * C + i * 8;
      Pack<float, 4> a;
      Pack<float, 4> b;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        a.v[j] = dwa[p][j];
        b.v[j] = dwa[p][j + 4];
      }
      store_pack<float, 4>(dst, a);
      store_pack<float, 4>(dst + 4, b);
    }
  }
}

template <bool Residual>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_bwd_scalar(const uint16_t* __restrict__ x, const uint16_t* __restrict__ w, const float* __restrict__ rstd,
                       const uint16_t* __restrict__ dy, const uint16_t* __restrict__ res, uint16_t* __restrict__ dx, float* __restrict__ partials,
                       int64_t T, int64_t C) {
  extern __shared__ float dwa[];  // [C], column c owned by thread c % blockDim.x
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dwa[c] = 0.0f;
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t row = blockIdx.x; row < T; row += gridDim.x) {
    const float rs = rstd[row];
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float d = bf16_to_f32(dy[row * C + c]);
      const float n = bf16_to_f32(x[row * C + c]) * rs;
      dot = fmaf(d * bf16_to_f32(w[c]), n, dot);
      dwa[c] = fmaf(d, round_bf16(n), dwa[c]);
    }
    dot = block_sum(dot) * inv_c;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float n = bf16_to_f32(x[row * C + c]) * rs;
      float o = rs * (bf16_to_f32(dy[row * C + c]) * bf16_to_f32(w[c]) - n * dot);
      if (Residual) o += bf16_to_f32(res[row * C + c]);
      dx[row * C + c] = f32_to_bf16(o);
    }
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) partials[static_cast<int64_t>(blockIdx.x) * C + c] = dwa[c];
}

// dw[c] += sum_b partials[b, c] in a fixed order: thread (g, lane) of a block sums rows b = g, g + 8, ...
// of column blockIdx.x * 32 + lane in increasing b, then group 0 adds the 8 group sums in order g = 0..7.
constexpr int kReduceCols = 32;
constexpr int kReduceGroups = kThreads / kReduceCols;

__global__ void __launch_bounds__(kThreads) reduce_partials(const float* __restrict__ partials, int64_t blocks, int64_t C, float* __restrict__ dw) {
  __shared__ float sums[kReduceGroups][kReduceCols];
  const int lane = threadIdx.x % kReduceCols;
  const int g = threadIdx.x / kReduceCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kReduceCols + lane;
  float acc = 0.0f;
  if (c < C) {
#pragma unroll 8
    for (int64_t b = g; b < blocks; b += kReduceGroups) acc += partials[b * C + c];
  }
  sums[g][lane] = acc;
  __syncthreads();
  if (g == 0 && c < C) {
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kReduceGroups; ++i) total += sums[i][lane];
    dw[c] += total;
  }
}

template <bool Residual>
int launch_bwd(const uint16_t* x, const uint16_t* w, const float* rstd, const uint16_t* dy, const uint16_t* res, uint16_t* dx, float* partials,
               int64_t blocks, float* dw, int64_t T, int64_t C, cudaStream_t s) {
  const bool aligned = ls::aligned16(x) && ls::aligned16(w) && ls::aligned16(dy) && ls::aligned16(dx) && ls::aligned16(partials) &&
                       (!Residual || ls::aligned16(res));
  const int64_t packs = C / 8;
  const int64_t P = ls::ceil_div(packs, kThreads);
  const unsigned grid = static_cast<unsigned>(blocks);
  if (C % 8 == 0 && aligned && P <= kMaxPacks) {
    const int threads = ls::llama::row_threads(packs, kThreads);
    if (P == 1) rmsnorm_bwd_vec<1, Residual><<<grid, threads, 0, s>>>(x, w, rstd, dy, res, dx, partials, T, C);
    else if (P == 2) rmsnorm_bwd_vec<2, Residual><<<grid, kThreads, 0, s>>>(x, w, rstd, dy, res, dx, partials, T, C);
    else rmsnorm_bwd_vec<4, Residual><<<grid, kThreads, 0, s>>>(x, w, rstd, dy, res, dx, partials, T, C);
  } else {
    const size_t smem = static_cast<size_t>(C) * sizeof(float);
    if (smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(rmsnorm_bwd_scalar<Residual>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return static_cast<int>(e);
    }
    rmsnorm_bwd_scalar<Residual><<<grid, ls::llama::row_threads(C, kThreads), smem, s>>>(x, w, rstd, dy, res, dx, partials, T, C);
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return static_cast<int>(e);
  reduce_partials<<<static_cast<unsigned>(ls::ceil_div(C, kReduceCols)), kThreads, 0, s>>>(partials, blocks, C, dw);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// x bf16[T,C], w bf16[C] -> y bf16[T,C], rstd f32[T].
LS_API int ls_llama_rmsnorm_fwd_bf16(const uint16_t* x, const uint16_t* w, uint16_t* y, float* rstd, int64_t T, int64_t C, float eps,
                                     cudaStream_t s) {
  return launch_fwd<false>(x, nullptr, w, nullptr, y, rstd, T, C, eps, s);
}

// x, r bf16[T,C], w bf16[C] -> h = bf16(x + r), y = rmsnorm(h), rstd f32[T]. h may be x or r (in place).
LS_API int ls_llama_residual_rmsnorm_fwd_bf16(const uint16_t* x, const uint16_t* r, const uint16_t* w, uint16_t* h, uint16_t* y, float* rstd,
                                              int64_t T, int64_t C, float eps, cudaStream_t s) {
  return launch_fwd<true>(x, r, w, h, y, rstd, T, C, eps, s);
}

// Rows of the partials scratch (f32 [blocks, C]) that ls_llama_rmsnorm_bwd_bf16 needs for T rows.
LS_API int64_t ls_llama_rmsnorm_bwd_blocks(int64_t T) { return std::min<int64_t>(std::max<int64_t>(T, 0), kBwdBlocks); }

// x, dy bf16[T,C], w bf16[C], rstd f32[T], residual bf16[T,C] or null -> dx bf16[T,C]; dw f32[C] +=.
// partials: f32 [ls_llama_rmsnorm_bwd_blocks(T), C] scratch; blocks: that count.
LS_API int ls_llama_rmsnorm_bwd_bf16(const uint16_t* x, const uint16_t* w, const float* rstd, const uint16_t* dy, const uint16_t* residual,
                                     uint16_t* dx, float* partials, int64_t blocks, float* dw, int64_t T, int64_t C, cudaStream_t s) {
  if (T <= 0 || C <= 0 || blocks <= 0) return 0;
  if (residual != nullptr) return launch_bwd<true>(x, w, rstd, dy, residual, dx, partials, blocks, dw, T, C, s);
  return launch_bwd<false>(x, w, rstd, dy, residual, dx, partials, blocks, dw, T, C, s);
}
