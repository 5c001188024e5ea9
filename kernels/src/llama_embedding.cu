// Embedding lookup and its deterministic backward (packages/llama/src/ops/embedding.ts).
//
// Forward: out[t, :] = table[tokens[t], :]; one block per token row, 16-byte copies when C % 8 == 0 and
// every pointer is 16-byte aligned, element copies otherwise. A token outside [0, V) gives a row of
// NaN (the host cannot be told from here without a sync; the loss then shows it).
//
// Backward: deterministic without float atomics, over the host's plan (packages/llama/src/ops/
// embedding.ts, embeddingPlan): t sorted by (token, t) in perm, cut into segments of at most 32 rows,
// each of one token. A token whose rows fit one segment: its block (segment, column slice) starts from
// dtable[token] and adds its rows' dx in increasing t, one f32 addition each, and stores once. A token
// with more rows (a frequent one): each segment sums its rows from 0 into a scratch slot (the same
// order), then one block per such token adds its slots in segment order to dtable[token]. Every element
// has one writer and a fixed order of f32 additions, which the CPU reference follows too: the same bits
// every run and on both devices. Segments bound the serial chain of a frequent token (a common word is
// ~3% of the text: ~1000 rows at T = 32K) to 32 rows, loaded 4 at a time.
#include "llama_common.cuh"

namespace {

using ls::bf16_to_f32;
using ls::load_pack;
using ls::Pack;
using ls::store_pack;

constexpr int kCopyThreads = 128;
constexpr int kBwdThreads = 256;

template <bool Vec>
__global__ void __launch_bounds__(kCopyThreads)
    embedding_fwd(const int32_t* __restrict__ tokens, const uint16_t* __restrict__ table, uint16_t* __restrict__ out, int64_t V, int64_t C) {
  const int64_t t = blockIdx.x;
  const int32_t tok = tokens[t];
  uint16_t* dst = out + t * C;
  const bool valid = tok >= 0 && tok < V;
  const uint16_t* src = table + static_cast<int64_t>(valid ? tok : 0) * C;
  if (Vec) {
    Pack<uint16_t, 8> nan;
#pragma unroll
    for (int j = 0; j < 8; ++j) nan.v[j] = 0x7fc0;
    for (int64_t p = threadIdx.x; p < C / 8; p += blockDim.x) store_pack<uint16_t, 8>(dst + p * 8, valid ? load_pack<uint16_t, 8>(src + p * 8) : nan);
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = valid ? src[c] : static_cast<uint16_t>(0x7fc0);
  }
}

template <int V>
struct Acc {
  float v[V];
};

template <int V>
__device__ __forceinline__ Acc<V> load_f32(const float* p) {
  Acc<V> a;
  if constexpr (V == 8) {
    const Pack<float, 4> a0 = load_pack<float, 4>(p);
    const Pack<float, 4> a1 = load_pack<float, 4>(p + 4);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      a.v[j] = a0.v[j];
      a.v[j + 4] = a1.v[j];
    }
  } else {
    a.v[0] = *p;
  }
  return a;
}

template <int V>
__device__ __forceinline__ void store_f32(float* p, const Acc<V>& a) {
  if constexpr (V == 8) {
    Pack<float, 4> a0;
    Pack<float, 4> a1;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      a0.v[j] = a.v[j];
      a1.v[j] = a.v[j + 4];
    }
    store_pack<float, 4>(p, a0);
    store_pack<float, 4>(p + 4, a1);
  } else {
    *p = a.v[0];
  }
}

template <int V>
__device__ __forceinline__ void add_row(Acc<V>& acc, const uint16_t* p) {
  if constexpr (V == 8) {
    float g[8];
    ls::llama::widen8(load_pack<uint16_t, 8>(p), g);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc.v[j] = __fadd_rn(acc.v[j], g[j]);
  } else {
    acc.v[0] = __fadd_rn(acc.v[0], bf16_to_f32(*p));
  }
}

// Segment s: rows perm[start[s] .. start[s+1]) of token tok[s]; slot[s] < 0: into dtable, else into
// scratch[slot[s]] (starting from 0).
template <int V>
__global__ void __launch_bounds__(kBwdThreads)
    embedding_bwd_segments(const uint16_t* __restrict__ dx, const int32_t* __restrict__ perm, const int32_t* __restrict__ tok,
                           const int32_t* __restrict__ start, const int32_t* __restrict__ slot, int64_t C, float* __restrict__ scratch,
                           float* __restrict__ dtable) {
  const int64_t s = blockIdx.x;
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (c >= C) return;
  const int32_t begin = start[s];
  const int32_t end = start[s + 1];
  const int32_t k = slot[s];
  float* dst = k < 0 ? dtable + static_cast<int64_t>(tok[s]) * C + c : scratch + static_cast<int64_t>(k) * C + c;
  Acc<V> acc;
  if (k < 0) {
    acc = load_f32<V>(dst);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) acc.v[j] = 0.0f;
  }
  int32_t i = begin;
  for (; i + 4 <= end; i += 4) {
    // four rows' loads in flight, added in order
    const uint16_t* r0 = dx + static_cast<int64_t>(perm[i]) * C + c;
    const uint16_t* r1 = dx + static_cast<int64_t>(perm[i + 1]) * C + c;
    const uint16_t* r2 = dx + static_cast<int64_t>(perm[i + 2]) * C + c;
    const uint16_t* r3 = dx + static_cast<int64_t>(perm[i + 3]) * C + c;
    if constexpr (V == 8) {
      const Pack<uint16_t, 8> p0 = load_pack<uint16_t, 8>(r0);
      const Pack<uint16_t, 8> p1 = load_pack<uint16_t, 8>(r1);
      const Pack<uint16_t, 8> p2 = load_pack<uint16_t, 8>(r2);
      const Pack<uint16_t, 8> p3 = load_pack<uint16_t, 8>(r3);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc.v[j] = __fadd_rn(acc.v[j], bf16_to_f32(p0.v[j]));
        acc.v[j] = __fadd_rn(acc.v[j], bf16_to_f32(p1.v[j]));
        acc.v[j] = __fadd_rn(acc.v[j], bf16_to_f32(p2.v[j]));
        acc.v[j] = __fadd_rn(acc.v[j], bf16_to_f32(p3.v[j]));
      }
    } else {
      const uint16_t b0 = *r0;
      const uint16_t b1 = *r1;
      const uint16_t b2 = *r2;
      const uint16_t b3 = *r3;
      acc.v[0] = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(acc.v[0], bf16_to_f32(b0)), bf16_to_f32(b1)), bf16_to_f32(b2)), bf16_to_f32(b3));
    }
  }
  for (; i < end; ++i) add_row<V>(acc, dx + static_cast<int64_t>(perm[i]) * C + c);
  store_f32<V>(dst, acc);
}

