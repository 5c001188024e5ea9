// Block attention: flash-attention forward and backward on tensor cores, and the merge of partials.
// The C ABI (declared in attention.cuh):
//
//   ls_attn_fwd_bf16(q, k, v, o, lse, Tq, Tk, Hq, Hkv, D, scale, causal, kernels, s)
//   ls_attn_fwd_bf16_f32out(q, k, v, o_f32, lse, ...)           same kernel, o written in f32
//   ls_attn_bwd_bf16(q, k, v, o, lse, dout, dq, dk, dv, workspace, Tq, Tk, Hq, Hkv, D, scale, causal, kernels, s)
//   ls_attn_kernel(device, kernels)                             which kernel set `kernels` runs there
//   ls_attn_bwd_workspace_bytes(Tq, Hq, D)
//   ls_attn_merge_f32(acc_o, acc_lse, o_part_f32, lse_part, Tq, Hq, D, s)
//   ls_attn_merge_bf16(acc_o, acc_lse, o_part_bf16, lse_part, Tq, Hq, D, s)
//
// Layout (row-major, contiguous): q, o, dout [Tq, Hq, D] bf16; k, v [Tk, Hkv, D] bf16; lse [Hq, Tq] f32,
// natural log; dq [Tq, Hq, D], dk/dv [Tk, Hkv, D] f32. GQA: query head h reads kv head h / (Hq / Hkv).
// Causal is bottom-right aligned: key j is visible to query i iff j <= i + (Tk - Tq). A row with no
// visible key gets o = 0 and lse = -inf (never NaN) and contributes nothing to the gradients.
//
// Forward: o = softmax(scale q k^T) v per head, lse = log sum_j exp(scale q.k_j) over visible keys.
// Backward: given the FINAL (global, merged) o and lse of the query rows and dout, ADDS this block's
// gradient into dq, dk, dv (f32; the caller zeroes them for a fresh result), so the pieces of one query
// chunk against several K/V blocks, or of several query chunks against one K/V block, sum up in fp32
// (LightSeq section 2): P = exp(scale S - lse), Delta = rowsum(dout * o), dS = P (dP - Delta),
// dq += scale dS k, dk += scale dS^T q, dv += P^T dout. The workspace holds Delta [Hq, Tq] f32.
// dq is accumulated with f32 atomics (key tiles of one query row add concurrently): its bits can vary
// from run to run at the level of f32 rounding; dk and dv are written by one CTA each and are
// deterministic.
// Merge, in place: lse = log(exp(a) + exp(b)) (max + log1p(exp(-|a - b|))), o = exp(a - lse) acc_o +
// exp(b - lse) o_part; an empty side (lse = -inf) has weight 0 and its o is never read into the sum, so
// an accumulator may start as (anything, -inf); two empty sides give o = 0, lse = -inf. Any D, Tq, Hq.
//
// Supported: D in {64, 128}; Hq % Hkv == 0; Tq, Tk >= 0 (any, tails are masked); scale finite and > 0
// (the online softmax keeps the max of the raw scores); q, k, v, o, dout, dq, dk, dv 16-byte aligned
// (they are when they start a row of an allocation). Anything else returns cudaErrorInvalidValue
// without launching. Tq == 0 (or, backward, Tk == 0) launches nothing and returns 0.
//
// Cost (kernels/dev/attention/NOTES.md): forward 4 Tq Tk Hq D FLOPs (halved for causal, Tq == Tk),
// backward 2.5x that. Tiles: forward 128 query rows x 32 keys (D = 128) or 64 keys (D = 64), 4 warps of
// 32 rows; backward 128 keys x 64 queries, 8 warps of 16 keys: the mma.sync kernels (sm_80 and later).
// On sm_90 (H100, H200) the wgmma kernels of attention_sm90.cu run instead: forward 128 query rows x
// 128 keys, backward 128 keys x 64 queries, 2 warpgroups of 64 rows each. The `kernels` argument
// (attention.cuh: auto, mma, wgmma) picks the set; mma runs the mma.sync kernels on sm_90 too (for
// comparison); wgmma on another device, or an unknown value, returns an LS_ATTN_ERR_* code without
// launching. ls_attn_kernel(device, kernels) says which set a call would run. Nothing here reads the
// environment: the caller decides.
#include <atomic>
#include <cmath>
#include <type_traits>

