#!/usr/bin/env bash
# Checkpointing on one GPU (issue 12): the offloading store's GPU tests (bytes back bit for bit through
# pinned memory and the copy stream; the tiny bf16 model with offload equal to it without), then
# checkpointing-bench.ts: a Llama-2-7B-shaped model cut to 4 layers at 32K, 64K and 128K tokens, every
# policy (none only where it fits) x offload none / host / spill: measured peak beside estimateMemory's,
# step times (3 timed, the variants of a length interleaved), full - remat-aware against 4 x one attention
# forward, offload against the same policy on the GPU. The whole matrix needs ~250 s of bench on an H200
# (128K alone ~150 s), ~4.8 min with the tests; the bench starts no group that would end past
# CKPT_BUDGET_S (default 250) so the table always comes out. Table last; JSON and logs in $OUT.
# Usage (repository root): source .device/setup.sh && bash scripts/gpu/checkpointing.sh
#   CKPT_BUDGET_S=190 CKPT_TOKENS=131072 bash scripts/gpu/checkpointing.sh   # the 128K rows alone
#   CKPT_STEPS=7 timed steps per variant (default 3)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
bun kernels/build.ts 2>&1 | tail -1
timeout 60 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/checkpointing/src/offload.gpu.test.ts packages/llama/src/offload-model.gpu.test.ts \
  > "$OUT/checkpointing-test.log" 2>&1
echo "offload GPU tests:"; grep -E '^\(fail\)|^\(pass\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/checkpointing-test.log" | head -20
timeout $((${CKPT_BUDGET_S:-250} + 40)) bun packages/llama/bench/checkpointing-bench.ts "$OUT/checkpointing.json" \
  --budget-s "${CKPT_BUDGET_S:-250}" --tokens "${CKPT_TOKENS:-32768,65536,131072}" --steps "${CKPT_STEPS:-3}" 2>&1 \
  | tee "$OUT/checkpointing.log" | tail -40
