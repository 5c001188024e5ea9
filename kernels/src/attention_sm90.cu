// build: sm_90a
// Block attention for Hopper (sm_90a): forward and backward with the same contract and results as
// attn_fwd_kernel and attn_bwd_kernel in attention_kernels.cuh, with warpgroup MMAs (wgmma) instead
// of mma.sync. What is not about the MMAs is not here but in attention_kernels.cuh, shared with those
// kernels: the tile a CTA owns (FwdTile, BwdTile, loading through Sw128Tiles), the masks, the online
// softmax, P^T and dS^T, and the epilogues. The backward first, then the forward (further down). Measured cause of the change
// (kernels/dev/attention/NOTES.md): the mma.sync backward is shared-memory bound (ldmatrix feeds every
// B fragment to only two MMAs when a warp owns 16 keys); wgmma reads its shared operands once per
// warpgroup (64 rows) and takes P^T and dS^T straight from registers.
//
// CTA = (128 keys, kv head), 2 warpgroups x 64 keys, 256 threads; query tiles of BM = 64 rows, double
// buffered. Per query tile, warpgroup wg (keys n0 + 64 wg ..):
//   S^T  = K_wg Q^T, dP^T = V_wg dO^T      wgmma m64n64k16, both operands from shared memory (K-major)
//   P^T, dS^T in registers (accumulator layout = the A-from-registers layout after packing to bf16)
//   dV += P^T dO, dK += dS^T Q              wgmma m64nDk16, A from registers, B = the [query][d] tile
//                                           read transposed (MN-major)
//   dS^T -> shared; barrier; dQ[:, 64 wg ..] = dS K   wgmma m64n(D/2)k16, both operands MN-major,
//   added to dq with f32 vector reductions.
// dK, dV stay in registers over every query tile and GQA head and are added once at the end (this CTA
// is their only writer), exactly as in the mma.sync kernel.
//
// Shared tiles use the 128-byte swizzle that wgmma descriptors name: a [rows][D] bf16 tile is stored as
// D/64 column blocks of [rows][64] (128-byte rows); 16-byte chunk c of row r sits at
// block * rows * 128 + r * 128 + ((c ^ (r & 7)) << 4). Tiles start 1024-byte aligned, so the hardware's
// swizzle (address bits 4-6 XOR bits 7-9) is this one, and one tile serves both as K-major ([row][k])
// and MN-major ([k][n]) operand: only the descriptor differs.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attention_kernels.cuh"
#include "attention_sm90.cuh"

namespace ls::attn::sm90 {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
// ---------------------------------------------------------------------------------------------------
// wgmma wrappers (PTX ISA 9.7.15). Accumulator layout of m64nNk16 f32, per warp w of the warpgroup
// (rows 16 w ..): d[4 j + {0,1}] = (row g, cols 8 j + 2 t, +1), d[4 j + {2,3}] = (row g + 8, same cols);
// the A-from-registers fragment is mma.sync's m16n8k16 A fragment of the warp's 16 rows.

// Shared-memory matrix descriptor, 128-byte swizzle. K-major: sbo = 1024 (8 rows of 128 bytes), lbo
// unused. MN-major: lbo = bytes between 64-element column blocks along M/N, sbo = 1024 (8 k-rows).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to wgmma.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of r across the wgmma asm statements.
__device__ __forceinline__ void pin(float& r) { asm volatile("" : "+f"(r)::"memory"); }

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
      " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}

template <int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
      " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
}

template <int kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
      " wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
}

template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
      " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB));
}
#endif  // wgmma wrappers

// ---------------------------------------------------------------------------------------------------

