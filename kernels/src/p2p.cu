// Copy-engine point-to-point transfers between GPUs of one node (host code only: no kernels).
//
// @lightseq/comm's copy-engine transport (packages/comm/src/experimental/copy-engine.ts) uses these. Each rank
// owns one block of device memory, shared with the other local ranks through CUDA IPC:
//
//   [ flags: full[size] u32, freed[size] u32, padded to 256 B ][ slots from rank 0 ][ slots from rank 1 ] ...
//
// A message from rank a to rank b travels in chunks of at most slot_bytes through nslots slots of
// b's block reserved for a. Chunk k (a 64-bit count per ordered pair, the same on both sides because
// messages are matched in posting order) uses slot k % nslots:
//   sender (a), on its send stream:   wait until b's freed count (in a's flags) >= k - nslots + 1,
//                                     copy the chunk into b's slot (a peer copy: the copy engine),
//                                     write k + 1 into b's full[a] (after a memory barrier);
//   receiver (b), on its recv stream: wait until full[a] (in b's flags) >= k + 1,
//                                     copy the slot into the destination (a local copy),
//                                     write k + 1 into a's freed[b].
// The waits are cyclic 32-bit comparisons (CU_STREAM_WAIT_VALUE_GEQ), so counts may wrap. Nothing
// here runs on the SMs: the waits and writes are stream memory operations, the copies go to the
// copy engines. That is the point: NCCL's send/recv kernels take SMs from the compute they overlap.
//
// Return values follow lightseq.cuh: 0 on success, else a cudaError_t (stream memory operations
// return a CUresult, whose codes share cudaError_t's numbering for the errors they can return).
#include <cuda.h>

#include <cstring>

#include "lightseq.cuh"

namespace {

using WaitFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

WaitFn wait_fn = nullptr;
WriteFn write_fn = nullptr;

// cuStreamWaitValue32 / cuStreamWriteValue32 through the runtime's entry-point query, so the library
// needs no link against libcuda (the CI machine has none).
int load_mem_ops() {
  if (wait_fn && write_fn) return 0;
  void* w = nullptr;
  void* r = nullptr;
  cudaDriverEntryPointQueryResult q1 = cudaDriverEntryPointSymbolNotFound, q2 = cudaDriverEntryPointSymbolNotFound;
  cudaError_t e = cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &w, 12000, cudaEnableDefault, &q1);
  if (e != cudaSuccess) return static_cast<int>(e);
  e = cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &r, 12000, cudaEnableDefault, &q2);
  if (e != cudaSuccess) return static_cast<int>(e);
  if (q1 != cudaDriverEntryPointSuccess || q2 != cudaDriverEntryPointSuccess || !w || !r)
    return static_cast<int>(cudaErrorSymbolNotFound);
  wait_fn = reinterpret_cast<WaitFn>(w);
  write_fn = reinterpret_cast<WriteFn>(r);
  return 0;
}

CUdeviceptr dptr(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }

}  // namespace

LS_API int ls_p2p_init(void) { return load_mem_ops(); }

LS_API int ls_ipc_get_handle(const void* ptr, uint8_t* out64) {
  cudaIpcMemHandle_t h;
  cudaError_t e = cudaIpcGetMemHandle(&h, const_cast<void*>(ptr));
  if (e != cudaSuccess) return static_cast<int>(e);
  static_assert(sizeof(h) == 64, "cudaIpcMemHandle_t is 64 bytes");
  memcpy(out64, &h, sizeof(h));
  return 0;
}

LS_API int ls_ipc_open_handle(const uint8_t* handle64, void** out) {
  cudaIpcMemHandle_t h;
  memcpy(&h, handle64, sizeof(h));
  return static_cast<int>(cudaIpcOpenMemHandle(out, h, cudaIpcMemLazyEnablePeerAccess));
}

