#!/usr/bin/env bash
# One-GPU device run for the attention kernels (issue 4): the lab (validation grid of both kernel sets,
# merge, determinism, timings), the GPU test suites (wgmma kernels by default on sm_90, then the
# mma.sync ones), then our kernels and the cuDNN backend against PyTorch SDPA on the same card.
# Usage (device tool, carry [".device"]): source .device/setup.sh && bash scripts/device-attn.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
bun run build:kernels 2>&1 | tail -1
timeout 240 bash kernels/dev/attention/run.sh --reps 5 > "$OUT/lab.log" 2>&1
lab=$?
grep -E 'PASS|FAIL|determinism|^(8192|16384|32768) |^fwd<|shipped|Used' "$OUT/lab.log" | grep -v '^ *ok' | tail -40
if [ "$lab" -ne 0 ]; then echo "lab failed ($lab): stopping"; tail -20 "$OUT/lab.log"; exit 1; fi
timeout 240 env LIGHTSEQ_REQUIRE_GPU=1 bun test packages/attention packages/cuda packages/tensor > "$OUT/test.log" 2>&1
echo "tests (default kernels):"; grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/test.log" | head -20
timeout 120 env LIGHTSEQ_ATTN_KERNEL=mma LIGHTSEQ_REQUIRE_GPU=1 bun test packages/attention/src/cuda.test.ts > "$OUT/test-mma.log" 2>&1
echo "tests (LIGHTSEQ_ATTN_KERNEL=mma):"; grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)$|^error' "$OUT/test-mma.log" | head -20
timeout 150 bun packages/attention/bench/attn-bench.ts "$OUT/attn.json" --backends cuda,cudnn --reps 5 2>&1 | tee "$OUT/attn.log" | tail -16
timeout 150 python3 packages/attention/bench/torch_sdpa_bench.py "$OUT/sdpa.json" 2>&1 | tee "$OUT/sdpa.log" | tail -16