template <int D>
struct Sm90BwdShape {
  static constexpr int kBM = 64;   // queries per tile
  static constexpr int kBN = 128;  // keys per CTA (2 warpgroups x 64)
  static constexpr int kThreads = 256;
  static constexpr int kKVBytes = kBN * D * 2;
  static constexpr int kQBytes = kBM * D * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKVBytes;
  static constexpr int kOffQ = kOffV + kKVBytes;          // 2 buffers
  static constexpr int kOffdO = kOffQ + 2 * kQBytes;      // 2 buffers
  static constexpr int kOffdS = kOffdO + 2 * kQBytes;     // dS^T [kBN keys][kBM queries] bf16
  static constexpr int kOffLse = kOffdS + kBN * kBM * 2;  // 2 x kBM f32
  static constexpr int kOffDelta = kOffLse + 2 * kBM * 4;  // 2 x kBM f32
  static constexpr int kSmemBytes = kOffDelta + 2 * kBM * 4 + 1024;  // + alignment slack
  static_assert(D == 64 || D == 128, "head dim");
  static_assert(kKVBytes % 1024 == 0 && kQBytes % 1024 == 0, "tiles stay 1024-byte aligned");
};

// Rows [row0, row0 + ROWS) of a [*, D] bf16 matrix (row stride `stride` elements; rows >= nrows
// zero-filled) -> shared tile at `dst` in the 128-byte-swizzle layout above, cp.async by all threads.
template <int ROWS, int D, int NTHREADS>
__device__ __forceinline__ void load_tile_sw128(uint32_t dst, const uint16_t* src, int64_t stride, int row0, int nrows, int tid) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerPass = NTHREADS / kChunks;
  static_assert(kRowsPerPass % 8 == 0 && ROWS % kRowsPerPass == 0, "whole 8-row groups per pass");
  const int r = tid / kChunks;
  const int c = tid % kChunks;
  const uint32_t d = dst + (c >> 3) * (ROWS * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
#pragma unroll
  for (int i = 0; i < ROWS / kRowsPerPass; ++i) {
    const int row = row0 + r + i * kRowsPerPass;
    const bool valid = row < nrows;
    cp_async_16(d + i * kRowsPerPass * 128, src + (valid ? static_cast<int64_t>(row) * stride : 0) + c * 8, valid);
  }
}

// Loader of the shared pieces (attention_kernels.cuh: FwdTile, BwdTile) for this file's tiles.
struct Sw128Tiles {
  template <int ROWS, int D, int NTHREADS>
  static __device__ __forceinline__ void tile(uint32_t dst, const uint16_t* src, int64_t stride, int row0, int nrows, int tid) {
    load_tile_sw128<ROWS, D, NTHREADS>(dst, src, stride, row0, nrows, tid);
  }
};

