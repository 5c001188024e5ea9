// Counter-based random numbers: Threefry-2x32-20 + uniform / Box-Muller normal transforms.
// The CPU twin is packages/tensor/src/rng.ts; the two must give IDENTICAL bits, so this file mirrors
// it operation for operation (read both side by side when changing either).
//
// Stream layout: element i uses counter e = offset + i (64-bit, wraps mod 2^64) and key = seed:
//   (x0, x1) = threefry2x32_20(counter = (e lo32, e hi32), key = (seed lo32, seed hi32)).
//
// Bit-identity rules:
// - every f32 +, -, *, /, sqrt is a single correctly rounded op: __fadd_rn, __fsub_rn, __fmul_rn,
//   __fdiv_rn, __fsqrt_rn (never contracted into FMA, independent of -ftz / -prec-* flags);
// - log and cos are the polynomials below, not the CUDA math library;
// - constants are 9-significant-digit decimal f32 literals, the same as RNG_F32_CONSTANTS in rng.ts
//   (rng.test.ts parses the `constexpr float k...` lines of this file and compares).
#include "common.cuh"

namespace {

// log1p(f) = 2 atanh(s), s = f / (2 + f): 2s + s * w * (P1 + w * (P2 + w * (P3 + w * P4))), w = s^2
constexpr float kLogP1 = 0.666666687f;  // 2/3
constexpr float kLogP2 = 0.400000006f;  // 2/5
constexpr float kLogP3 = 0.285714298f;  // 2/7
constexpr float kLogP4 = 0.222222224f;  // 2/9
constexpr float kLn2Hi = 0.693138123f;  // ln 2 with 7 trailing zero bits: e * kLn2Hi is exact for |e| < 128
constexpr float kLn2Lo = 0.00000905800152f;  // ln 2 - kLn2Hi
// sin x = x + x * w * (S1 + w * (S2 + w * (S3 + w * S4))), w = x^2 (Taylor; |x| <= pi/4)
constexpr float kSinS1 = -0.166666672f;  // -1/3!
constexpr float kSinS2 = 0.00833333377f;  // 1/5!
constexpr float kSinS3 = -0.000198412701f;  // -1/7!
constexpr float kSinS4 = 0.00000275573188f;  // 1/9!
// cos x = 1 + w * (C1 + w * (C2 + w * (C3 + w * (C4 + w * C5))))
constexpr float kCosC1 = -0.5f;  // -1/2!
constexpr float kCosC2 = 0.0416666679f;  // 1/4!
constexpr float kCosC3 = -0.00138888892f;  // -1/6!
constexpr float kCosC4 = 0.0000248015876f;  // 1/8!
constexpr float kCosC5 = -2.755732e-7f;  // -1/10!
// f32(pi/2) * 2^-22: turns a quarter-turn remainder counted in 2^-22 turns into radians
constexpr float kPio2Over2p22 = 3.74507039e-7f;

constexpr uint32_t kSqrt2Mantissa = 0x3504f3u;  // mantissa field of f32(sqrt 2)
constexpr float kTwoPowM24 = 5.9604644775390625e-8f;  // 2^-24, exact

// Threefry-2x32, 20 rounds, Random123 rotation constants R_32x2 and Skein key-schedule parity.
__device__ __forceinline__ uint2 threefry2x32_20(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  constexpr int kRot[8] = {13, 15, 26, 6, 17, 29, 16, 24};
  const uint32_t ks[3] = {k0, k1, 0x1bd11bdau ^ k0 ^ k1};
  uint32_t x0 = c0 + k0;
  uint32_t x1 = c1 + k1;
#pragma unroll
  for (int r = 0; r < 20; ++r) {
    x0 += x1;
    x1 = __funnelshift_l(x1, x1, kRot[r % 8]);  // rotate left
    x1 ^= x0;
    if (r % 4 == 3) {  // key injection i = (r + 1) / 4
      const uint32_t i = static_cast<uint32_t>(r + 1) / 4;
      x0 += ks[i % 3];
      x1 += ks[(i + 1) % 3] + i;
    }
  }
  return make_uint2(x0, x1);
}

// Natural log of a positive, normal, finite f32 (see logF32 in rng.ts).
__device__ __forceinline__ float log_f32(float x) {
  const uint32_t bits = __float_as_uint(x);
  int e = static_cast<int>((bits >> 23) & 0xffu) - 127;
  const uint32_t mant = bits & 0x7fffffu;
  float m;
  if (mant > kSqrt2Mantissa) {
    e += 1;
    m = __uint_as_float(mant | 0x3f000000u);  // m / 2, in [sqrt(1/2), 1)
  } else {
    m = __uint_as_float(mant | 0x3f800000u);  // m in [1, sqrt 2]
  }
  const float f = __fsub_rn(m, 1.0f);
  const float s = __fdiv_rn(f, __fadd_rn(2.0f, f));
  const float w = __fmul_rn(s, s);
  float p = kLogP4;
  p = __fadd_rn(__fmul_rn(p, w), kLogP3);
  p = __fadd_rn(__fmul_rn(p, w), kLogP2);
  p = __fadd_rn(__fmul_rn(p, w), kLogP1);
  const float tail = __fmul_rn(__fmul_rn(s, w), p);
  const float ef = static_cast<float>(e);  // exact
  const float r = __fadd_rn(__fmul_rn(2.0f, s), __fadd_rn(__fmul_rn(ef, kLn2Lo), tail));
  return __fadd_rn(__fmul_rn(ef, kLn2Hi), r);
}

// cos(2 pi k / 2^24), k in [0, 2^24): nearest quarter turn n, remainder x in [-pi/4, pi/4]
// (see cos2piU24 in rng.ts).
__device__ __forceinline__ float cos2pi_u24(uint32_t k) {
  const uint32_t n = (k + 0x200000u) >> 22;  // 0..4
  const int32_t d = static_cast<int32_t>(k) - static_cast<int32_t>(n << 22);  // [-2^21, 2^21)
  const float x = __fmul_rn(static_cast<float>(d), kPio2Over2p22);  // int -> float exact
  const float w = __fmul_rn(x, x);
  float v;
  if (n & 1u) {
    float p = kSinS4;
    p = __fadd_rn(__fmul_rn(p, w), kSinS3);
    p = __fadd_rn(__fmul_rn(p, w), kSinS2);
    p = __fadd_rn(__fmul_rn(p, w), kSinS1);
    v = __fadd_rn(x, __fmul_rn(__fmul_rn(x, w), p));
  } else {
    float p = kCosC5;
    p = __fadd_rn(__fmul_rn(p, w), kCosC4);
    p = __fadd_rn(__fmul_rn(p, w), kCosC3);
    p = __fadd_rn(__fmul_rn(p, w), kCosC2);
    p = __fadd_rn(__fmul_rn(p, w), kCosC1);
    v = __fadd_rn(1.0f, __fmul_rn(w, p));
  }
  return ((n + 1u) & 2u) ? -v : v;  // negate in quadrants 1 and 2
}

struct Stream {
  uint32_t k0, k1;
  uint64_t offset;
  __device__ __forceinline__ uint2 at(int64_t i) const {
    const uint64_t e = offset + static_cast<uint64_t>(i);
    return threefry2x32_20(static_cast<uint32_t>(e), static_cast<uint32_t>(e >> 32), k0, k1);
  }
};

Stream make_stream(uint64_t seed, uint64_t offset) {
  return Stream{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), offset};
}

