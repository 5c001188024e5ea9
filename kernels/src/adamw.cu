// AdamW update of flat f32 shards in place (fp32 master weights p, moments m and v), writing the new
// bf16 weights too. The formula and its operation order are PyTorch's torch.optim.AdamW, written out in
// apps/trainer/src/optim/adamw.ts (the CPU reference this kernel must equal bit for bit):
//   g = g*gs; p = p*decay; m = m + omb1*(g - m); v = beta2*v + (omb2*g)*g;
//   p = p - step_size * (m / (sqrt(v)/bc2_sqrt + eps)); w = rne_bf16(p)
// Each op is a single f32 operation rounded to nearest even (__f*_rn: never contracted into an FMA,
// independent of -ftz/-prec flags), the scalars come from the host already rounded to f32.
// Memory bound: 16 B read + 12 B written per element (+2 B bf16); 4 elements per thread with 16-byte
// accesses when every pointer is 16-byte aligned (w: 8-byte accesses), a scalar path otherwise.
#include "common.cuh"

namespace {

struct AdamWScalars {
  float gs, decay, omb1, beta2, omb2, step_size, bc2_sqrt, eps;
};

struct AdamWMap {
  float* p;
  const float* g;
  float* m;
  float* v;
  uint16_t* w;  // nullptr: no bf16 copy
  AdamWScalars s;

  __device__ __forceinline__ void update(float& pi, float gi, float& mi, float& vi) const {
    gi = __fmul_rn(gi, s.gs);
    pi = __fmul_rn(pi, s.decay);
    mi = __fadd_rn(mi, __fmul_rn(s.omb1, __fsub_rn(gi, mi)));
    vi = __fadd_rn(__fmul_rn(s.beta2, vi), __fmul_rn(__fmul_rn(s.omb2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    pi = __fsub_rn(pi, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  }

  __device__ void vec(int64_t i) const {
    ls::Pack<float, 4> pp = ls::load_pack<float, 4>(p + i);
    const ls::Pack<float, 4> gp = ls::load_pack<float, 4>(g + i);
    ls::Pack<float, 4> mp = ls::load_pack<float, 4>(m + i);
    ls::Pack<float, 4> vp = ls::load_pack<float, 4>(v + i);
#pragma unroll
    for (int j = 0; j < 4; ++j) update(pp.v[j], gp.v[j], mp.v[j], vp.v[j]);
    ls::store_pack<float, 4>(p + i, pp);
    ls::store_pack<float, 4>(m + i, mp);
    ls::store_pack<float, 4>(v + i, vp);
    if (w) {
      ls::Pack<uint16_t, 4> wp;
#pragma unroll
      for (int j = 0; j < 4; ++j) wp.v[j] = ls::f32_to_bf16(pp.v[j]);
      ls::store_pack<uint16_t, 4>(w + i, wp);
    }
  }

  __device__ void one(int64_t i) const {
    float pi = p[i], mi = m[i], vi = v[i];
    update(pi, g[i], mi, vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (w) w[i] = ls::f32_to_bf16(pi);
  }
};

inline bool aligned8(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 7u) == 0; }

}  // namespace

// p[n], g[n], m[n], v[n] f32 -> p, m, v updated in place; w[n] bf16 = rne(p) unless w is null.
LS_API int ls_adamw_f32(float* p, const float* g, float* m, float* v, uint16_t* w, int64_t n, float grad_scale, float decay,
                        float one_minus_beta1, float beta2, float one_minus_beta2, float step_size, float bc2_sqrt, float eps,
                        cudaStream_t s) {
  const AdamWMap f{p, g, m, v, w, {grad_scale, decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps}};
  const bool vectorizable = ls::aligned16(p) && ls::aligned16(g) && ls::aligned16(m) && ls::aligned16(v) && (w == nullptr || aligned8(w));
  return ls::launch_map<4>(f, n, vectorizable, s);
}