LS_API int ls_ipc_close_handle(void* ptr) { return static_cast<int>(cudaIpcCloseMemHandle(ptr)); }

LS_API int ls_stream_wait_u32(const uint32_t* addr, uint32_t value, cudaStream_t s) {
  if (int e = load_mem_ops()) return e;
  return static_cast<int>(wait_fn(reinterpret_cast<CUstream>(s), dptr(addr), value, CU_STREAM_WAIT_VALUE_GEQ));
}

LS_API int ls_stream_write_u32(uint32_t* addr, uint32_t value, cudaStream_t s) {
  if (int e = load_mem_ops()) return e;
  return static_cast<int>(write_fn(reinterpret_cast<CUstream>(s), dptr(addr), value, CU_STREAM_WRITE_VALUE_DEFAULT));
}

LS_API int ls_p2p_send(const void* src, int64_t bytes, void* remote_slots, int64_t slot_bytes, int32_t nslots, uint64_t first_chunk,
                       const uint32_t* local_freed, uint32_t* remote_full, cudaStream_t s) {
  if (bytes <= 0) return 0;
  if (slot_bytes <= 0 || nslots <= 0) return static_cast<int>(cudaErrorInvalidValue);
  if (int e = load_mem_ops()) return e;
  CUstream cs = reinterpret_cast<CUstream>(s);
  const char* from = static_cast<const char*>(src);
  uint64_t k = first_chunk;
  for (int64_t off = 0; off < bytes; off += slot_bytes, ++k) {
    const int64_t len = bytes - off < slot_bytes ? bytes - off : slot_bytes;
    if (k >= static_cast<uint64_t>(nslots)) {
      CUresult r = wait_fn(cs, dptr(local_freed), static_cast<cuuint32_t>(k - nslots + 1), CU_STREAM_WAIT_VALUE_GEQ);
      if (r != CUDA_SUCCESS) return static_cast<int>(r);
    }
    char* slot = static_cast<char*>(remote_slots) + static_cast<int64_t>(k % nslots) * slot_bytes;
    cudaError_t e = cudaMemcpyAsync(slot, from + off, len, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) return static_cast<int>(e);
    CUresult r = write_fn(cs, dptr(remote_full), static_cast<cuuint32_t>(k + 1), CU_STREAM_WRITE_VALUE_DEFAULT);
    if (r != CUDA_SUCCESS) return static_cast<int>(r);
  }
  return 0;
}

LS_API int ls_p2p_recv(void* dst, int64_t bytes, const void* local_slots, int64_t slot_bytes, int32_t nslots, uint64_t first_chunk,
                       const uint32_t* local_full, uint32_t* remote_freed, cudaStream_t s) {
  if (bytes <= 0) return 0;
  if (slot_bytes <= 0 || nslots <= 0) return static_cast<int>(cudaErrorInvalidValue);
  if (int e = load_mem_ops()) return e;
  CUstream cs = reinterpret_cast<CUstream>(s);
  char* to = static_cast<char*>(dst);
  uint64_t k = first_chunk;
  for (int64_t off = 0; off < bytes; off += slot_bytes, ++k) {
    const int64_t len = bytes - off < slot_bytes ? bytes - off : slot_bytes;
    CUresult r = wait_fn(cs, dptr(local_full), static_cast<cuuint32_t>(k + 1), CU_STREAM_WAIT_VALUE_GEQ);
    if (r != CUDA_SUCCESS) return static_cast<int>(r);
    const char* slot = static_cast<const char*>(local_slots) + static_cast<int64_t>(k % nslots) * slot_bytes;
    cudaError_t e = cudaMemcpyAsync(to + off, slot, len, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) return static_cast<int>(e);
    r = write_fn(cs, dptr(remote_freed), static_cast<cuuint32_t>(k + 1), CU_STREAM_WRITE_VALUE_DEFAULT);
    if (r != CUDA_SUCCESS) return static_cast<int>(r);
  }
  return 0;
}