// Token mtok[m] of several segments: dtable[mtok[m]] += scratch[k] for k = mstart[m] .. mstart[m+1), in order.
template <int V>
__global__ void __launch_bounds__(kBwdThreads) embedding_bwd_merge(const int32_t* __restrict__ mtok, const int32_t* __restrict__ mstart,
                                                                   const float* __restrict__ scratch, int64_t C, float* __restrict__ dtable) {
  const int64_t m = blockIdx.x;
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (c >= C) return;
  float* dst = dtable + static_cast<int64_t>(mtok[m]) * C + c;
  Acc<V> acc = load_f32<V>(dst);
  for (int32_t k = mstart[m]; k < mstart[m + 1]; ++k) {
    const Acc<V> p = load_f32<V>(scratch + static_cast<int64_t>(k) * C + c);
#pragma unroll
    for (int j = 0; j < V; ++j) acc.v[j] = __fadd_rn(acc.v[j], p.v[j]);
  }
  store_f32<V>(dst, acc);
}

template <int V>
int launch_bwd(const uint16_t* dx, const int32_t* perm, const int32_t* seg_tok, const int32_t* seg_start, const int32_t* seg_slot, int64_t segments,
               const int32_t* multi_tok, const int32_t* multi_start, int64_t multi, float* scratch, int64_t C, float* dtable, cudaStream_t s) {
  const unsigned slices = static_cast<unsigned>(ls::ceil_div(C, static_cast<int64_t>(kBwdThreads) * V));
  embedding_bwd_segments<V><<<dim3(static_cast<unsigned>(segments), slices), kBwdThreads, 0, s>>>(dx, perm, seg_tok, seg_start, seg_slot, C, scratch,
                                                                                                 dtable);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || multi <= 0) return static_cast<int>(e);
  embedding_bwd_merge<V><<<dim3(static_cast<unsigned>(multi), slices), kBwdThreads, 0, s>>>(multi_tok, multi_start, scratch, C, dtable);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// tokens i32[T], table bf16[V,C] -> out bf16[T,C].
LS_API int ls_llama_embedding_fwd_bf16(const int32_t* tokens, const uint16_t* table, uint16_t* out, int64_t T, int64_t V, int64_t C,
                                       cudaStream_t s) {
  if (T <= 0 || C <= 0) return 0;
  const bool vec = C % 8 == 0 && ls::aligned16(table) && ls::aligned16(out);
  if (vec) embedding_fwd<true><<<static_cast<unsigned>(T), kCopyThreads, 0, s>>>(tokens, table, out, V, C);
  else embedding_fwd<false><<<static_cast<unsigned>(T), kCopyThreads, 0, s>>>(tokens, table, out, V, C);
  return static_cast<int>(cudaGetLastError());
}

// dx bf16[T,C]; the plan of embeddingPlan: perm i32[T]; segments: seg_tok, seg_slot i32[segments],
// seg_start i32[segments + 1]; tokens of several segments: multi_tok i32[multi], multi_start i32[multi + 1];
// scratch f32[slots, C] (slots = multi_start[multi]; unused when multi = 0) -> dtable f32[V,C] +=.
LS_API int ls_llama_embedding_bwd_bf16(const uint16_t* dx, const int32_t* perm, const int32_t* seg_tok, const int32_t* seg_start,
                                       const int32_t* seg_slot, int64_t segments, const int32_t* multi_tok, const int32_t* multi_start,
                                       int64_t multi, float* scratch, int64_t C, float* dtable, cudaStream_t s) {
  if (segments <= 0 || C <= 0) return 0;
  const bool vec = C % 8 == 0 && ls::aligned16(dx) && ls::aligned16(dtable) && (multi <= 0 || ls::aligned16(scratch));
  if (vec) return launch_bwd<8>(dx, perm, seg_tok, seg_start, seg_slot, segments, multi_tok, multi_start, multi, scratch, C, dtable, s);
  return launch_bwd<1>(dx, perm, seg_tok, seg_start, seg_slot, segments, multi_tok, multi_start, multi, scratch, C, dtable, s);
}
