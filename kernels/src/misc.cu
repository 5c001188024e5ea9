// ABI version, the empty launch (launch-overhead benchmark), and fills by bit pattern.
#include "common.cuh"

namespace {

__global__ void noop_kernel() {}

// One thread reading the global nanosecond timer until `ns` have passed.
__global__ void spin_kernel(uint64_t ns) {
  uint64_t start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

template <typename T>
struct Constant {
  T bits;
  __device__ T operator()(int64_t) const { return bits; }
};

}  // namespace

// Bumped whenever a signature or a documented result changes.
LS_API int ls_abi_version(void) { return 4; }

// <<<1, 1>>> empty kernel on s.
LS_API int ls_noop(cudaStream_t s) {
  noop_kernel<<<1, 1, 0, s>>>();
  return static_cast<int>(cudaGetLastError());
}

// <<<1, 1>>> kernel that keeps s busy for `ns` nanoseconds (benchmarks: hold the GPU while the host
// queues the work to be timed, so host launch latency stays out of the measurement).
LS_API int ls_spin_ns(uint64_t ns, cudaStream_t s) {
  spin_kernel<<<1, 1, 0, s>>>(ns);
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
