#!/usr/bin/env bash
# AdamW on one GPU: our kernel and ShardedAdamWCuda bit for bit against the TS reference (the optimizer
# tests), then both against PyTorch's torch.optim.AdamW (CPU single-tensor, CUDA foreach, CUDA fused)
# on 1M elements x 10 steps; last, what streaming the state from pinned host memory costs per 7B layer
# (StreamedAdamW beside ShardedAdamWCuda, bench/streamed-adamw.ts).
# Expect: the tests pass (none skipped); "our kernel vs our TS reference" 100% bit-equal; torch within a
# few ulps (its CPU/CUDA kernels may fuse multiply-adds, ours round every op); streaming near
# PCIe speed (an H200 host link moves ~50 GB/s each way: ~50 ms per 202M-parameter layer).
# Usage (repository root, Bun and node_modules ready): source .device/setup.sh && bash scripts/gpu/adamw.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/adamw"
bun kernels/build.ts 2>&1 | tail -2
LIGHTSEQ_REQUIRE_GPU=1 bun test apps/trainer/src/optim/ 2>&1 | tee "$OUT/adamw-test.log" | grep -E '^\((pass|fail|skip)\)|^ *[0-9]+ (pass|fail|skip)|error:'
bun bench/adamw-inputs.ts "$OUT/adamw" 2>&1 | tail -2
python3 bench/adamw_torch.py "$OUT/adamw" 2>&1 | tee "$OUT/adamw-torch.log"
rm -f "$OUT"/adamw/*.f32
bun bench/streamed-adamw.ts "$OUT/streamed-adamw.json" --layers 4 2>&1 | tee "$OUT/streamed-adamw.log"