template <int D>
__global__ void __launch_bounds__(256, 1) attn_bwd_sm90_kernel(const BwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = Sm90BwdShape<D>;
  constexpr int BM = Shape::kBM;
  constexpr int BN = Shape::kBN;
  constexpr int kThreads = Shape::kThreads;
  constexpr int KSD = D / 16;  // k-steps over d (S^T, dP^T)
  constexpr int KQ = BM / 16;  // k-steps over queries (dV, dK)
  constexpr int KK = BN / 16;  // k-steps over keys (dQ)
  constexpr int NACC = D / 2;  // dK or dV accumulators per thread (m64 x D over 128 threads)
  constexpr uint32_t kSbo = 1024;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t s0 = (smem_addr(smem_raw) + 1023u) & ~1023u;
  uint8_t* smem = smem_raw + (s0 - smem_addr(smem_raw));
  const uint32_t sK = s0 + Shape::kOffK;
  const uint32_t sV = s0 + Shape::kOffV;
  const uint32_t sQ = s0 + Shape::kOffQ;
  const uint32_t sdO = s0 + Shape::kOffdO;
  const uint32_t sdS = s0 + Shape::kOffdS;
  const float* lse_s = reinterpret_cast<const float*>(smem + Shape::kOffLse);
  const float* delta_s = reinterpret_cast<const float*>(smem + Shape::kOffDelta);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp >> 2;  // warpgroup: keys 64 wg .. of the tile; dQ columns (D/2) wg ..
  const int wl = warp & 3;   // warp in the warpgroup: accumulator rows 16 wl ..
  const int g = lane >> 2;
  const int t = lane & 3;

  const BwdTile<D, BM, BN> tile(p);  // attention_kernels.cuh, shared with the mma.sync kernel
  const int kvh = tile.kvh;
  const int n0 = tile.n0;
  if (tile.iters == 0) return;

  load_tile_sw128<BN, D, kThreads>(sK, p.k + static_cast<int64_t>(kvh) * D, tile.kv_stride(p), n0, p.Tk, tid);
  load_tile_sw128<BN, D, kThreads>(sV, p.v + static_cast<int64_t>(kvh) * D, tile.kv_stride(p), n0, p.Tk, tid);
  tile.template load_query_tile<Sw128Tiles, Shape, kThreads>(p, 0, 0, s0, sQ, sdO, tid);
  cp_async_commit();

  float dk_acc[NACC];
  float dv_acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) dk_acc[i] = dv_acc[i] = 0.f;
  const int key_lo = n0 + warp * 16 + g;  // this thread's keys: key_lo and key_lo + 8 (= 64 wg + 16 wl + g)
  // This warpgroup's 64 keys inside the K and V tiles (K-major A operands), column block 0.
  const uint32_t wg_rows = static_cast<uint32_t>(wg * 64 * 128);
  // dS^T stores: rows 64 wg + 16 wl + g (+ 8) have (row & 7) = g.
  const uint32_t ds_row = static_cast<uint32_t>((warp * 16 + g) * 128);

  for (int it = 0; it < tile.iters; ++it) {
    const int buf = it & 1;
    const int h = tile.head(p, it);
    const int m0 = tile.m0(it);
    if (it + 1 < tile.iters) tile.template load_query_tile<Sw128Tiles, Shape, kThreads>(p, it + 1, buf ^ 1, s0, sQ, sdO, tid);
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();  // this tile's buffers are complete; the previous dQ step is done with sdS

    const uint32_t sQb = sQ + buf * Shape::kQBytes;
    const uint32_t sdOb = sdO + buf * Shape::kQBytes;
    const float* lse_b = lse_s + buf * BM;
    const float* delta_b = delta_s + buf * BM;

    // S^T = K_wg Q^T and dP^T = V_wg dO^T (64 keys x 64 queries each, K = d).
    float st[32];
    float dpt[32];
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < KSD; ++ks) {
      const uint32_t kv_off = (ks >> 2) * (BN * 128) + wg_rows + (ks & 3) * 32;
      const uint32_t q_off = (ks >> 2) * (BM * 128) + (ks & 3) * 32;
      wgmma_m64n64k16_ss<0, 0>(st, desc_sw128(sK + kv_off, 16, kSbo), desc_sw128(sQb + q_off, 16, kSbo), ks > 0);
      wgmma_m64n64k16_ss<0, 0>(dpt, desc_sw128(sV + kv_off, 16, kSbo), desc_sw128(sdOb + q_off, 16, kSbo), ks > 0);
    }
    wg_commit();
    wg_wait<0>();

    // P^T = exp(S^T scale - lse), 0 where masked; dS^T = P^T (dP^T - Delta) (attention_kernels.cuh; the
    // accumulators of n8 tile nt are elements 4 nt .. 4 nt + 3, BM / 8 = 8 tiles of queries).
    const auto st_at = [&](int nt, int e) -> float& { return st[4 * nt + e]; };
    probs_T<BM / 8>(st_at, lse_b, p.scale_log2, t);
    const bool need_mask = m0 + BM > p.Tq || n0 + BN > p.Tk || (p.causal && n0 + BN - 1 > m0 + p.offset);
    if (need_mask) mask_keys_T<BM / 8, BM>(st_at, p, key_lo, m0, t);
    dS_T<BM / 8>(st_at, [&](int nt, int e) -> float& { return dpt[4 * nt + e]; }, delta_b, t);

    // dV += P^T dO, dK += dS^T Q: A from registers (k-step kq = queries 16 kq ..), B = the [query][d]
    // tile as MN-major (k = query rows, n = d across D/64 column blocks kQBytes/(D/64) apart).
    uint32_t ap[KQ][4];
    uint32_t as[KQ][4];
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq) {
      ap[kq][0] = pack_bf16(st[8 * kq + 0], st[8 * kq + 1]);
      ap[kq][1] = pack_bf16(st[8 * kq + 2], st[8 * kq + 3]);
      ap[kq][2] = pack_bf16(st[8 * kq + 4], st[8 * kq + 5]);
      ap[kq][3] = pack_bf16(st[8 * kq + 6], st[8 * kq + 7]);
      as[kq][0] = pack_bf16(dpt[8 * kq + 0], dpt[8 * kq + 1]);
      as[kq][1] = pack_bf16(dpt[8 * kq + 2], dpt[8 * kq + 3]);
      as[kq][2] = pack_bf16(dpt[8 * kq + 4], dpt[8 * kq + 5]);
      as[kq][3] = pack_bf16(dpt[8 * kq + 6], dpt[8 * kq + 7]);
    }
    wg_fence();
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq) {
      const uint32_t off = kq * 16 * 128;
      if constexpr (D == 128) {
        wgmma_m64n128k16_rs<1>(dv_acc, ap[kq], desc_sw128(sdOb + off, BM * 128, kSbo), 1);
        wgmma_m64n128k16_rs<1>(dk_acc, as[kq], desc_sw128(sQb + off, BM * 128, kSbo), 1);
      } else {
        wgmma_m64n64k16_rs<1>(dv_acc, ap[kq], desc_sw128(sdOb + off, BM * 128, kSbo), 1);
        wgmma_m64n64k16_rs<1>(dk_acc, as[kq], desc_sw128(sQb + off, BM * 128, kSbo), 1);
      }
    }
    wg_commit();

    // dS^T -> shared, [key][query] (one 128-byte row per key): query pair (8 j + 2 t, +1) of n8 tile j.
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j = 2 * kq + half;
        const uint32_t off = Shape::kOffdS + ds_row + ((j ^ g) << 4) + 4 * t;
        *reinterpret_cast<uint32_t*>(smem + off) = as[kq][2 * half];             // key row g
        *reinterpret_cast<uint32_t*>(smem + off + 8 * 128) = as[kq][2 * half + 1];  // key row g + 8
      }
    }
    fence_proxy_async();
    wg_wait<0>();
    __syncthreads();  // dS^T complete; every warpgroup is done with this Q/dO buffer

    // dQ[m0 ..] += scale dS K. A = dS (m = query, k = key) from the [key][query] tile and B = K
    // (k = key, n = d) from the [key][d] tile, both MN-major. D = 128: warpgroup wg computes columns
    // 64 wg .. over all 128 keys (B = column block wg). D = 64: it computes all 64 columns over its own
    // 64 keys, and both warpgroups add their part to dq.
    {
      constexpr int NDQ = 32;  // m64 x n64 over 128 threads
      constexpr int KSTEPS = D == 128 ? KK : KK / 2;
      const uint32_t a_base = sdS + (D == 128 ? 0u : wg_rows);
      const uint32_t b_base = sK + (D == 128 ? static_cast<uint32_t>(wg * BN * 128) : wg_rows);
      float dq_acc[NDQ];
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
        wgmma_m64n64k16_ss<1, 1>(dq_acc, desc_sw128(a_base + kk * 16 * 128, BM * 128, kSbo),
                                 desc_sw128(b_base + kk * 16 * 128, BN * 128, kSbo), kk > 0);
      }
      wg_commit();
      wg_wait<0>();
      const int col0 = D == 128 ? wg * 64 : 0;
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int row = m0 + wl * 16 + g + hr * 8;
        if (row < p.Tq) {
          float* dst = p.dq + (static_cast<int64_t>(row) * p.Hq + h) * D + col0 + 2 * t;
#pragma unroll
          for (int j = 0; j < 8; ++j) red_add_f32x2(dst + j * 8, dq_acc[4 * j + 2 * hr] * p.scale, dq_acc[4 * j + 2 * hr + 1] * p.scale);
        }
      }
    }
  }

  // dk += scale dK, dv += dV for this thread's keys (this CTA is the only writer of these rows).
  add_dk_dv<D>(p, kvh, key_lo, t, [&](int j, int e) -> float& { return dk_acc[4 * j + e]; },
               [&](int j, int e) -> float& { return dv_acc[4 * j + e]; });
