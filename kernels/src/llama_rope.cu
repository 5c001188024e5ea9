// RoPE fused with the QKV split, forward and backward (packages/llama/src/ops/rope.ts has the reference,
// the layout and why the cos/sin tables are computed on the host in f64).
//
//   forward:  qkv[T, (Hq + 2 Hkv) D] -> q[T,Hq,D], k[T,Hkv,D] rotated (rotate-half), v[T,Hkv,D] copied
//             out1 = x1 c - x2 s,  out2 = x2 c + x1 s   (x1, x2 the halves of a head; c, s of [t, j])
//   backward: dq, dk, dv -> dqkv, the inverse rotation  d1 = g1 c + g2 s,  d2 = g2 c - g1 s
//
// One block per token; its threads walk the (head, slice) items of the token: a slice is 8 pairs
// (x1[j..j+8), x2[j..j+8)) with 16-byte loads when D/2 % 8 == 0 and every pointer is 16-byte aligned,
// one pair otherwise. f32 math, one rounding to bf16 per output.
#include <initializer_list>

#include "llama_common.cuh"

namespace {

using ls::bf16_to_f32;
using ls::f32_to_bf16;
using ls::load_pack;
using ls::Pack;
using ls::store_pack;

constexpr int kThreads = 256;

// Rotates V pairs: (a, b) -> (a c - b sn, b c + a sn) with sn = sign * s.
template <int V>
__device__ __forceinline__ void rotate(const uint16_t* src1, const uint16_t* src2, const float* c, const float* s, float sign, uint16_t* dst1,
                                       uint16_t* dst2) {
  if constexpr (V == 8) {
    float a[8];
    float b[8];
    ls::llama::widen8(load_pack<uint16_t, 8>(src1), a);
    ls::llama::widen8(load_pack<uint16_t, 8>(src2), b);
    const Pack<float, 4> c0 = load_pack<float, 4>(c);
    const Pack<float, 4> c1 = load_pack<float, 4>(c + 4);
    const Pack<float, 4> s0 = load_pack<float, 4>(s);
    const Pack<float, 4> s1 = load_pack<float, 4>(s + 4);
    const float cc[8] = {c0.v[0], c0.v[1], c0.v[2], c0.v[3], c1.v[0], c1.v[1], c1.v[2], c1.v[3]};
    const float ss[8] = {s0.v[0], s0.v[1], s0.v[2], s0.v[3], s1.v[0], s1.v[1], s1.v[2], s1.v[3]};
    float o1[8];
    float o2[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float sn = sign * ss[j];
      o1[j] = a[j] * cc[j] - b[j] * sn;
      o2[j] = b[j] * cc[j] + a[j] * sn;
    }
    store_pack<uint16_t, 8>(dst1, ls::llama::narrow8(o1));
    store_pack<uint16_t, 8>(dst2, ls::llama::narrow8(o2));
  } else {
    const float a = bf16_to_f32(*src1);
    const float b = bf16_to_f32(*src2);
    const float sn = sign * *s;
    *dst1 = f32_to_bf16(a * *c - b * sn);
    *dst2 = f32_to_bf16(b * *c + a * sn);
  }
}

template <int V>
__device__ __forceinline__ void copy_slice(const uint16_t* src, uint16_t* dst) {
  if constexpr (V == 8) store_pack<uint16_t, 8>(dst, load_pack<uint16_t, 8>(src));
  else *dst = *src;
}

// Forward = true: src is qkv (row stride W), dst q/k/v. Forward = false: src dq/dk/dv, dst dqkv.
template <int V, bool Forward>
__global__ void __launch_bounds__(kThreads) rope_qkv(const uint16_t* __restrict__ packed, const uint16_t* __restrict__ qh,
                                                     const uint16_t* __restrict__ kh, const uint16_t* __restrict__ vh,
                                                     const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                                     uint16_t* __restrict__ packed_out, uint16_t* __restrict__ q_out,
                                                     uint16_t* __restrict__ k_out, uint16_t* __restrict__ v_out, int Hq, int Hkv, int D) {
  const int64_t t = blockIdx.x;
  const int half = D / 2;
  const int slices = half / V;
  const int heads = Hq + 2 * Hkv;
  const int64_t W = static_cast<int64_t>(heads) * D;
  const float* c = cos_t + t * half;
  const float* s = sin_t + t * half;
  const float sign = Forward ? 1.0f : -1.0f;
  for (int item = threadIdx.x; item < heads * slices; item += blockDim.x) {
    const int h = item / slices;
    const int j = (item - h * slices) * V;
    // the packed row's head h, and the same head in its own tensor
    const int64_t pk = t * W + static_cast<int64_t>(h) * D + j;
    int64_t own;
    const uint16_t* own_in;
    uint16_t* own_out;
    if (h < Hq) {
      own = (t * Hq + h) * static_cast<int64_t>(D) + j;
      own_in = qh;
      own_out = q_out;
    } else if (h < Hq + Hkv) {
      own = (t * Hkv + (h - Hq)) * static_cast<int64_t>(D) + j;
      own_in = kh;
      own_out = k_out;
    } else {
      own = (t * Hkv + (h - Hq - Hkv)) * static_cast<int64_t>(D) + j;
      own_in = vh;
      own_out = v_out;
    }
    if (Forward) {
      if (h < Hq + Hkv) rotate<V>(packed + pk, packed + pk + half, c + j, s + j, sign, own_out + own, own_out + own + half);
      else {
        copy_slice<V>(packed + pk, own_out + own);
        copy_slice<V>(packed + pk + half, own_out + own + half);
      }
    } else {
      if (h < Hq + Hkv) rotate<V>(own_in + own, own_in + own + half, c + j, s + j, sign, packed_out + pk, packed_out + pk + half);
      else {
        copy_slice<V>(own_in + own, packed_out + pk);
        copy_slice<V>(own_in + own + half, packed_out + pk + half);
      }
    }
  }
}

bool vec_ok(int D, std::initializer_list<const void*> ptrs) {
  if ((D / 2) % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!ls::aligned16(p)) return false;
  return true;
}

}  // namespace

