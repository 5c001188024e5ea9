// Lab for the LM head's cross-entropy row kernel (kernels/src/llama_cross_entropy.cu): variants of one
// block per row of f32 logits [rows, V] -> row loss and bf16 dlogits = g (softmax - onehot), each
// validated against an f64 CPU reference on sampled rows, then timed (CUDA events, median) as GB/s of
// the bytes that must move (read 4V, write 2V per row) against a device-to-device copy.
//
// Why variants: a second pass over a row (to write dlogits once lse is known) hits L2 only when the rows
// in flight fit in it (528 rows x 128 KB at 512 threads x 4 blocks/SM do not). So:
//   A  two passes, 512 threads (the first shipped version)
//   B0 two passes, 1024 threads, 2 blocks/SM (264 rows in flight)
//   B  as B0 + streaming hints: second-pass loads and dlogits stores evict-first (.cs)
//   F  as B + first-pass loads L2::evict_last
//   C  as B, 1 block/SM (132 rows in flight; occupancy limited by shared memory)
//   D  one pass over memory: the row kept in registers (1024 threads x 32 floats; V <= 32768), 1 block/SM
//   E  one pass over memory: half the row in registers, half in shared memory (512 threads x (32 + 32)
//      floats; V <= 32768), 2 blocks/SM
//   S  the shipped kernel (kernels/src/llama_cross_entropy.cu, included here): B with fewer operations
//      per element (exps as ex2 of one FMA, grad_scale in the exponent, rescale only on a new max)
//   G  S's arithmetic at other block shapes (threads x blocks per SM)
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I../../src check.cu -o ce_check && ./ce_check   (run.sh does this)
#include <cuda_runtime.h>

#include "llama_cross_entropy.cu"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#define CK(x)                                                                                    \
  do {                                                                                           \
    cudaError_t e_ = (x);                                                                        \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                              \
    }                                                                                            \
  } while (0)

