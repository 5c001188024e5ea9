// Device code of block attention (flash attention, FlashAttention-2 structure, our own implementation):
// tensor-core tiles through mma.sync m16n8k16 bf16 -> f32, operands staged in shared memory by cp.async
// and read into fragments with ldmatrix. Included by attention.cu (the shipped ABI), by the lab
// harness kernels/dev/attention/check.cu, which instantiates other tile shapes for comparison, and by
// attention_sm90.cu: the per-tile pieces both kernel sets run (the tile a CTA owns and its loads, masks,
// the online softmax, the epilogues; "written once" sections below) are templated on the loader and on
// accessors of the accumulators, so the wgmma kernels use them as they are.
//
// Layouts (attention.cu, top): q [Tq, Hq, D], k/v [Tk, Hkv, D], o [Tq, Hq, D], lse/Delta [Hq, Tq].
//
// Fragment layouts used throughout (PTX ISA, mma.m16n8k16 with .bf16; g = lane / 4, t = lane % 4):
//   A 16x16 (row major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8  (k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C 16x8  (f32):        c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// So the C fragments of two adjacent n-tiles are, packed to bf16 pairs, the A fragment of one k-step:
// softmax probabilities go from the S accumulators straight into the P@V product without shared memory.
//
// Shared-memory tiles are [rows][COLS] bf16 with 16-byte chunks XOR-swizzled by (row & 7): the 8 rows an
// ldmatrix 8x8 matrix reads (same logical chunk, consecutive rows) land in 8 different bank groups, and a
// warp's cp.async stores of one row are a permutation of that row's chunks. Needs COLS >= 64.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ls::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------------
// PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; !valid writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}

// 4 bytes global -> shared; !valid writes zeros.
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ldmatrix at ((base ^ x) + off): the XOR sits inside the asm so that the compiler cannot hoist one
// register per (x, off) out of the loops (it did, and ran out of registers). See swz_step.
__device__ __forceinline__ void ldsm_x4_at(uint32_t (&r)[4], uint32_t base, uint32_t x, uint32_t off) {
  asm volatile(
      "{\n .reg .b32 a;\n xor.b32 a, %4, %5;\n add.u32 a, a, %6;\n"
      " ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [a];\n}\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(base), "r"(x), "r"(off));
}
__device__ __forceinline__ void ldsm_x4_trans_at(uint32_t (&r)[4], uint32_t base, uint32_t x, uint32_t off) {
  asm volatile(
      "{\n .reg .b32 a;\n xor.b32 a, %4, %5;\n add.u32 a, a, %6;\n"
      " ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [a];\n}\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(base), "r"(x), "r"(off));
}

// c += a * b for one 16x8x16 tile.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x (MUFU.EX2, flushes denormal results to 0); 2^-inf = 0.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two f32 -> one register of two bf16 (round to nearest even); lo in the low half (smaller column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// *p += (a, b) atomically in L2 (one 8-byte vector reduction on sm_90, two scalar ones before).
__device__ __forceinline__ void red_add_f32x2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][COLS] bf16 tile.
template <int COLS>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  static_assert(COLS >= 64 && COLS % 64 == 0, "the XOR swizzle needs at least 8 chunks per row");
  return static_cast<uint32_t>(row * (COLS * 2) + ((chunk ^ (row & 7)) << 4));
}

// ldmatrix addressing without per-step registers. Every x4 load below reads, per lane, logical chunk
// 2*step + c of row r0 + 16*i (c in {0, 1} and r0 fixed per lane, i and step compile-time). Rows are
// COLS*2 >= 128 bytes, so the swizzled offset is
//   swz(r0 + 16 i, 2 step + c) = r0*RB + 16 i*RB + ((2 step ^ c ^ (r0 & 7)) << 4)
//                              = (lane_off ^ (32 step)) + 16 i*RB,  lane_off = swz(r0, c),
// because 2 step + c = 2 step ^ c and (16 i) & 7 = 0: one XOR with an immediate per load, the row
// offset folds into the instruction's immediate.
__device__ __forceinline__ uint32_t swz_step(uint32_t lane_off, int step) {
  return lane_off ^ static_cast<uint32_t>(step * 32);
}

// Rows [row0, row0 + ROWS) of a [*, COLS]-wide bf16 matrix (row stride `stride` elements, rows >= nrows
// zero-filled) -> swizzled shared tile at `dst`, cp.async by all NTHREADS threads (no commit).
template <int ROWS, int COLS, int NTHREADS>
__device__ __forceinline__ void load_tile(uint32_t dst, const uint16_t* src, int64_t stride, int row0, int nrows, int tid) {
  constexpr int kChunksPerRow = COLS / 8;
  constexpr int kRowsPerPass = NTHREADS / kChunksPerRow;
  static_assert(NTHREADS % kChunksPerRow == 0 && kRowsPerPass % 8 == 0 && ROWS % kRowsPerPass == 0,
                "each pass copies whole rows, 8-row aligned, so the swizzle is the same in every pass");
  const int r = tid / kChunksPerRow;
  const int c = tid % kChunksPerRow;
  const uint32_t d = dst + swz<COLS>(r, c);
#pragma unroll
  for (int i = 0; i < ROWS / kRowsPerPass; ++i) {
    const int row = row0 + r + i * kRowsPerPass;
    const bool valid = row < nrows;
    cp_async_16(d + i * kRowsPerPass * COLS * 2, src + (valid ? static_cast<int64_t>(row) * stride : 0) + c * 8, valid);
  }
}

// ---------------------------------------------------------------------------------------------------
// Forward
//
// A CTA owns (query tile of BM rows, query head). NWARPS warps each own MT = BM / (16 NWARPS) m16 tiles
// of rows. Keys stream through shared memory in BN-row K and V tiles, double buffered: tile j + 1 is in
// flight while tile j is multiplied. Per tile: S = Q K^T (f32), mask (tails, causal; only where the tile
// needs it), online softmax in registers (exp2 with scale*log2e folded into one FFMA), O = O*alpha + P V.
// Key tiles are visited last to first so that the masked ones come first; query tiles are handed out
// from the last (longest under the causal mask) to the first, heads fastest, for load balance.