#include "attention.cuh"
#include "attention_kernels.cuh"
#include "attention_sm90.cuh"

namespace {

using namespace ls::attn;

bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

// The shipped tile shapes (kernels/dev/attention/check.cu times others). Forward: 4 warps of 32 query
// rows (each K/V fragment read from shared memory feeds two m-tiles); D = 128 takes 32-key tiles because
// 64 would need 128 O + 64 S accumulator registers per thread and spills.
constexpr int kFwdBM = 128, kFwdWarps = 4;
constexpr int kFwdBN128 = 32, kFwdBN64 = 64;
constexpr int kBwdBM = 64, kBwdWarps = 8;

bool valid_dims(int Tq, int Tk, int Hq, int Hkv, int D, float scale) {
  return Tq >= 0 && Tk >= 0 && Hq >= 1 && Hkv >= 1 && Hq % Hkv == 0 && (D == 64 || D == 128) && std::isfinite(scale) &&
         scale > 0.f;
}

// The kernel set `kernels` runs on the current device (1 wgmma, 0 mma.sync), or minus an error code.
int kernels_here(int kernels) {
  int dev = 0;
  const cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return -static_cast<int>(e);
  return ls_attn_kernel(dev, kernels);
}

template <typename OutT>
int attn_fwd(const uint16_t* q, const uint16_t* k, const uint16_t* v, OutT* o, float* lse, int Tq, int Tk, int Hq, int Hkv, int D,
             float scale, int causal, int kernels, cudaStream_t s) {
  const int impl = kernels_here(kernels);
  if (impl < 0) return -impl;  // an unknown or unavailable kernel set: refused whatever the shape
  if (!valid_dims(Tq, Tk, Hq, Hkv, D, scale)) return cudaErrorInvalidValue;
  if (Tq == 0) return cudaSuccess;
  if (!aligned(q, 16) || !aligned(o, 16) || !aligned(lse, 4) || (Tk > 0 && (!aligned(k, 16) || !aligned(v, 16)))) {
    return cudaErrorInvalidValue;
  }
  FwdParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.o = o;
  p.lse = lse;
  p.Tq = Tq;
  p.Tk = Tk;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.group = Hq / Hkv;
  p.causal = causal != 0;
  p.offset = Tk - Tq;
  p.scale_log2 = scale * kLog2e;
  cudaError_t e;
  if (impl == 1) {
    if constexpr (std::is_same_v<OutT, float>) e = sm90::launch_fwd_f32(p, D, s);
    else e = sm90::launch_fwd_bf16(p, D, s);
  } else {
    e = D == 128 ? launch_fwd<128, kFwdBM, kFwdBN128, kFwdWarps, OutT>(p, s) : launch_fwd<64, kFwdBM, kFwdBN64, kFwdWarps, OutT>(p, s);
  }
  return static_cast<int>(e);
}

template <typename PartT>
int attn_merge(float* acc_o, float* acc_lse, const PartT* o_part, const float* lse_part, int Tq, int Hq, int D, cudaStream_t s) {
  if (Tq < 0 || Hq < 1 || D < 1) return cudaErrorInvalidValue;
  if (Tq == 0) return cudaSuccess;
  if (!aligned(acc_o, 4) || !aligned(acc_lse, 4) || !aligned(o_part, sizeof(PartT)) || !aligned(lse_part, 4)) return cudaErrorInvalidValue;
  return static_cast<int>(launch_merge<PartT>(acc_o, acc_lse, o_part, lse_part, Tq, Hq, D, s));
}

}  // namespace

LS_API int ls_attn_fwd_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* o, float* lse, int Tq, int Tk, int Hq, int Hkv,
                            int D, float scale, int causal, int kernels, cudaStream_t s) {
  return attn_fwd<uint16_t>(q, k, v, o, lse, Tq, Tk, Hq, Hkv, D, scale, causal, kernels, s);
}

LS_API int ls_attn_fwd_bf16_f32out(const uint16_t* q, const uint16_t* k, const uint16_t* v, float* o, float* lse, int Tq, int Tk, int Hq,
                                   int Hkv, int D, float scale, int causal, int kernels, cudaStream_t s) {
  return attn_fwd<float>(q, k, v, o, lse, Tq, Tk, Hq, Hkv, D, scale, causal, kernels, s);
}