namespace lab {

constexpr int kIgnore = -100;

__device__ __forceinline__ uint16_t to_bf16(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ MaxSum block_merge(MaxSum v) {
  __shared__ MaxSum part[32];
  __shared__ MaxSum total;
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    MaxSum o{__shfl_xor_sync(0xffffffffu, v.m, d), __shfl_xor_sync(0xffffffffu, v.s, d)};
    v = merge(v, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    MaxSum t = lane < static_cast<int>(blockDim.x >> 5) ? part[lane] : MaxSum{-INFINITY, 0.0f};
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      MaxSum o{__shfl_xor_sync(0xffffffffu, t.m, d), __shfl_xor_sync(0xffffffffu, t.s, d)};
      t = merge(t, o);
    }
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

struct F8 {
  float v[8];
};

template <int LD>  // 0 default, 1 .cs (evict first), 2 L2::evict_last
__device__ __forceinline__ F8 load8(const float* p) {
  F8 r;
  float4 a, b;
  if (LD == 1) {
    a = __ldcs(reinterpret_cast<const float4*>(p));
    b = __ldcs(reinterpret_cast<const float4*>(p + 4));
  } else if (LD == 2) {
    uint64_t pol;
    asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("ld.global.L2::cache_hint.v4.f32 {%0,%1,%2,%3}, [%4], %5;" : "=f"(a.x), "=f"(a.y), "=f"(a.z), "=f"(a.w) : "l"(p), "l"(pol));
    asm volatile("ld.global.L2::cache_hint.v4.f32 {%0,%1,%2,%3}, [%4], %5;" : "=f"(b.x), "=f"(b.y), "=f"(b.z), "=f"(b.w) : "l"(p + 4), "l"(pol));
  } else {
    a = *reinterpret_cast<const float4*>(p);
    b = *reinterpret_cast<const float4*>(p + 4);
  }
  r.v[0] = a.x, r.v[1] = a.y, r.v[2] = a.z, r.v[3] = a.w, r.v[4] = b.x, r.v[5] = b.y, r.v[6] = b.z, r.v[7] = b.w;
  return r;
}

template <bool CS>
__device__ __forceinline__ void store8(uint16_t* p, const float (&g)[8]) {
  uint4 u;
  u.x = to_bf16(g[0]) | (static_cast<uint32_t>(to_bf16(g[1])) << 16);
  u.y = to_bf16(g[2]) | (static_cast<uint32_t>(to_bf16(g[3])) << 16);
  u.z = to_bf16(g[4]) | (static_cast<uint32_t>(to_bf16(g[5])) << 16);
  u.w = to_bf16(g[6]) | (static_cast<uint32_t>(to_bf16(g[7])) << 16);
  if (CS) __stcs(reinterpret_cast<uint4*>(p), u);
  else *reinterpret_cast<uint4*>(p) = u;
}

__device__ __forceinline__ void absorb8(MaxSum& acc, const F8& x) {
  float mx = x.v[0];
#pragma unroll
  for (int j = 1; j < 8; ++j) mx = fmaxf(mx, x.v[j]);
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += __expf(x.v[j] - mx);
  acc = merge(acc, MaxSum{mx, s});
}

template <bool CS>
__device__ __forceinline__ void emit8(uint16_t* d, const F8& x, int64_t i, int32_t y, float lse, float g) {
  float o[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = g * (__expf(x.v[j] - lse) - (i + j == y ? 1.0f : 0.0f));
  store8<CS>(d + i, o);
}

template <bool CS>
__device__ __forceinline__ bool ignored_row(int32_t y, uint16_t* d, float* row_loss, int64_t row, int64_t V) {
  if (y != kIgnore) return false;
  if (threadIdx.x == 0) row_loss[row] = 0.0f;
  const float z[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = threadIdx.x * 8; i < V; i += static_cast<int64_t>(blockDim.x) * 8) store8<CS>(d + i, z);
  return true;
}

// Two passes (A, B0, B, C, F). LD1/LD2: hints of the first/second pass loads; CS: streaming stores.
template <int THREADS, int MINB, int LD1, int LD2, bool CS>
__global__ void __launch_bounds__(THREADS, MINB)
    two_pass(const float* __restrict__ logits, const int32_t* __restrict__ labels, float g, uint16_t* __restrict__ dlogits,
             float* __restrict__ row_loss, int64_t V) {
  const int64_t row = blockIdx.x;
  const int32_t y = labels[row];
  const float* l = logits + row * V;
  uint16_t* d = dlogits + row * V;
  if (ignored_row<CS>(y, d, row_loss, row, V)) return;
  MaxSum acc{-INFINITY, 0.0f};
#pragma unroll 4
  for (int64_t i = threadIdx.x * 8; i < V; i += THREADS * 8) absorb8(acc, load8<LD1>(l + i));
  acc = block_merge(acc);
  const float lse = acc.m + logf(acc.s);
  if (threadIdx.x == 0) row_loss[row] = lse - l[y];
#pragma unroll 4
  for (int64_t i = threadIdx.x * 8; i < V; i += THREADS * 8) emit8<CS>(d, load8<LD2>(l + i), i, y, lse, g);
}

// One pass over memory: packs p < REG in registers, REG <= p < REG + SMEM in shared memory.
template <int THREADS, int MINB, int REG, int SMEM>
__global__ void __launch_bounds__(THREADS, MINB)
    on_chip(const float* __restrict__ logits, const int32_t* __restrict__ labels, float g, uint16_t* __restrict__ dlogits,
            float* __restrict__ row_loss, int64_t V) {
  extern __shared__ float4 held[];  // [SMEM][2][THREADS]
  const int64_t row = blockIdx.x;
  const int32_t y = labels[row];
  const float* l = logits + row * V;
  uint16_t* d = dlogits + row * V;
  if (ignored_row<true>(y, d, row_loss, row, V)) return;
  const int64_t packs = V / 8;
  F8 r[REG];
  MaxSum acc{-INFINITY, 0.0f};
#pragma unroll
  for (int p = 0; p < REG; ++p) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(p) * THREADS;
    if (i < packs) r[p] = load8<0>(l + i * 8);
  }
  if (SMEM > 0) {
#pragma unroll
    for (int p = 0; p < SMEM; ++p) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(REG + p) * THREADS;
      if (i < packs) {
        const F8 x = load8<0>(l + i * 8);
        held[(p * 2) * THREADS + threadIdx.x] = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
        held[(p * 2 + 1) * THREADS + threadIdx.x] = make_float4(x.v[4], x.v[5], x.v[6], x.v[7]);
        absorb8(acc, x);
      }
    }
  }
#pragma unroll
  for (int p = 0; p < REG; ++p) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(p) * THREADS;
    if (i < packs) absorb8(acc, r[p]);
  }
  acc = block_merge(acc);
  const float lse = acc.m + logf(acc.s);
  if (threadIdx.x == 0) row_loss[row] = lse - l[y];
#pragma unroll
  for (int p = 0; p < REG; ++p) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(p) * THREADS;
    if (i < packs) emit8<true>(d, r[p], i * 8, y, lse, g);
  }
  if (SMEM > 0) {
#pragma unroll
    for (int p = 0; p < SMEM; ++p) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(REG + p) * THREADS;
      if (i < packs) {
        const float4 a = held[(p * 2) * THREADS + threadIdx.x];
        const float4 b = held[(p * 2 + 1) * THREADS + threadIdx.x];
        const F8 x{{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
        emit8<true>(d, x, i * 8, y, lse, g);
      }
    }
  }
}


// S's arithmetic at other block shapes (G): THREADS x MINB blocks per SM.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
    fast_two_pass(const float* __restrict__ logits, const int32_t* __restrict__ labels, float g, uint16_t* __restrict__ dlogits,
                  float* __restrict__ row_loss, int64_t V) {
  constexpr float kL2e = 1.4426950408889634f;
  const int64_t row = blockIdx.x;
  const int32_t y = labels[row];
  const float* l = logits + row * V;
  uint16_t* d = dlogits + row * V;
  if (ignored_row<true>(y, d, row_loss, row, V)) return;
  MaxSum acc{-INFINITY, 0.0f};
  float mb = -INFINITY;
  for (int64_t i = threadIdx.x * 8; i < V; i += THREADS * 8) {
    const F8 x = load8<0>(l + i);
    float mx = x.v[0];
#pragma unroll
    for (int j = 1; j < 8; ++j) mx = fmaxf(mx, x.v[j]);
    if (mx > acc.m) {
      acc.s *= ex2((acc.m - mx) * kL2e);
      acc.m = mx;
      mb = mx * kL2e;
    }
    float e[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) e[j] = ex2(fmaf(x.v[j], kL2e, -mb));
    acc.s += ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
  }
  acc = block_merge(acc);
  const float lse = acc.m + logf(acc.s);
  if (threadIdx.x == 0) row_loss[row] = lse - l[y];
  const float bias = log2f(fabsf(g)) - lse * kL2e;
  for (int64_t i = threadIdx.x * 8; i < V; i += THREADS * 8) {
    const F8 x = load8<1>(l + i);
    float o[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = ex2(fmaf(x.v[j], kL2e, bias));
    if (g < 0.0f)
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = -o[j];
    if (static_cast<uint64_t>(y - i) < 8u)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (i + j == y) o[j] -= g;
    store8<true>(d + i, o);
  }
}

template <int THREADS, int MINB>
void run_fast(const float* l, const int32_t* y, float g, uint16_t* d, float* loss, int64_t rows, int64_t V, cudaStream_t s) {
  fast_two_pass<THREADS, MINB><<<static_cast<unsigned>(rows), THREADS, 0, s>>>(l, y, g, d, loss, V);
}

// ---- host ----

__global__ void init_logits(float* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = (static_cast<float>(h >> 8) / 16777216.0f) * 12.0f - 6.0f;  // uniform [-6, 6)
  }
}

using Launch = void (*)(const float*, const int32_t*, float, uint16_t*, float*, int64_t, int64_t, cudaStream_t);

template <int THREADS, int MINB, int LD1, int LD2, bool CS, int SMEM_BYTES = 0>
void run_two_pass(const float* l, const int32_t* y, float g, uint16_t* d, float* loss, int64_t rows, int64_t V, cudaStream_t s) {
  auto k = two_pass<THREADS, MINB, LD1, LD2, CS>;
  if (SMEM_BYTES > 48 * 1024) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
  k<<<static_cast<unsigned>(rows), THREADS, SMEM_BYTES, s>>>(l, y, g, d, loss, V);
}

template <int THREADS, int MINB, int REG, int SMEM>
void run_on_chip(const float* l, const int32_t* y, float g, uint16_t* d, float* loss, int64_t rows, int64_t V, cudaStream_t s) {
  auto k = on_chip<THREADS, MINB, REG, SMEM>;
  const int bytes = SMEM * 2 * THREADS * 16;
  if (bytes > 48 * 1024) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  k<<<static_cast<unsigned>(rows), THREADS, bytes, s>>>(l, y, g, d, loss, V);
}

void run_shipped(const float* l, const int32_t* y, float g, uint16_t* d, float* loss, int64_t rows, int64_t V, cudaStream_t s) {
  CK(static_cast<cudaError_t>(ls_llama_cross_entropy_f32(l, y, g, d, loss, rows, V, s)));
}

struct Variant {
  const char* name;
  Launch launch;
  int64_t max_v;  // 0: any V % 8 == 0
};

static float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace lab

using lab::Variant;

int main(int argc, char** argv) {
  int reps = 20;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--reps") reps = std::atoi(argv[i + 1]);
  const Variant variants[] = {
      {"A  2-pass 512t", lab::run_two_pass<512, 1, 0, 0, false>, 0},
      {"B0 2-pass 1024t x2", lab::run_two_pass<1024, 2, 0, 0, false>, 0},
      {"B  2-pass 1024t x2 .cs", lab::run_two_pass<1024, 2, 0, 1, true>, 0},
      {"F  B + evict_last", lab::run_two_pass<1024, 2, 2, 1, true>, 0},
      {"C  B, 1 block/SM", lab::run_two_pass<1024, 1, 0, 1, true, 160 * 1024>, 0},
      {"D  regs 1024t x 32f", lab::run_on_chip<1024, 1, 4, 0>, 1024 * 8 * 4},
      {"E  regs+smem 512t x 64f", lab::run_on_chip<512, 2, 4, 4>, 512 * 8 * 8},
      {"S  shipped", lab::run_shipped, 0},
      {"G  S-arith 512t x4", lab::run_fast<512, 4>, 0},
      {"G  S-arith 256t x8", lab::run_fast<256, 8>, 0},
      {"G  S-arith 1024t x1", lab::run_fast<1024, 1>, 0},
  };
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto time_ms = [&](auto&& fn) {
    for (int i = 0; i < 3; ++i) fn();
    std::vector<float> t;
    for (int r = 0; r < reps; ++r) {
      CK(cudaEventRecord(e0, s));
      fn();
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  // copy bandwidth
  const size_t cb = size_t(1) << 30;
  void *ca, *cbuf;
  CK(cudaMalloc(&ca, cb));
  CK(cudaMalloc(&cbuf, cb));
  CK(cudaMemsetAsync(ca, 1, cb, s));
  const float cms = time_ms([&] { CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, s)); });
  const double copy_gbs = 2.0 * cb / (cms * 1e-3) / 1e9;
  CK(cudaFree(ca));
  CK(cudaFree(cbuf));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, L2 %d MiB; copy d2d %.0f GB/s; median of %d\n", prop.name, prop.l2CacheSize >> 20, copy_gbs, reps);
  int failures = 0;
  for (const auto& shape : std::vector<std::pair<int64_t, int64_t>>{{2048, 32000}, {512, 128256}, {300, 1000}}) {
    const int64_t rows = shape.first;
    const int64_t V = shape.second;
    const int64_t n = rows * V;
    float *logits, *loss;
    uint16_t* dl;
    int32_t* labels;
    CK(cudaMalloc(&logits, n * 4));
    CK(cudaMalloc(&dl, n * 2));
    CK(cudaMalloc(&loss, rows * 4));
    CK(cudaMalloc(&labels, rows * 4));
    lab::init_logits<<<4096, 256, 0, s>>>(logits, n, static_cast<uint32_t>(V));
    std::vector<int32_t> hy(rows);
    for (int64_t r = 0; r < rows; ++r) hy[r] = r % 13 == 5 ? lab::kIgnore : static_cast<int32_t>((r * 40503 + 7) % V);
    CK(cudaMemcpyAsync(labels, hy.data(), rows * 4, cudaMemcpyHostToDevice, s));
    std::vector<float> hl(n);
    CK(cudaMemcpyAsync(hl.data(), logits, n * 4, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    const float g = 1.0f / 1000.0f;
    // f64 reference on sampled rows
    std::vector<int64_t> sample;
    for (int64_t r = 0; r < rows; r += std::max<int64_t>(1, rows / 24)) sample.push_back(r);
    sample.push_back(rows - 1);
    std::printf("\nrows=%lld V=%lld\n%-26s %9s %8s %8s  %s\n", (long long)rows, (long long)V, "variant", "ms", "GB/s", "of copy", "check");
    for (const auto& v : variants) {
      if (v.max_v != 0 && V > v.max_v) continue;
      CK(cudaMemsetAsync(dl, 0xff, n * 2, s));
      v.launch(logits, labels, g, dl, loss, rows, V, s);
      CK(cudaGetLastError());
      std::vector<uint16_t> hd(n);
      std::vector<float> hloss(rows);
      CK(cudaMemcpyAsync(hd.data(), dl, n * 2, cudaMemcpyDeviceToHost, s));
      CK(cudaMemcpyAsync(hloss.data(), loss, rows * 4, cudaMemcpyDeviceToHost, s));
      CK(cudaStreamSynchronize(s));
      double worst = 0;  // in units of the tolerance: |err| / (2^-7 |ref| + 1e-7 g)
      double worst_loss = 0;
      for (int64_t r : sample) {
        const float* x = hl.data() + r * V;
        const int32_t y = hy[r];
        double m = -INFINITY, sum = 0;
        for (int64_t j = 0; j < V; ++j) m = std::max(m, double(x[j]));
        for (int64_t j = 0; j < V; ++j) sum += std::exp(double(x[j]) - m);
        const double lse = m + std::log(sum);
        const double ref_loss = y == lab::kIgnore ? 0.0 : lse - x[y];
        worst_loss = std::max(worst_loss, std::abs(hloss[r] - ref_loss) / (1e-6 * std::abs(ref_loss) + 1e-6));
        for (int64_t j = 0; j < V; ++j) {
          const double ref = y == lab::kIgnore ? 0.0 : g * (std::exp(double(x[j]) - lse) - (j == y ? 1.0 : 0.0));
          const double got = lab::bf16_to_float(hd[r * V + j]);
          const double u = std::abs(got - ref) / (std::ldexp(std::abs(ref), -7) + 1e-7 * g);
          if (!(u <= worst)) worst = std::isnan(u) ? INFINITY : std::max(worst, u);
        }
      }
      const bool ok = worst <= 1.0 && worst_loss <= 1.0;
      failures += ok ? 0 : 1;
      const float ms = time_ms([&] { v.launch(logits, labels, g, dl, loss, rows, V, s); });
      const double gbs = double(n) * 6 / (ms * 1e-3) / 1e9;
      std::printf("%-26s %9.4f %8.0f %7.1f%%  %s (dlogits %.2f, loss %.2f of tol)\n", v.name, ms, gbs, 100 * gbs / copy_gbs, ok ? "ok" : "FAIL", worst,
                  worst_loss);
    }
    CK(cudaFree(logits));
    CK(cudaFree(dl));
    CK(cudaFree(loss));
    CK(cudaFree(labels));
  }
  std::printf("\n%s\n", failures == 0 ? "all variants validated" : "SOME VARIANTS FAILED VALIDATION");
  return failures == 0 ? 0 : 1;
}