// qkv bf16[T, (Hq+2Hkv)D], cos/sin f32[T, D/2] -> q bf16[T,Hq,D], k, v bf16[T,Hkv,D].
LS_API int ls_llama_rope_qkv_fwd_bf16(const uint16_t* qkv, const float* cos_t, const float* sin_t, uint16_t* q, uint16_t* k, uint16_t* v, int64_t T,
                                      int32_t Hq, int32_t Hkv, int32_t D, cudaStream_t s) {
  if (T <= 0) return 0;
  const unsigned grid = static_cast<unsigned>(T);
  const int threads = ls::llama::row_threads(static_cast<int64_t>(Hq + 2 * Hkv) * (D / 2) / 8, kThreads);
  if (vec_ok(D, {qkv, cos_t, sin_t, q, k, v}))
    rope_qkv<8, true><<<grid, threads, 0, s>>>(qkv, nullptr, nullptr, nullptr, cos_t, sin_t, nullptr, q, k, v, Hq, Hkv, D);
  else rope_qkv<1, true><<<grid, kThreads, 0, s>>>(qkv, nullptr, nullptr, nullptr, cos_t, sin_t, nullptr, q, k, v, Hq, Hkv, D);
  return static_cast<int>(cudaGetLastError());
}

// dq bf16[T,Hq,D], dk, dv bf16[T,Hkv,D], cos/sin f32[T, D/2] -> dqkv bf16[T, (Hq+2Hkv)D].
LS_API int ls_llama_rope_qkv_bwd_bf16(const uint16_t* dq, const uint16_t* dk, const uint16_t* dv, const float* cos_t, const float* sin_t,
                                      uint16_t* dqkv, int64_t T, int32_t Hq, int32_t Hkv, int32_t D, cudaStream_t s) {
  if (T <= 0) return 0;
  const unsigned grid = static_cast<unsigned>(T);
  const int threads = ls::llama::row_threads(static_cast<int64_t>(Hq + 2 * Hkv) * (D / 2) / 8, kThreads);
  if (vec_ok(D, {dq, dk, dv, cos_t, sin_t, dqkv}))
    rope_qkv<8, false><<<grid, threads, 0, s>>>(nullptr, dq, dk, dv, cos_t, sin_t, dqkv, nullptr, nullptr, nullptr, Hq, Hkv, D);
  else rope_qkv<1, false><<<grid, kThreads, 0, s>>>(nullptr, dq, dk, dv, cos_t, sin_t, dqkv, nullptr, nullptr, nullptr, Hq, Hkv, D);
  return static_cast<int>(cudaGetLastError());
}