struct FwdParams {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  void* o;  // uint16_t (bf16) or float, per the kernel's OutT
  float* lse;
  int Tq, Tk, Hq, Hkv;
  int group;     // Hq / Hkv
  int causal;    // 0 or 1
  int offset;    // Tk - Tq: key j visible to query i iff j <= i + offset
  int m_blocks;  // ceil(Tq / BM)
  float scale_log2;  // scale * log2(e), > 0
};

template <int D, int BM, int BN, int NWARPS>
struct FwdShape {
  static constexpr int kThreads = NWARPS * 32;
  static constexpr int kMT = BM / (16 * NWARPS);  // m16 tiles per warp
  static constexpr int kSmemBytes = (BM + 4 * BN) * D * 2 + 256;  // Q + 2 x (K, V), + alignment slack
  static_assert(kMT >= 1 && kMT * 16 * NWARPS == BM, "BM must be a multiple of 16 * NWARPS");
  static_assert(BN % 16 == 0 && D % 16 == 0, "tiles are whole mma k-steps");
};

template <typename OutT>
__device__ __forceinline__ void store_pair(OutT* p, float a, float b);
template <>
__device__ __forceinline__ void store_pair<uint16_t>(uint16_t* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16(a, b);
}
template <>
__device__ __forceinline__ void store_pair<float>(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

// ---------------------------------------------------------------------------------------------------
// Forward pieces written once for both kernel sets (attn_fwd_kernel below and attn_fwd_sm90_kernel in
// attention_sm90.cu): the tile a CTA owns and its loads (templated on the kernel's shared-memory layout,
// the Loader), the mask, the online-softmax update and the epilogue of one query row. A thread holds two
// columns (2t, 2t + 1) of every n8 tile of its rows of S and O, in rows g and g + 8 of each 16-row group
// (the same in the mma.sync C fragment and the wgmma accumulator); the accessors s(nt, c) and o(dt, c),
// c in {0, 1}, hide how each kernel stores them.

// Loader for the XOR-swizzled tiles of this file: Loader::tile<ROWS, COLS, NTHREADS>(dst, src, ...).
struct SwizzledTiles {
  template <int ROWS, int COLS, int NTHREADS>
  static __device__ __forceinline__ void tile(uint32_t dst, const uint16_t* src, int64_t stride, int row0, int nrows, int tid) {
    load_tile<ROWS, COLS, NTHREADS>(dst, src, stride, row0, nrows, tid);
  }
};

// The (query tile of BM rows, head) of this CTA, handed out from the last query tile (longest under the
// causal mask) to the first, heads fastest, for load balance; and the key tiles [0, n_blocks) of BN keys
// some row of it can see.
template <int D, int BM, int BN>
struct FwdTile {
  int h, m0, kvh, n_blocks;
  int64_t q_stride, kv_stride;
  const uint16_t* qg;
  const uint16_t* kg;
  const uint16_t* vg;

  __device__ __forceinline__ explicit FwdTile(const FwdParams& p) {
    h = static_cast<int>(blockIdx.x % p.Hq);
    m0 = (p.m_blocks - 1 - static_cast<int>(blockIdx.x / p.Hq)) * BM;
    kvh = h / p.group;
    const int n_end = p.causal ? min(p.Tk, m0 + BM + p.offset) : p.Tk;  // keys [0, n_end) can be visible
    n_blocks = n_end > 0 ? (n_end + BN - 1) / BN : 0;
    q_stride = static_cast<int64_t>(p.Hq) * D;
    kv_stride = static_cast<int64_t>(p.Hkv) * D;
    qg = p.q + static_cast<int64_t>(h) * D;
    kg = p.k + static_cast<int64_t>(kvh) * D;
    vg = p.v + static_cast<int64_t>(kvh) * D;
  }

  // Q and the last key tile (visited first, so that the masked tiles come first), as one commit group.
  template <typename Loader, int NTHREADS>
  __device__ __forceinline__ void load_first(const FwdParams& p, uint32_t sQ, uint32_t sK, uint32_t sV, int tid) const {
    if (n_blocks > 0) {
      Loader::template tile<BM, D, NTHREADS>(sQ, qg, q_stride, m0, p.Tq, tid);
      const int n_last = (n_blocks - 1) * BN;
      Loader::template tile<BN, D, NTHREADS>(sK, kg, kv_stride, n_last, p.Tk, tid);
      Loader::template tile<BN, D, NTHREADS>(sV, vg, kv_stride, n_last, p.Tk, tid);
      cp_async_commit();
    }
  }

  // In iteration `it` (key tile at n0): the next, earlier key tile into the other of the two buffers of
  // `tile_bytes` at sK and sV, when there is one (no commit).
  template <typename Loader, int NTHREADS>
  __device__ __forceinline__ void prefetch(const FwdParams& p, int it, int n0, uint32_t sK, uint32_t sV, uint32_t tile_bytes, int tid) const {
    if (it + 1 < n_blocks) {
      const uint32_t nbuf = ((it + 1) & 1) * tile_bytes;
      Loader::template tile<BN, D, NTHREADS>(sK + nbuf, kg, kv_stride, n0 - BN, p.Tk, tid);
      Loader::template tile<BN, D, NTHREADS>(sV + nbuf, vg, kv_stride, n0 - BN, p.Tk, tid);
    }
  }

  // Whether the key tile at n0 holds a key past Tk or, causal, one after some row's diagonal (uniform per tile).
  __device__ __forceinline__ static bool needs_mask(const FwdParams& p, int n0, int m0) {
    return n0 + BN > p.Tk || (p.causal && n0 + BN - 1 > m0 + p.offset);
  }
};

// Row `row` sees keys [0, end); in the key tile at n0 its columns >= end - n0 get -inf.
template <int NT, typename S>
__device__ __forceinline__ void mask_row(S s, const FwdParams& p, int row, int n0, int t) {
  const int end = (p.causal ? min(p.Tk, row + p.offset + 1) : p.Tk) - n0;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if (nt * 8 + 2 * t >= end) s(nt, 0) = -INFINITY;
    if (nt * 8 + 2 * t + 1 >= end) s(nt, 1) = -INFINITY;
  }
}