#else
  __trap();  // built for another architecture: the host dispatches here only on sm_90 (see bwd_sm90_usable)
#endif
}

// ---------------------------------------------------------------------------------------------------
// Forward: the contract and results of attn_fwd_kernel (attention_kernels.cuh) with wgmma.
//
// CTA = (128 query rows, head), 2 warpgroups x 64 rows; keys in tiles of 128, K and V double buffered
// (tile j + 1 loads while tile j is multiplied), last tile first. Per tile and warpgroup:
//   S = Q_wg K^T          wgmma m64n128k16, Q and K from shared memory (K-major)
//   mask, online softmax in registers (rows 16 wl + g and + 8 per thread; a quad shares a row)
//   O = O alpha + P V     wgmma m64nDk16, P from registers, V = the [key][d] tile read MN-major

template <int D>
struct Sm90FwdShape {
  static constexpr int kBM = 128;
  static constexpr int kBN = 128;
  static constexpr int kThreads = 256;
  static constexpr int kTileBytes = kBN * D * 2;
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kBM * D * 2;          // 2 buffers
  static constexpr int kOffV = kOffK + 2 * kTileBytes;  // 2 buffers
  static constexpr int kSmemBytes = kOffV + 2 * kTileBytes + 1024;  // + alignment slack
  static_assert(D == 64 || D == 128, "head dim");
};