// u = (x0 >> 8) * 2^-24 in [0, 1); value = fl(lo + fl(span * u)), span = fl(hi - lo).
__device__ __forceinline__ float uniform_of(uint32_t x0, float lo, float span) {
  const float u = __fmul_rn(static_cast<float>(x0 >> 8), kTwoPowM24);  // exact
  return __fadd_rn(lo, __fmul_rn(span, u));
}

// u1 = ((x0 >> 8) + 1) * 2^-24 in (0, 1]; z = fl(sqrt(fl(-2 * log u1)) * cos(2 pi (x1 >> 8) 2^-24));
// value = fl(mean + fl(std * z)).
__device__ __forceinline__ float normal_of(uint2 x, float mean, float std) {
  const float u1 = __fmul_rn(static_cast<float>((x.x >> 8) + 1u), kTwoPowM24);  // exact
  const float r = __fsqrt_rn(__fmul_rn(-2.0f, log_f32(u1)));
  const float z = __fmul_rn(r, cos2pi_u24(x.y >> 8));
  return __fadd_rn(mean, __fmul_rn(std, z));
}

struct UniformF32 {
  Stream st;
  float lo, hi;
  __device__ float operator()(int64_t i) const { return uniform_of(st.at(i).x, lo, __fsub_rn(hi, lo)); }
};
struct UniformBf16 {
  Stream st;
  float lo, hi;
  __device__ uint16_t operator()(int64_t i) const {
    return ls::f32_to_bf16(uniform_of(st.at(i).x, lo, __fsub_rn(hi, lo)));
  }
};
struct NormalF32 {
  Stream st;
  float mean, std;
  __device__ float operator()(int64_t i) const { return normal_of(st.at(i), mean, std); }
};
struct NormalBf16 {
  Stream st;
  float mean, std;
  __device__ uint16_t operator()(int64_t i) const { return ls::f32_to_bf16(normal_of(st.at(i), mean, std)); }
};

}  // namespace

// out[n] f32: out[i] = uniform in [lo, hi) from counter offset + i (rare rounding can give hi).
LS_API int ls_rand_uniform_f32(float* out, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t s) {
  const UniformF32 g{make_stream(seed, offset), lo, hi};
  return ls::launch_generate<4>(out, g, n, s);
}

// out[n] bf16: rne_bf16 of ls_rand_uniform_f32's values.
LS_API int ls_rand_uniform_bf16(uint16_t* out, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi, cudaStream_t s) {
  const UniformBf16 g{make_stream(seed, offset), lo, hi};
  return ls::launch_generate<8>(out, g, n, s);
}

// out[n] f32: out[i] = normal(mean, std) (Box-Muller, one value per counter) from counter offset + i.
LS_API int ls_rand_normal_f32(float* out, int64_t n, uint64_t seed, uint64_t offset, float mean, float std, cudaStream_t s) {
  const NormalF32 g{make_stream(seed, offset), mean, std};
  return ls::launch_generate<4>(out, g, n, s);
}

// out[n] bf16: rne_bf16 of ls_rand_normal_f32's values.
LS_API int ls_rand_normal_bf16(uint16_t* out, int64_t n, uint64_t seed, uint64_t offset, float mean, float std, cudaStream_t s) {
  const NormalBf16 g{make_stream(seed, offset), mean, std};
  return ls::launch_generate<8>(out, g, n, s);
}