// Online softmax of one row over a key tile, in registers; the 4 threads of a quad share the row. The max
// is of the raw scores, the exponent exp2 with scale*log2e folded into one FFMA. P is packed to bf16 at
// once (pk(nt) = keys 2t, 2t + 1 of n-tile nt: half the registers); O and the running sum are rescaled
// by alpha = exp(old max - new max).
template <int NT, int DT, typename S, typename PK, typename O>
__device__ __forceinline__ void online_softmax_row(S s, PK pk, O o, float& row_max, float& row_sum, float scale_log2) {
  float mx = row_max;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s(nt, 0), s(nt, 1)));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  // A row with nothing visible yet keeps max -inf; shifting by 0 then gives p = 2^-inf = 0.
  const float shift = mx == -INFINITY ? 0.f : mx * scale_log2;
  const float alpha = row_max == -INFINITY ? 0.f : ex2((row_max - mx) * scale_log2);
  row_max = mx;
  float sum = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float p0 = ex2(fmaf(s(nt, 0), scale_log2, -shift));
    const float p1 = ex2(fmaf(s(nt, 1), scale_log2, -shift));
    pk(nt) = pack_bf16(p0, p1);
    sum += p0 + p1;
  }
  row_sum = row_sum * alpha + sum;
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    o(dt, 0) *= alpha;
    o(dt, 1) *= alpha;
  }
}

// Epilogue of one row: o = acc / l (0 where l = 0), lse = max*scale + ln(l) (-inf where l = 0); l is
// the quad's sum of the row's shares.
template <int D, typename OutT, typename O>
__device__ __forceinline__ void store_row(const FwdParams& p, int h, int row, int t, O o, float row_max, float row_sum) {
  float l = row_sum;
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (row < p.Tq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    OutT* orow = static_cast<OutT*>(p.o) + (static_cast<int64_t>(row) * p.Hq + h) * D + 2 * t;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) store_pair<OutT>(orow + dt * 8, o(dt, 0) * inv, o(dt, 1) * inv);
    if (t == 0) p.lse[static_cast<int64_t>(h) * p.Tq + row] = l > 0.f ? (row_max * p.scale_log2 + __log2f(l)) * kLn2 : -INFINITY;
  }
}

template <int D, int BM, int BN, int NWARPS, typename OutT>
__global__ void __launch_bounds__(NWARPS * 32) attn_fwd_kernel(const FwdParams p) {
  using Shape = FwdShape<D, BM, BN, NWARPS>;
  constexpr int kThreads = Shape::kThreads;
  constexpr int MT = Shape::kMT;
  constexpr int NT = BN / 8;   // n8 tiles of S
  constexpr int DT = D / 8;    // n8 tiles of O
  constexpr int KS = D / 16;   // k-steps of Q K^T
  constexpr int KP = BN / 16;  // k-steps of P V
  constexpr uint32_t kTileBytes = BN * D * 2;

  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sQ = (smem_addr(smem) + 255u) & ~255u;  // 256-aligned: swz_step may XOR absolute addresses
  const uint32_t sK = sQ + BM * D * 2;  // two K buffers
  const uint32_t sV = sK + 2 * kTileBytes;  // two V buffers

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;

  const FwdTile<D, BM, BN> tile(p);
  const int row_base = tile.m0 + warp * MT * 16;  // first query row of this warp

  // Per-lane ldmatrix offsets (swz_step): Q as A, K as B (n = key), V as B (k = key, transposed).
  const uint32_t q_off = swz<D>(warp * MT * 16 + (lane & 15), lane >> 4);
  const uint32_t k_off = swz<D>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  const uint32_t v_off = swz<D>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);

  float acc[MT][DT][4];
  float row_max[MT][2];  // running max of the raw scores (-inf: nothing seen yet)
  float row_sum[MT][2];  // this thread's share of the running sum (the quad's shares add up)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) acc[mt][dt][0] = acc[mt][dt][1] = acc[mt][dt][2] = acc[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  tile.template load_first<SwizzledTiles, kThreads>(p, sQ, sK, sV, tid);

  for (int it = 0; it < tile.n_blocks; ++it) {
    const int n0 = (tile.n_blocks - 1 - it) * BN;
    const uint32_t buf = (it & 1) * kTileBytes;
    tile.template prefetch<SwizzledTiles, kThreads>(p, it, n0, sK, sV, kTileBytes, tid);
    cp_async_commit();
    cp_async_wait<1>();  // everything but the prefetch just issued has landed
    __syncthreads();

    // S = Q K^T for this warp's MT x 16 rows and BN keys.
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ldsm_x4_at(a[mt], sQ + q_off, ks * 32, mt * 16 * D * 2);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t b[4];  // keys np*16 .. +15: b[0..1] n-tile 2np, b[2..3] n-tile 2np+1
        ldsm_x4_at(b, sK + buf + k_off, ks * 32, np * 16 * D * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * np], a[mt], b[0], b[1]);
          mma_bf16(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }

    // Mask keys past Tk and, under the causal mask, keys after row + offset: rows g and g + 8 of each
    // m-tile (hr = 0, 1), held in elements 2 hr, 2 hr + 1 of each C fragment.
    const bool need_mask = n0 + BN > p.Tk || (p.causal && n0 + BN - 1 > tile.m0 + p.offset);
    if (need_mask) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          mask_row<NT>([&](int nt, int c) -> float& { return s[mt][nt][2 * hr + c]; }, p, row_base + mt * 16 + g + hr * 8, n0, t);
        }
    }

    // Online softmax: pk[mt][nt][hr] = row g + 8 hr of m-tile mt, keys 2t, 2t + 1 of n-tile nt (bf16).
    uint32_t pk[MT][NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        online_softmax_row<NT, DT>([&](int nt, int c) -> float& { return s[mt][nt][2 * hr + c]; },
                                   [&](int nt) -> uint32_t& { return pk[mt][nt][hr]; },
                                   [&](int dt, int c) -> float& { return acc[mt][dt][2 * hr + c]; }, row_max[mt][hr], row_sum[mt][hr],
                                   p.scale_log2);
      }
    }

    // O += P V: P from registers (bf16), V through ldmatrix.trans (k = key, n = d).
