// ABI version, the empty launch (launch-overhead benchmark), and fills by bit pattern.
#include "common.cuh"

namespace {

__global__ void noop_kernel() {}

template <typename T>
struct Constant {
  T bits;
  __device__ T operator()(int64_t) const { return bits; }
};

}  // namespace

// Bumped whenever a signature or a documented result changes.
LS_API int ls_abi_version(void) { return 1; }

// <<<1, 1>>> empty kernel on s.
LS_API int ls_noop(cudaStream_t s) {
  noop_kernel<<<1, 1, 0, s>>>();
  return static_cast<int>(cudaGetLastError());
}

// out[n] (f32 or i32, as raw 32-bit words): out[i] = bits.
LS_API int ls_fill_u32(uint32_t* out, uint32_t bits, int64_t n, cudaStream_t s) {
  return ls::launch_generate<4>(out, Constant<uint32_t>{bits}, n, s);
}

// out[n] (bf16 as raw 16-bit words): out[i] = bits.
LS_API int ls_fill_u16(uint16_t* out, uint16_t bits, int64_t n, cudaStream_t s) {
  return ls::launch_generate<8>(out, Constant<uint16_t>{bits}, n, s);
}
