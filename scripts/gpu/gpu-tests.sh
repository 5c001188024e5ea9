#!/usr/bin/env bash
# The GPU tests of what changed in the second session of 2026-12-01: the trainer on one GPU (device vs
# host state, after the backward and per layer through zero.ts's gradient ring: equal losses), the
# tiny bf16 model with per-layer mixed checkpoint policies, in place and spilled, against `none`, the
# model's GPU suite, and --profile's timing events (profile.gpu.test.ts); then cuDNN's deterministic
# backward and the backend selection. Writes $OUT/gpu-tests.log and cudnn-tests.log; pass/fail lines last.
# Usage (device tool, repository root): source .device/setup.sh && bash scripts/gpu/gpu-tests.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
bun kernels/build.ts 2>&1 | tail -1
timeout 280 env LIGHTSEQ_REQUIRE_GPU=1 bun test tests/trainer.gpu.test.ts apps/trainer/src/train/state.test.ts apps/trainer/src/profile.gpu.test.ts packages/llama/src/offload-model.gpu.test.ts \
  packages/llama/src/model.gpu.test.ts packages/checkpointing >"$OUT/gpu-tests.log" 2>&1
echo "exit $?"
grep -E '^\(fail\)|^\(pass\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/gpu-tests.log" | tail -30
# cuDNN: the deterministic SDPA backward (three backwards equal to the bit; the plans' engines, notes and
# workspaces are printed as "cudnn plan ..." lines) and the backend selection
timeout 150 env LIGHTSEQ_REQUIRE_GPU=1 LIGHTSEQ_REQUIRE_CUDNN=1 bun test packages/attention/src/cudnn.test.ts \
  packages/attention/src/select.test.ts >"$OUT/cudnn-tests.log" 2>&1
echo "cudnn tests: exit $?"
grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error|cudnn plan' "$OUT/cudnn-tests.log" | tail -30