#pragma unroll
    for (int kp = 0; kp < KP; ++kp) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pk[mt][2 * kp][0];
        a[mt][1] = pk[mt][2 * kp][1];
        a[mt][2] = pk[mt][2 * kp + 1][0];
        a[mt][3] = pk[mt][2 * kp + 1][1];
      }
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        uint32_t b[4];  // d columns dp*16 .. +15: b[0..1] n-tile 2dp, b[2..3] n-tile 2dp+1
        ldsm_x4_trans_at(b, sV + buf + v_off, dp * 32, kp * 16 * D * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(acc[mt][2 * dp], a[mt], b[0], b[1]);
          mma_bf16(acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next iteration refills it
  }

  // Epilogue: o and lse of rows g and g + 8 of each m-tile.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      store_row<D, OutT>(p, tile.h, row_base + mt * 16 + g + hr * 8, t, [&](int dt, int c) -> float& { return acc[mt][dt][2 * hr + c]; },
                         row_max[mt][hr], row_sum[mt][hr]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward, step 1: Delta[h, i] = sum_d dO[i, h, d] * o[i, h, d] (f32), into the workspace.

template <int D>
__global__ void attn_bwd_delta_kernel(const uint16_t* o, const uint16_t* dout, float* delta, int Tq, int Hq) {
  constexpr int kPerRow = D / 8;  // threads per (i, h) row, 16 bytes each
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = idx / kPerRow;  // i * Hq + h
  const int part = static_cast<int>(idx % kPerRow);
  const int64_t rows = static_cast<int64_t>(Tq) * Hq;
  float sum = 0.f;
  if (row < rows) {
    const uint4 a = *reinterpret_cast<const uint4*>(o + row * D + part * 8);
    const uint4 b = *reinterpret_cast<const uint4*>(dout + row * D + part * 8);
    const uint32_t aw[4] = {a.x, a.y, a.z, a.w};
    const uint32_t bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      sum = fmaf(__uint_as_float(aw[j] << 16), __uint_as_float(bw[j] << 16), sum);
      sum = fmaf(__uint_as_float(aw[j] & 0xffff0000u), __uint_as_float(bw[j] & 0xffff0000u), sum);
    }
  }
#pragma unroll
  for (int off = kPerRow / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (row < rows && part == 0) {
    const int64_t i = row / Hq;
    const int64_t h = row % Hq;
    delta[h * Tq + i] = sum;
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward, step 2 (FlashAttention-2 structure, transposed so that nothing but dS visits shared memory):
//
// A CTA owns (key tile of BN = 16 NWARPS keys, kv head); warp w owns keys w*16 .. w*16+15 and keeps
// their dK and dV in f32 registers for the whole CTA. It loops over the query heads of its GQA group
// and, per head, over the query tiles of BM rows that can see the key tile (causal: from the diagonal
// on), with Q, dO, lse and Delta double buffered. Per query tile, per warp (16 keys x BM queries):
//   S^T  = K Q^T                  P^T = exp2(S^T scale log2e - lse log2e)   (0 where masked)
//   dP^T = V dO^T                 dS^T = P^T (dP^T - Delta)
//   dV  += P^T dO                 dK  += dS^T Q                 (A operands straight from registers)
//   dS^T -> shared (bf16);  then the CTA computes dQ[tile] = scale dS K and adds it to dq with f32
//   vector atomics (several key tiles add to the same dq rows concurrently).
// At the end the CTA adds scale dK and dV to dk, dv: it is their only writer, so plain read-add-write.

struct BwdParams {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  const uint16_t* o;
  const uint16_t* dout;
  const float* lse;
  float* delta;  // workspace [Hq, Tq]: written by the Delta pass, read by the main kernel
  float* dq;
  float* dk;
  float* dv;
  int Tq, Tk, Hq, Hkv;
  int group;
  int causal;
  int offset;    // Tk - Tq
  int m_blocks;  // ceil(Tq / BM)
  float scale;
  float scale_log2;
};

template <int D, int BM, int NWARPS>
struct BwdShape {
  static constexpr int kThreads = NWARPS * 32;
  static constexpr int kBN = 16 * NWARPS;  // keys per CTA
  static constexpr int kKVBytes = kBN * D * 2;
  static constexpr int kQBytes = BM * D * 2;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKVBytes;
  static constexpr int kOffQ = kOffV + kKVBytes;      // 2 buffers
  static constexpr int kOffdO = kOffQ + 2 * kQBytes;  // 2 buffers
  static constexpr int kOffdS = kOffdO + 2 * kQBytes;  // [BN][BM] bf16
  static constexpr int kOffLse = kOffdS + kBN * BM * 2;  // 2 x BM f32
  static constexpr int kOffDelta = kOffLse + 2 * BM * 4;  // 2 x BM f32
  static constexpr int kSmemBytes = kOffDelta + 2 * BM * 4 + 256;  // + alignment slack
  // dQ = dS K: warps tile the BM x D output as (BM/16 along queries) x (the rest along d).
  static constexpr int kWQ = BM / 16;
  static constexpr int kWD = NWARPS / kWQ;
  static constexpr int kDTQ = D / 8 / kWD;  // n8 tiles of dQ per warp
  static_assert(BM % 64 == 0 && D % 64 == 0, "swizzled tiles need 64-element rows");
  static_assert(NWARPS % kWQ == 0 && (D / 8) % kWD == 0 && kDTQ % 2 == 0, "dQ tiling");
  static_assert(2 * BM <= kThreads, "one thread per lse and per Delta element");
};

// ---------------------------------------------------------------------------------------------------
// Backward pieces written once for both kernel sets (attn_bwd_kernel below, attn_bwd_sm90_kernel in
// attention_sm90.cu): the tile a CTA owns and its query-tile loads (templated on the Loader), P^T, its
// mask, dS^T, and the final dK, dV update. A thread holds two keys (rows key_lo, key_lo + 8) of S^T and
// two query columns (8 nt + 2t, +1) of each n8 tile: st(nt, e) with e = 2 hr + c (hr: key row, c:
// column), as in the mma.sync C fragment and the wgmma accumulator.

// The (key tile of BN keys at n0, kv head) of this CTA and the query tiles it visits: every query head of
// its GQA group and, per head, the tiles that can see a key of it (causal: query i sees key n0 iff
// i >= n0 - offset), iteration it = (head in group) * nmb + tile.
template <int D, int BM, int BN>
struct BwdTile {
  int kvh, n0, mb_min, nmb, iters;

  __device__ __forceinline__ explicit BwdTile(const BwdParams& p) {
    kvh = static_cast<int>(blockIdx.x % p.Hkv);
    n0 = static_cast<int>(blockIdx.x / p.Hkv) * BN;
    mb_min = p.causal ? max(0, n0 - p.offset) / BM : 0;
    nmb = max(0, p.m_blocks - mb_min);
    iters = nmb * p.group;
  }
  // Row strides (elements) of q/dO and k/v: computed where used, after a CTA with no work has returned.
  static __device__ __forceinline__ int64_t q_stride(const BwdParams& p) { return static_cast<int64_t>(p.Hq) * D; }
  static __device__ __forceinline__ int64_t kv_stride(const BwdParams& p) { return static_cast<int64_t>(p.Hkv) * D; }
  __device__ __forceinline__ int head(const BwdParams& p, int it) const { return kvh * p.group + it / nmb; }
  __device__ __forceinline__ int m0(int it) const { return (mb_min + it % nmb) * BM; }

  // Queues the Q, dO, lse and Delta of iteration `it` into buffer `buf` (no commit); Shape names the
  // kernel's shared-memory offsets from s0 (kQBytes, kOffLse, kOffDelta).
  template <typename Loader, typename Shape, int NTHREADS>
  __device__ __forceinline__ void load_query_tile(const BwdParams& p, int it, int buf, uint32_t s0, uint32_t sQ, uint32_t sdO, int tid) const {
    const int h = head(p, it);
    const int m = m0(it);
    Loader::template tile<BM, D, NTHREADS>(sQ + buf * Shape::kQBytes, p.q + static_cast<int64_t>(h) * D, q_stride(p), m, p.Tq, tid);
    Loader::template tile<BM, D, NTHREADS>(sdO + buf * Shape::kQBytes, p.dout + static_cast<int64_t>(h) * D, q_stride(p), m, p.Tq, tid);
    if (tid < 2 * BM) {
      const int i = tid % BM;
      const bool valid = m + i < p.Tq;
      const float* src = (tid < BM ? p.lse : p.delta) + static_cast<int64_t>(h) * p.Tq + (valid ? m + i : 0);
      const int off = (tid < BM ? Shape::kOffLse : Shape::kOffDelta) + (buf * BM + i) * 4;
      cp_async_4(s0 + off, src, valid);
    }
  }
};

// P^T = exp(S^T scale - lse) in place; lse = -inf (a row that sees no key anywhere) must give P = 0, not +inf.
template <int NTQ, typename ST>
__device__ __forceinline__ void probs_T(ST st, const float* lse_b, float scale_log2, int t) {
#pragma unroll
  for (int nt = 0; nt < NTQ; ++nt) {
    const int c = nt * 8 + 2 * t;  // query within the tile (and c + 1)
    const float2 L = *reinterpret_cast<const float2*>(lse_b + c);
    const float l0 = L.x == -INFINITY ? INFINITY : L.x * kLog2e;
    const float l1 = L.y == -INFINITY ? INFINITY : L.y * kLog2e;
#pragma unroll
    for (int e = 0; e < 4; ++e) st(nt, e) = ex2(fmaf(st(nt, e), scale_log2, -((e & 1) ? l1 : l0)));
  }
}

// P^T = 0 where masked: key row hr (key_lo + 8 hr) sees the tile's queries [begin, end): causal from
// key - offset on, none past Tq, and none at all for a key past Tk.
template <int NTQ, int BM, typename ST>
__device__ __forceinline__ void mask_keys_T(ST st, const BwdParams& p, int key_lo, int m0, int t) {
  const int end = p.Tq - m0;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int key = key_lo + hr * 8;
    const int begin = key >= p.Tk ? BM : (p.causal ? key - p.offset - m0 : 0);
#pragma unroll
    for (int nt = 0; nt < NTQ; ++nt) {
      const int c = nt * 8 + 2 * t;
      if (c < begin || c >= end) st(nt, 2 * hr) = 0.f;
      if (c + 1 < begin || c + 1 >= end) st(nt, 2 * hr + 1) = 0.f;
    }
  }
}

// dS^T = P^T (dP^T - Delta), in place of dP^T.
template <int NTQ, typename ST, typename DPT>
__device__ __forceinline__ void dS_T(ST st, DPT dpt, const float* delta_b, int t) {
#pragma unroll
  for (int nt = 0; nt < NTQ; ++nt) {
    const float2 dl = *reinterpret_cast<const float2*>(delta_b + nt * 8 + 2 * t);
#pragma unroll
    for (int e = 0; e < 4; ++e) dpt(nt, e) = st(nt, e) * (dpt(nt, e) - ((e & 1) ? dl.y : dl.x));
  }
}

// dk += scale dK, dv += dV for this thread's keys (the CTA is the only writer of these rows, so a plain
// read-add-write): dk(dt, e), dv(dt, e) as st(nt, e), over the D / 8 n8 tiles of d.
template <int D, typename DK, typename DV>
__device__ __forceinline__ void add_dk_dv(const BwdParams& p, int kvh, int key_lo, int t, DK dk, DV dv) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int key = key_lo + hr * 8;
    if (key < p.Tk) {
      const int64_t base = (static_cast<int64_t>(key) * p.Hkv + kvh) * D + 2 * t;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        float2* pk = reinterpret_cast<float2*>(p.dk + base + dt * 8);
        float2* pv = reinterpret_cast<float2*>(p.dv + base + dt * 8);
        float2 xk = *pk;
        float2 xv = *pv;
        xk.x += dk(dt, 2 * hr) * p.scale;
        xk.y += dk(dt, 2 * hr + 1) * p.scale;
        xv.x += dv(dt, 2 * hr);
        xv.y += dv(dt, 2 * hr + 1);
        *pk = xk;
        *pv = xv;
      }
    }
  }
}