template <int D, typename OutT>
__global__ void __launch_bounds__(256, 1) attn_fwd_sm90_kernel(const FwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = Sm90FwdShape<D>;
  constexpr int BM = Shape::kBM;
  constexpr int BN = Shape::kBN;
  constexpr int kThreads = Shape::kThreads;
  constexpr int NT = BN / 8;     // n8 tiles of S per thread row pair
  constexpr int NACC = D / 2;    // O accumulators (m64 x D over 128 threads)
  constexpr int KS = D / 16;     // k-steps of Q K^T
  constexpr int KP = BN / 16;    // k-steps of P V
  constexpr uint32_t kSbo = 1024;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t s0 = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = s0 + Shape::kOffQ;
  const uint32_t sK = s0 + Shape::kOffK;
  const uint32_t sV = s0 + Shape::kOffV;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp >> 2;
  const int g = lane >> 2;
  const int t = lane & 3;

  const FwdTile<D, BM, BN> tile(p);
  const int row_lo = tile.m0 + warp * 16 + g;  // this thread's rows: row_lo and row_lo + 8 (64 wg + 16 wl + g)

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of the raw scores
  float row_sum[2] = {0.f, 0.f};              // this thread's share of the running sum

  tile.template load_first<Sw128Tiles, kThreads>(p, sQ, sK, sV, tid);
  const uint32_t q_rows = static_cast<uint32_t>(wg * 64 * 128);

  for (int it = 0; it < tile.n_blocks; ++it) {
    const int n0 = (tile.n_blocks - 1 - it) * BN;
    const uint32_t buf = (it & 1) * Shape::kTileBytes;
    tile.template prefetch<Sw128Tiles, kThreads>(p, it, n0, sK, sV, Shape::kTileBytes, tid);
    cp_async_commit();
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();

    float s[4 * NT];
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t a = sQ + (ks >> 2) * (BM * 128) + q_rows + (ks & 3) * 32;
      const uint32_t b = sK + buf + (ks >> 2) * (BN * 128) + (ks & 3) * 32;
      wgmma_m64n128k16_ss<0, 0>(s, desc_sw128(a, 16, kSbo), desc_sw128(b, 16, kSbo), ks > 0);
    }
    wg_commit();
    wg_wait<0>();

    // Mask and online softmax (attention_kernels.cuh) of rows row_lo + 8 hr: elements 4 nt + 2 hr (+1).
    const bool need_mask = n0 + BN > p.Tk || (p.causal && n0 + BN - 1 > tile.m0 + p.offset);
    if (need_mask) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) mask_row<NT>([&](int nt, int c) -> float& { return s[4 * nt + 2 * hr + c]; }, p, row_lo + hr * 8, n0, t);
    }

    uint32_t pk[NT][2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      online_softmax_row<NT, D / 8>([&](int nt, int c) -> float& { return s[4 * nt + 2 * hr + c]; },
                                    [&](int nt) -> uint32_t& { return pk[nt][hr]; },
                                    [&](int j, int c) -> float& { return acc[4 * j + 2 * hr + c]; }, row_max[hr], row_sum[hr], p.scale_log2);
    }

    wg_fence();