LS_API int64_t ls_attn_bwd_workspace_bytes(int Tq, int Hq, int D) {
  (void)D;  // Delta is one f32 per (head, query row)
  const int64_t bytes = static_cast<int64_t>(Tq > 0 ? Tq : 0) * (Hq > 0 ? Hq : 0) * 4;
  return (bytes + 255) / 256 * 256;
}

LS_API int ls_attn_bwd_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o, const float* lse,
                            const uint16_t* dout, float* dq, float* dk, float* dv, void* workspace, int Tq, int Tk, int Hq, int Hkv,
                            int D, float scale, int causal, int kernels, cudaStream_t s) {
  const int impl = kernels_here(kernels);
  if (impl < 0) return -impl;
  if (!valid_dims(Tq, Tk, Hq, Hkv, D, scale)) return cudaErrorInvalidValue;
  if (Tq == 0 || Tk == 0) return cudaSuccess;  // no pair of this block: nothing to add
  for (const void* ptr : {static_cast<const void*>(q), static_cast<const void*>(k), static_cast<const void*>(v),
                          static_cast<const void*>(o), static_cast<const void*>(dout), static_cast<const void*>(dq),
                          static_cast<const void*>(dk), static_cast<const void*>(dv), static_cast<const void*>(workspace)}) {
    if (!aligned(ptr, 16)) return cudaErrorInvalidValue;
  }
  if (!aligned(lse, 4) || workspace == nullptr) return cudaErrorInvalidValue;
  BwdParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.o = o;
  p.dout = dout;
  p.lse = lse;
  p.delta = static_cast<float*>(workspace);
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.Tq = Tq;
  p.Tk = Tk;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.group = Hq / Hkv;
  p.causal = causal != 0;
  p.offset = Tk - Tq;
  p.scale = scale;
  p.scale_log2 = scale * kLog2e;
  cudaError_t e = impl == 1                     ? sm90::launch_bwd(p, D, s)
                  : D == 128 ? launch_bwd<128, kBwdBM, kBwdWarps>(p, s)
                             : launch_bwd<64, kBwdBM, kBwdWarps>(p, s);
  return static_cast<int>(e);
}

namespace {

// Whether `dev` has compute capability 9.0: 1 yes, 0 no, or minus the cudaError_t of a failed query.
// Asked once per device (every launch resolves its kernel set); the answer cannot change while the
// process runs.
int is_sm90(int dev) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices] = {};  // 0 not asked yet, 1 no, 2 yes
  if (dev < 0 || dev >= kMaxDevices) return -static_cast<int>(cudaErrorInvalidDevice);
  const int k = known[dev].load(std::memory_order_relaxed);
  if (k != 0) return k - 1;
  int major = 0, minor = 0;
  cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (e != cudaSuccess) return -static_cast<int>(e);
  const int yes = major == 9 && minor == 0 ? 1 : 0;
  known[dev].store(yes + 1, std::memory_order_relaxed);
  return yes;
}

}  // namespace

LS_API int ls_attn_kernel(int device, int kernels) {
  if (kernels != LS_ATTN_KERNELS_AUTO && kernels != LS_ATTN_KERNELS_MMA && kernels != LS_ATTN_KERNELS_WGMMA) {
    return -LS_ATTN_ERR_KERNELS_UNKNOWN;
  }
  const int sm90 = is_sm90(device);
  if (sm90 < 0) return sm90;
  if (kernels == LS_ATTN_KERNELS_MMA) return 0;
  if (kernels == LS_ATTN_KERNELS_WGMMA && sm90 == 0) return -LS_ATTN_ERR_KERNELS_UNAVAILABLE;
  return sm90;  // auto, or wgmma where it runs
}

LS_API int ls_attn_merge_f32(float* acc_o, float* acc_lse, const float* o_part, const float* lse_part, int Tq, int Hq, int D, cudaStream_t s) {
  return attn_merge<float>(acc_o, acc_lse, o_part, lse_part, Tq, Hq, D, s);
}

LS_API int ls_attn_merge_bf16(float* acc_o, float* acc_lse, const uint16_t* o_part, const float* lse_part, int Tq, int Hq, int D,
                              cudaStream_t s) {
  return attn_merge<uint16_t>(acc_o, acc_lse, o_part, lse_part, Tq, Hq, D, s);
}