// (racing) stores instead of reductions, 2 skips the dQ step. Both give wrong dq.
template <int D, int BM, int NWARPS, int kDq = 0>
__global__ void __launch_bounds__(NWARPS * 32, 1) attn_bwd_kernel(const BwdParams p) {
  using Shape = BwdShape<D, BM, NWARPS>;
  constexpr int kThreads = Shape::kThreads;
  constexpr int BN = Shape::kBN;
  constexpr int NTQ = BM / 8;   // query n8 tiles of S^T
  constexpr int KSD = D / 16;   // k-steps over d
  constexpr int DT = D / 8;     // d n8 tiles of dK, dV
  constexpr int KQ = BM / 16;   // k-steps over queries
  constexpr int KK = BN / 16;   // k-steps over keys (dQ)
  constexpr int DTQ = Shape::kDTQ;

  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t s0 = (smem_addr(smem_raw) + 255u) & ~255u;  // 256-aligned: swz_step may XOR absolute addresses
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
  const int g = lane >> 2;
  const int t = lane & 3;

  const BwdTile<D, BM, BN> tile(p);
  const int kvh = tile.kvh;
  const int n0 = tile.n0;
  if (tile.iters == 0) return;  // no query sees these keys: nothing to add

  load_tile<BN, D, kThreads>(sK, p.k + static_cast<int64_t>(kvh) * D, tile.kv_stride(p), n0, p.Tk, tid);
  load_tile<BN, D, kThreads>(sV, p.v + static_cast<int64_t>(kvh) * D, tile.kv_stride(p), n0, p.Tk, tid);
  tile.template load_query_tile<SwizzledTiles, Shape, kThreads>(p, 0, 0, s0, sQ, sdO, tid);
  cp_async_commit();

  float dk_acc[DT][4];
  float dv_acc[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    dk_acc[dt][0] = dk_acc[dt][1] = dk_acc[dt][2] = dk_acc[dt][3] = 0.f;
    dv_acc[dt][0] = dv_acc[dt][1] = dv_acc[dt][2] = dv_acc[dt][3] = 0.f;
  }
  const int key_lo = n0 + warp * 16 + g;  // this thread's keys: key_lo and key_lo + 8

  // Per-lane ldmatrix offsets (swz_step).
  const int wq = warp % Shape::kWQ;  // dQ step: this warp's queries wq*16 .. +15
  const int wd = warp / Shape::kWQ;  // and d columns wd*DTQ*8 .. +DTQ*8-1
  static_assert(((DTQ / 2) & (DTQ / 2 - 1)) == 0, "wd*DTQ/2 + dp == (wd*DTQ/2) ^ dp");
  const uint32_t a_off = swz<D>(warp * 16 + (lane & 15), lane >> 4);               // K, V as A (m = key)
  const uint32_t b_off = swz<D>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);  // Q, dO as B (n = query)
  const uint32_t t_off = swz<D>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);  // dO, Q, K as B (k = row), .trans
  const uint32_t dq_b_off = swz_step(t_off, wd * (DTQ / 2));
  const uint32_t ds_a_off = swz_step(swz<BM>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1), wq);  // dS as A, .trans
  const uint32_t ds_st_off = swz<BM>(warp * 16 + g, 0) + 4 * t;  // this thread's dS^T stores (chunk 0)

  for (int it = 0; it < tile.iters; ++it) {
    const int buf = it & 1;
    const int h = tile.head(p, it);
    const int m0 = tile.m0(it);
    if (it + 1 < tile.iters) tile.template load_query_tile<SwizzledTiles, Shape, kThreads>(p, it + 1, buf ^ 1, s0, sQ, sdO, tid);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // this tile's buffers are complete; the previous dQ step is done with sdS

    const uint32_t sQb = sQ + buf * Shape::kQBytes;
    const uint32_t sdOb = sdO + buf * Shape::kQBytes;
    const float* lse_b = lse_s + buf * BM;
    const float* delta_b = delta_s + buf * BM;

    // S^T = K Q^T: this warp's 16 keys x BM queries.
    float st[NTQ][4];
#pragma unroll
    for (int nt = 0; nt < NTQ; ++nt) st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSD; ++ks) {
      uint32_t a[4];
      ldsm_x4_at(a, sK + a_off, ks * 32, 0);
#pragma unroll
      for (int np = 0; np < NTQ / 2; ++np) {
        uint32_t b[4];
        ldsm_x4_at(b, sQb + b_off, ks * 32, np * 16 * D * 2);
        mma_bf16(st[2 * np], a, b[0], b[1]);
        mma_bf16(st[2 * np + 1], a, b[2], b[3]);
      }
    }

    // P^T = exp(S^T scale - lse), 0 where masked (shared pieces above; st[nt][e] is st(nt, e)).
    const auto st_at = [&](int nt, int e) -> float& { return st[nt][e]; };
    probs_T<NTQ>(st_at, lse_b, p.scale_log2, t);
    const bool need_mask = m0 + BM > p.Tq || n0 + BN > p.Tk || (p.causal && n0 + BN - 1 > m0 + p.offset);
    if (need_mask) mask_keys_T<NTQ, BM>(st_at, p, key_lo, m0, t);

    // dP^T = V dO^T.
    float dpt[NTQ][4];