#pragma unroll
    for (int kp = 0; kp < KP; ++kp) {
      const uint32_t a[4] = {pk[2 * kp][0], pk[2 * kp][1], pk[2 * kp + 1][0], pk[2 * kp + 1][1]};
      const uint64_t b = desc_sw128(sV + buf + kp * 16 * 128, BN * 128, kSbo);
      if constexpr (D == 128) wgmma_m64n128k16_rs<1>(acc, a, b, 1);
      else wgmma_m64n64k16_rs<1>(acc, a, b, 1);
    }
    wg_commit();
    wg_wait<0>();
    __syncthreads();  // both warpgroups are done with this buffer before the next iteration refills it
  }

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    store_row<D, OutT>(p, tile.h, row_lo + hr * 8, t, [&](int j, int c) -> float& { return acc[4 * j + 2 * hr + c]; }, row_max[hr],
                       row_sum[hr]);
  }
#else
  __trap();  // built for another architecture: the host dispatches here only on sm_90
#endif
}

}  // namespace ls::attn::sm90

// ---------------------------------------------------------------------------------------------------
// Host

namespace ls::attn::sm90 {

template <int D>
cudaError_t launch_bwd_d(BwdParams p, cudaStream_t s) {
  using Shape = Sm90BwdShape<D>;
  p.m_blocks = (p.Tq + Shape::kBM - 1) / Shape::kBM;
  return launch_bwd_passes<D>(attn_bwd_sm90_kernel<D>, p, Shape::kBN, Shape::kThreads, Shape::kSmemBytes, s);
}

cudaError_t launch_bwd(const BwdParams& p, int D, cudaStream_t s) {
  return D == 128 ? launch_bwd_d<128>(p, s) : launch_bwd_d<64>(p, s);
}

template <int D, typename OutT>
cudaError_t launch_fwd_d(FwdParams p, cudaStream_t s) {
  using Shape = Sm90FwdShape<D>;
  auto kernel = attn_fwd_sm90_kernel<D, OutT>;
  p.m_blocks = (p.Tq + Shape::kBM - 1) / Shape::kBM;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Shape::kSmemBytes);
  if (e != cudaSuccess) return e;
  const int64_t blocks = static_cast<int64_t>(p.m_blocks) * p.Hq;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, Shape::kSmemBytes, s>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_fwd_bf16(const FwdParams& p, int D, cudaStream_t s) {
  return D == 128 ? launch_fwd_d<128, uint16_t>(p, s) : launch_fwd_d<64, uint16_t>(p, s);
}

cudaError_t launch_fwd_f32(const FwdParams& p, int D, cudaStream_t s) {
  return D == 128 ? launch_fwd_d<128, float>(p, s) : launch_fwd_d<64, float>(p, s);
}

}  // namespace ls::attn::sm90
