#!/usr/bin/env bash
# The Llama ops on one GPU: build the kernels, run the ops' GPU tests (every CUDA op against its CPU
# reference; LIGHTSEQ_REQUIRE_GPU=1 so nothing passes by skipping) and the tensor/cuBLASLt tests that
# cover the bf16 -> f32 matmul, then the ops benchmark (GB/s against the copy bandwidth, LM head + CE
# against its GEMMs), with the cross-entropy kernel lab before it. Results under $OUT; the table is printed last.
# Usage (repository root): source .device/setup.sh && bash scripts/gpu/llama-ops.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ! bun kernels/build.ts > "$OUT/build.log" 2>&1; then echo "kernel build failed:"; tail -30 "$OUT/build.log"; exit 1; fi
tail -1 "$OUT/build.log"
timeout 180 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/llama/src/ops > "$OUT/test.log" 2>&1
tests=$?
timeout 60 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/tensor/src/cuda.test.ts -t "matmul" > "$OUT/test-matmul.log" 2>&1
matmul=$?
echo "llama ops tests (exit $tests):"
grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error|outside|differs' "$OUT/test.log" | head -40
echo "tensor matmul tests incl. bf16 -> f32 (exit $matmul):"
grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error|outside' "$OUT/test-matmul.log" | head -20
timeout 90 bash kernels/dev/cross_entropy/run.sh --reps 20 > "$OUT/ce-lab.log" 2>&1
lab=$?
echo "cross-entropy row kernel lab (exit $lab):"
grep -v "^$" "$OUT/ce-lab.log" | tail -40
timeout 150 bun packages/llama/bench/ops-bench.ts "$OUT/llama-ops-bench.json" > "$OUT/bench.log" 2>&1
bench=$?
echo "bench (exit $bench):"
tail -25 "$OUT/bench.log"
exit $(( tests != 0 || matmul != 0 || lab != 0 || bench != 0 ))