#pragma unroll
    for (int nt = 0; nt < NTQ; ++nt) dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSD; ++ks) {
      uint32_t a[4];
      ldsm_x4_at(a, sV + a_off, ks * 32, 0);
#pragma unroll
      for (int np = 0; np < NTQ / 2; ++np) {
        uint32_t b[4];
        ldsm_x4_at(b, sdOb + b_off, ks * 32, np * 16 * D * 2);
        mma_bf16(dpt[2 * np], a, b[0], b[1]);
        mma_bf16(dpt[2 * np + 1], a, b[2], b[3]);
      }
    }

    // dS^T = P^T (dP^T - Delta), in place of dP^T.
    dS_T<NTQ>(st_at, [&](int nt, int e) -> float& { return dpt[nt][e]; }, delta_b, t);

    // dV += P^T dO and dK += dS^T Q (k = query; B through ldmatrix.trans of the [query][d] tiles).
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq) {
      uint32_t ap[4], as[4];
      ap[0] = pack_bf16(st[2 * kq][0], st[2 * kq][1]);
      ap[1] = pack_bf16(st[2 * kq][2], st[2 * kq][3]);
      ap[2] = pack_bf16(st[2 * kq + 1][0], st[2 * kq + 1][1]);
      ap[3] = pack_bf16(st[2 * kq + 1][2], st[2 * kq + 1][3]);
      as[0] = pack_bf16(dpt[2 * kq][0], dpt[2 * kq][1]);
      as[1] = pack_bf16(dpt[2 * kq][2], dpt[2 * kq][3]);
      as[2] = pack_bf16(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]);
      as[3] = pack_bf16(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3]);
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        uint32_t b[4];
        ldsm_x4_trans_at(b, sdOb + t_off, dp * 32, kq * 16 * D * 2);
        mma_bf16(dv_acc[2 * dp], ap, b[0], b[1]);
        mma_bf16(dv_acc[2 * dp + 1], ap, b[2], b[3]);
        ldsm_x4_trans_at(b, sQb + t_off, dp * 32, kq * 16 * D * 2);
        mma_bf16(dk_acc[2 * dp], as, b[0], b[1]);
        mma_bf16(dk_acc[2 * dp + 1], as, b[2], b[3]);
      }
      // The same bf16 dS^T goes to shared memory for dQ: rows = keys, columns = queries.
      // Rows warp*16 + g (+8) keep (row & 7) = g, so chunk 2kq (+1) is at swz_step(ds_st_off, kq) (^ 16).
      const uint32_t lo = Shape::kOffdS + swz_step(ds_st_off, kq);
      const uint32_t hi = Shape::kOffdS + (swz_step(ds_st_off, kq) ^ 16u);
      constexpr uint32_t kRow8 = 8 * BM * 2;
      *reinterpret_cast<uint32_t*>(smem + lo) = as[0];
      *reinterpret_cast<uint32_t*>(smem + lo + kRow8) = as[1];
      *reinterpret_cast<uint32_t*>(smem + hi) = as[2];
      *reinterpret_cast<uint32_t*>(smem + hi + kRow8) = as[3];
    }
    __syncthreads();  // dS^T complete; also every warp is done reading this Q/dO buffer

    // dQ[m0 .. m0+BM) += scale dS K: warp (wq, wd) computes queries wq*16.. x d columns wd*DTQ*8...
    if constexpr (kDq != 2) {
      float dq_acc[DTQ][4];
#pragma unroll
      for (int dt = 0; dt < DTQ; ++dt) dq_acc[dt][0] = dq_acc[dt][1] = dq_acc[dt][2] = dq_acc[dt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KK; ++kk) {
        uint32_t a[4];  // dS (m = query, k = key) from the [key][query] tile, transposed by ldmatrix
        ldsm_x4_trans(a, sdS + ds_a_off + kk * 16 * BM * 2);
#pragma unroll
        for (int dp = 0; dp < DTQ / 2; ++dp) {
          uint32_t b[4];  // K (k = key, n = d)
          ldsm_x4_trans_at(b, sK + dq_b_off, dp * 32, kk * 16 * D * 2);
          mma_bf16(dq_acc[2 * dp], a, b[0], b[1]);
          mma_bf16(dq_acc[2 * dp + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int row = m0 + wq * 16 + g + hr * 8;
        if (row < p.Tq) {
          float* dst = p.dq + (static_cast<int64_t>(row) * p.Hq + h) * D + wd * DTQ * 8 + 2 * t;
#pragma unroll
          for (int dt = 0; dt < DTQ; ++dt) {
            const float x = dq_acc[dt][2 * hr] * p.scale, y = dq_acc[dt][2 * hr + 1] * p.scale;
            if constexpr (kDq == 0) red_add_f32x2(dst + dt * 8, x, y);
            else *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(x, y);
          }
        }
      }
    }
  }

  // dk += scale dK, dv += dV for this warp's keys.
  add_dk_dv<D>(p, kvh, key_lo, t, [&](int dt, int e) -> float& { return dk_acc[dt][e]; }, [&](int dt, int e) -> float& { return dv_acc[dt][e]; });
}

// ---------------------------------------------------------------------------------------------------
// Merge: (acc_o, acc_lse) <- merge with (part_o, part_lse). One warp per (i, h) row, V elements per lane
// access (4: 16-byte f32 / 8-byte bf16 accesses; 1 when unaligned). An empty side (lse = -inf) gets
// weight 0 and its o is never multiplied, so garbage there cannot become NaN.

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(uint16_t x) { return __uint_as_float(static_cast<uint32_t>(x) << 16); }

template <typename PartT, int V>
__global__ void attn_merge_kernel(float* acc_o, float* acc_lse, const PartT* part_o, const float* part_lse, int Tq, int Hq, int D) {
  constexpr int kWarps = 8;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // i * Hq + h
  if (row >= static_cast<int64_t>(Tq) * Hq) return;  // whole warp
  const int64_t li = (row % Hq) * Tq + row / Hq;
  const float a = acc_lse[li];
  const float b = part_lse[li];
  const float m = fmaxf(a, b);
  float lse = -INFINITY, wa = 0.f, wb = 0.f;
  if (m != -INFINITY) {
    lse = m + log1pf(expf(-fabsf(a - b)));  // |a - b| = inf when one side is empty: lse = the other
    wa = a == -INFINITY ? 0.f : expf(a - lse);
    wb = b == -INFINITY ? 0.f : expf(b - lse);
  }
  float* o = acc_o + row * D;
  const PartT* x = part_o + row * D;
  for (int c = lane * V; c < D; c += 32 * V) {
    float va[V];
    float vb[V];
    if constexpr (V == 4) {
      const float4 f = *reinterpret_cast<const float4*>(o + c);
      va[0] = f.x, va[1] = f.y, va[2] = f.z, va[3] = f.w;
      if constexpr (sizeof(PartT) == 4) {
        const float4 y = *reinterpret_cast<const float4*>(x + c);
        vb[0] = y.x, vb[1] = y.y, vb[2] = y.z, vb[3] = y.w;
      } else {
        const uint2 y = *reinterpret_cast<const uint2*>(x + c);
        vb[0] = __uint_as_float(y.x << 16), vb[1] = __uint_as_float(y.x & 0xffff0000u);
        vb[2] = __uint_as_float(y.y << 16), vb[3] = __uint_as_float(y.y & 0xffff0000u);
      }
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) va[j] = o[c + j], vb[j] = to_f32(x[c + j]);
    }
    float r[V];
#pragma unroll
    for (int j = 0; j < V; ++j) r[j] = (wa == 0.f ? 0.f : wa * va[j]) + (wb == 0.f ? 0.f : wb * vb[j]);
    if constexpr (V == 4) {
      *reinterpret_cast<float4*>(o + c) = make_float4(r[0], r[1], r[2], r[3]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) o[c + j] = r[j];
    }
  }
  __syncwarp();  // every lane has read acc_lse[li] before lane 0 overwrites it
  if (lane == 0) acc_lse[li] = lse;
}

