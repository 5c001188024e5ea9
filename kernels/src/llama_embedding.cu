// Embedding lookup and its deterministic backward (packages/llama/src/ops/embedding.ts).
//
// Forward: out[t, :] = table[tokens[t], :]; one block per token row, 16-byte copies when C % 8 == 0 and
// every pointer is 16-byte aligned, element copies otherwise. A token outside [0, V) gives a row of
// NaN (the host cannot be told from here without a sync; the loss then shows it).
//
// Backward: the host grouped equal tokens (perm sorted by (token, t), runs [start[u], start[u+1]) of
// distinct token uniq[u]). Block (u, slice) owns dtable[uniq[u], slice]: it starts from the stored
// value and adds dx[perm[i], slice] for i in its run in increasing order, one f32 addition each, then
// stores once. No two blocks write the same element and the order is fixed, so the result is the same
// bits every run, and the same as the CPU reference's sequential f32 additions.
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

template <bool Vec>
__global__ void __launch_bounds__(kBwdThreads) embedding_bwd(const uint16_t* __restrict__ dx, const int32_t* __restrict__ perm,
                                                             const int32_t* __restrict__ uniq, const int32_t* __restrict__ start, int64_t C,
                                                             float* __restrict__ dtable) {
  const int64_t u = blockIdx.x;
  const int32_t begin = start[u];
  const int32_t end = start[u + 1];
  float* row = dtable + static_cast<int64_t>(uniq[u]) * C;
  if (Vec) {
    const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * 8;
    if (c >= C) return;
    const Pack<float, 4> a0 = load_pack<float, 4>(row + c);
    const Pack<float, 4> a1 = load_pack<float, 4>(row + c + 4);
    float acc[8] = {a0.v[0], a0.v[1], a0.v[2], a0.v[3], a1.v[0], a1.v[1], a1.v[2], a1.v[3]};
    for (int32_t i = begin; i < end; ++i) {
      float g[8];
      ls::llama::widen8(load_pack<uint16_t, 8>(dx + static_cast<int64_t>(perm[i]) * C + c), g);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = __fadd_rn(acc[j], g[j]);
    }
    Pack<float, 4> b0, b1;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      b0.v[j] = acc[j];
      b1.v[j] = acc[j + 4];
    }
    store_pack<float, 4>(row + c, b0);
    store_pack<float, 4>(row + c + 4, b1);
  } else {
    const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = row[c];
    for (int32_t i = begin; i < end; ++i) acc = __fadd_rn(acc, bf16_to_f32(dx[static_cast<int64_t>(perm[i]) * C + c]));
    row[c] = acc;
  }
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

// dx bf16[T,C]; perm i32[T], uniq i32[distinct], start i32[distinct + 1] from the host's grouping;
// dtable f32[V,C] += (deterministic, see the top of this file).
LS_API int ls_llama_embedding_bwd_bf16(const uint16_t* dx, const int32_t* perm, const int32_t* uniq, const int32_t* start, int64_t distinct,
                                       int64_t C, float* dtable, cudaStream_t s) {
  if (distinct <= 0 || C <= 0) return 0;
  const bool vec = C % 8 == 0 && ls::aligned16(dx) && ls::aligned16(dtable);
  const int64_t per_block = vec ? kBwdThreads * 8 : kBwdThreads;
  const dim3 grid(static_cast<unsigned>(distinct), static_cast<unsigned>(ls::ceil_div(C, per_block)));
  if (vec) embedding_bwd<true><<<grid, kBwdThreads, 0, s>>>(dx, perm, uniq, start, C, dtable);
  else embedding_bwd<false><<<grid, kBwdThreads, 0, s>>>(dx, perm, uniq, start, C, dtable);
  return static_cast<int>(cudaGetLastError());
}
