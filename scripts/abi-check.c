/* Prints the cuBLASLt / CUDA enum values and struct sizes that packages/cuda declares by hand, so a
   GPU-machine run can compare them with the headers (scripts/device-foundation.sh). */
#include <stdio.h>
#include <stddef.h>
#include <cublasLt.h>
#include <cuda_runtime_api.h>
int main(void) {
  printf("CUDA_R_32F=%d CUDA_R_16BF=%d CUBLAS_COMPUTE_32F=%d CUBLAS_COMPUTE_32F_FAST_TF32=%d\n", CUDA_R_32F, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32);
  printf("DESC_TRANSA=%d DESC_TRANSB=%d LAYOUT_BATCH_COUNT=%d LAYOUT_STRIDED_BATCH_OFFSET=%d PREF_MAX_WORKSPACE_BYTES=%d\n",
         CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES);
  printf("sizeof(cublasLtMatmulHeuristicResult_t)=%zu offsetof(workspaceSize)=%zu\n", sizeof(cublasLtMatmulHeuristicResult_t), offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize));
  printf("CUBLAS_OP_T=%d cudaMemPoolAttrReleaseThreshold=%d\n", CUBLAS_OP_T, cudaMemPoolAttrReleaseThreshold);
  return 0;
}