// ---------------------------------------------------------------------------------------------------
// Launchers (host). Each sets the kernel's dynamic shared-memory limit, launches on `s` and returns the
// cudaError_t of the launch. Arguments are already checked by the caller.

template <int D, int BM, int BN, int NWARPS, typename OutT>
cudaError_t launch_fwd(FwdParams p, cudaStream_t s) {
  using Shape = FwdShape<D, BM, BN, NWARPS>;
  auto kernel = attn_fwd_kernel<D, BM, BN, NWARPS, OutT>;
  p.m_blocks = (p.Tq + BM - 1) / BM;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Shape::kSmemBytes);
  if (e != cudaSuccess) return e;
  const int64_t blocks = static_cast<int64_t>(p.m_blocks) * p.Hq;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, Shape::kSmemBytes, s>>>(p);
  return cudaGetLastError();
}

// The backward's two launches, shared by the mma.sync and wgmma kernels: the Delta pre-pass, then
// `kernel` over (key tiles of BN) x kv heads with `threads` threads and `smem` bytes of shared memory.
template <int D, typename Kernel>
cudaError_t launch_bwd_passes(Kernel kernel, const BwdParams& p, int BN, int threads, int smem, cudaStream_t s) {
  constexpr int kDeltaThreads = 256;
  const int64_t delta_blocks = (static_cast<int64_t>(p.Tq) * p.Hq * (D / 8) + kDeltaThreads - 1) / kDeltaThreads;
  const int64_t blocks = static_cast<int64_t>((p.Tk + BN - 1) / BN) * p.Hkv;
  if (delta_blocks > 0x7fffffff || blocks > 0x7fffffff) return cudaErrorInvalidValue;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  attn_bwd_delta_kernel<D><<<static_cast<unsigned>(delta_blocks), kDeltaThreads, 0, s>>>(p.o, p.dout, p.delta, p.Tq, p.Hq);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  kernel<<<static_cast<unsigned>(blocks), threads, smem, s>>>(p);
  return cudaGetLastError();
}

template <int D, int BM, int NWARPS, int kDq = 0>
cudaError_t launch_bwd(BwdParams p, cudaStream_t s) {
  using Shape = BwdShape<D, BM, NWARPS>;
  p.m_blocks = (p.Tq + BM - 1) / BM;
  return launch_bwd_passes<D>(attn_bwd_kernel<D, BM, NWARPS, kDq>, p, Shape::kBN, Shape::kThreads, Shape::kSmemBytes, s);
}

template <typename PartT>
cudaError_t launch_merge(float* acc_o, float* acc_lse, const PartT* part_o, const float* part_lse, int Tq, int Hq, int D,
                         cudaStream_t s) {
  constexpr int kWarps = 8;
  const int64_t rows = static_cast<int64_t>(Tq) * Hq;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const bool vec = D % 4 == 0 && (reinterpret_cast<uintptr_t>(acc_o) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(part_o) & (4 * sizeof(PartT) - 1)) == 0;
  if (vec) {
    attn_merge_kernel<PartT, 4><<<static_cast<unsigned>(blocks), kWarps * 32, 0, s>>>(acc_o, acc_lse, part_o, part_lse, Tq, Hq, D);
  } else {
    attn_merge_kernel<PartT, 1><<<static_cast<unsigned>(blocks), kWarps * 32, 0, s>>>(acc_o, acc_lse, part_o, part_lse, Tq, Hq, D);
  }
  return cudaGetLastError();
}

}  // namespace ls::attn
